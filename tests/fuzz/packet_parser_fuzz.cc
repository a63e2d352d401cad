// libFuzzer target: the parsing of untrusted bytes on both ends (channel
// hello and its negotiation, the hello acknowledgement as the source reads
// it, packet header, offsets, ABORT's reason, tunnel header). Anything may be rejected with
// ktm::Error; nothing may crash, and whatever is accepted must satisfy the
// invariants the code after it relies on.
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "transport/protocol.h"

namespace {

using namespace ktm::wire;

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

// The destination: decode a hello, negotiate with this build's offer (or
// one shaped by the input), answer it.
void FuzzHello(const uint8_t* data, size_t size) {
  if (size < kHelloSize + 8) return;
  Hello h = DecodeHello(data);
  Check(h.channel_id < h.channel_count && h.page_size >= kMinPageSize && !(h.page_size & (h.page_size - 1)));
  Check(h.min_version >= 1 && h.min_version <= h.max_version && !(h.required & ~h.offered));
  uint32_t withheld, required;
  std::memcpy(&withheld, data + kHelloSize, 4);
  std::memcpy(&required, data + kHelloSize + 4, 4);
  const Offer dst = LocalOffer(withheld, required);
  const Agreement a = Negotiate(dst, Side::kDestination, h.offer());
  if (a.status == kOk) {
    Check(a.version >= h.min_version && a.version <= h.max_version);
    Check(a.version >= dst.min_version && a.version <= dst.max_version);
    Check(!(a.caps & ~(h.offered & dst.offered)) && !(h.required & ~a.caps) && !(dst.required & ~a.caps));
  } else {
    Check(!a.why.empty());
  }
  uint8_t ack[kHelloAckSize];
  const size_t n = EncodeHelloAnswer(h, dst, a.status, ack);
  // What the destination sends, the source can read, and agrees with.
  const Agreement s = SourceVerdict(h.offer(), ack, n);
  Check(s.status == a.status);
  if (a.status == kOk) Check(s.version == a.version && s.caps == a.caps);
}

// The source: read a (possibly forged) acknowledgement.
void FuzzAck(const uint8_t* data, size_t size) {
  if (size < kAckSize + 8) return;
  uint32_t withheld, required;
  std::memcpy(&withheld, data, 4);
  std::memcpy(&required, data + 4, 4);
  data += 8, size -= 8;
  const Offer src = LocalOffer(withheld, required);
  const size_t rest = HelloAckRest(data);
  if (size < kAckSize + rest) return;
  const Agreement v = SourceVerdict(src, data, kAckSize + rest);
  if (v.status == kOk) {
    Check(rest != 0);
    Check(v.version >= src.min_version && v.version <= src.max_version);
    Check(!(src.required & ~v.caps) && !(v.caps & ~src.offered));
  } else {
    Check(!v.why.empty());
  }
}

void FuzzPacket(const uint8_t* data, size_t size) {
  if (size < kHeaderSize) return;
  const Geometry g{(1u << 20) + 123, 4096};
  PacketHeader h = DecodeHeader(data, g);
  Check(h.page_count <= kMaxPagesPerPacket);
  if (h.type == kAbort) {
    // The receiver reads payload_len bytes into a kMaxAbortPayload buffer.
    Check(h.payload_len >= 8 && h.payload_len <= kMaxAbortPayload);
    if (size - kHeaderSize < h.payload_len) return;
    const AbortNote a = DecodeAbortPayload(data + kHeaderSize, h.payload_len);
    Check(a.kind >= kAbortUsage && a.kind <= kAbortSecurity && a.reason.size() == h.payload_len - 8);
    for (char c : a.reason) Check(c >= 0x20 && c < 0x7f);
    return;
  }
  if (h.type != kPages && h.type != kZero) return;
  const size_t need = size_t{h.page_count} * 8;
  if (size - kHeaderSize < need) return;
  std::vector<uint64_t> offsets(h.page_count);
  std::memcpy(offsets.data(), data + kHeaderSize, need);
  ValidateOffsets(data, h, offsets.data(), g);
  for (uint64_t off : offsets) {
    // The receiver writes page_size bytes at each offset of the mapping.
    Check(off % g.page_size == 0 && off + g.page_size <= g.padded_size());
  }
}

void FuzzTunnel(const uint8_t* data, size_t size) {
  if (size < kTunnelHeaderSize) return;
  const TunnelHeader h = DecodeTunnelHeader(data);
  uint8_t again[kTunnelHeaderSize];
  EncodeTunnelHeader(h, again);
  Check(std::memcmp(again, data, kTunnelHeaderSize) == 0);  // every field decoded, nothing ignored
  Check(h.first_open <= h.seq);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  ++data, --size;
  try {
    switch (mode % 4) {
      case 0: FuzzPacket(data, size); break;
      case 1: FuzzHello(data, size); break;
      case 2: FuzzAck(data, size); break;
      case 3: FuzzTunnel(data, size); break;
    }
  } catch (const ktm::Error&) {
  }
  return 0;
}

// Writes valid inputs for packet_parser_fuzz (one file each) into the
// directory argv[1]: without them the fuzzer rarely gets past the CRCs.
// The first byte of each selects the fuzz target's mode.
#include <cstdio>
#include <string>
#include <vector>

#include "transport/protocol.h"

using namespace ktm::wire;

namespace {

void Write(const std::string& dir, const std::string& name, uint8_t mode, const uint8_t* p, size_t n,
           size_t prefix = 0) {
  std::vector<uint8_t> b(1 + prefix, 0);
  b[0] = mode;
  b.insert(b.end(), p, p + n);
  b.resize(b.size() + (mode == 1 ? 8 : 0), 0);  // the hello's destination offer
  FILE* f = std::fopen((dir + "/seed-" + name).c_str(), "wb");
  if (!f) return;
  std::fwrite(b.data(), 1, b.size(), f);
  std::fclose(f);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  Hello h;
  h.channel_count = 2;
  h.image_size = 1 << 20;
  h.page_size = 4096;
  uint8_t hello[kHelloSize];
  EncodeHello(h, hello);
  Write(dir, "hello", 1, hello, sizeof(hello));
  h.min_version = 2;
  h.max_version = 0;
  h.offered = 0;
  EncodeHello(h, hello);
  Write(dir, "hello-v2", 1, hello, sizeof(hello));
  for (uint32_t st : {uint32_t{kOk}, uint32_t{kRejectedCapability}}) {
    HelloAck a;
    a.status = st;
    a.version = st == kOk ? 3 : 0;
    a.destination = LocalOffer(0, 0);
    a.agreed = st == kOk ? kKnownCaps : 0;
    uint8_t ack[kHelloAckSize];
    EncodeHelloAck(a, ack);
    Write(dir, "ack-" + std::to_string(st), 2, ack, sizeof(ack), 8);
  }
  uint8_t plain[kAckSize];
  EncodeU32Pair(kAckMagic, kRejectedVersion, plain);
  Write(dir, "ack-plain", 2, plain, sizeof(plain), 8);
  TunnelHeader t;
  t.seq = 7;
  uint8_t tun[kTunnelHeaderSize];
  EncodeTunnelHeader(t, tun);
  Write(dir, "tunnel", 3, tun, sizeof(tun));
  PacketHeader p;
  p.type = kZero;
  p.page_size = 4096;
  p.page_count = 2;
  const uint64_t offsets[2] = {0, 8192};
  uint8_t pkt[kHeaderSize + 16];
  EncodeHeader(p, offsets, pkt);
  Write(dir, "zero", 0, pkt, sizeof(pkt));
  AbortNote note;
  note.kind = kAbortLocalIo;
  note.reason = "input changed during the migration";
  uint8_t abort_pkt[kHeaderSize + kMaxAbortPayload];
  PacketHeader ap;
  ap.type = kAbort;
  ap.page_size = 4096;
  ap.payload_len = static_cast<uint32_t>(EncodeAbortPayload(note, abort_pkt + kHeaderSize));
  EncodeHeader(ap, nullptr, abort_pkt);
  Write(dir, "abort", 0, abort_pkt, kHeaderSize + ap.payload_len);
  return 0;
}

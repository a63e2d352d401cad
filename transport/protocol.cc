#include "transport/protocol.h"

#include <sys/random.h>

#include <algorithm>
#include <cstring>
#include <optional>

#include "base/error.h"
#include "base/le.h"

namespace ktm::wire {
namespace {

struct Crc32cTable {
  uint32_t t[256];
  constexpr Crc32cTable() : t() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
      t[i] = c;
    }
  }
};
constexpr Crc32cTable kCrc;

[[noreturn]] void Bad(const std::string& what) { throw Error(ErrorKind::kIntegrity, EBADMSG, "invalid packet: " + what); }

}  // namespace

const char* StatusText(uint32_t s) {
  switch (s) {
    case kOk: return "ok";
    case kRejectedVersion: return "protocol version not supported by the destination";
    case kRejectedSession: return "channel belongs to another migration (session UUID mismatch)";
    case kRejectedChannel: return "bad or duplicate channel id, or channel count mismatch";
    case kRejectedGeometry: return "image or page size mismatch";
    case kDigestMismatch: return "destination image digest does not match the source";
    case kFailed: return "destination failed";
    case kNoSpace: return "the image does not fit at the destination (its size limit or free space)";
    case kInvalidHello: return "the destination could not parse our channel hello (corrupted in transit?)";
    case kCommitFailed: return "the destination could not write the image to disk";
    case kRefusedData: return "the destination refused our data as invalid or forged (see its log)";
    case kTimedOut: return "a channel made no progress at the destination within its io timeout";
    case kBusy: return "the destination is busy with another migration; start this one when that has ended";
    case kRejectedCapability: return "the destination and this source lack a capability one of them requires";
  }
  return "unknown status";
}

uint32_t Crc32c(uint32_t crc, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < len; ++i) crc = kCrc.t[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

// ---- capabilities and negotiation ----

namespace {

struct CapabilityEntry {
  uint32_t bit;
  const char* name;
};
// The name table: one line per capability, in bit order.
constexpr CapabilityEntry kCapabilityNames[] = {
    {kCapDigestXxh3, "digest-xxh3"},
    {kCapDigestSha256, "digest-sha256"},
    {kCapZeroPages, "zero-pages"},
    {kCapAbortReason, "abort-reason"},
    {kCapRekey, "rekey"},
};

std::string RangeText(const Offer& o) { return std::to_string(o.min_version) + ".." + std::to_string(o.max_version); }

const char* SideName(Side s) { return s == Side::kSource ? "source" : "destination"; }

// "this source" or "the source", as seen from `local`.
std::string Who(Side s, Side local) { return std::string(s == local ? "this " : "the ") + SideName(s); }

// Refusal when `needer` requires a capability `lacker` does not offer.
std::optional<Agreement> MissingCapability(const Offer& needer, Side needer_side, const Offer& lacker, Side local) {
  const uint32_t missing = needer.required & ~lacker.offered;
  if (missing == 0) return std::nullopt;
  const uint32_t bit = missing & (~missing + 1);  // the lowest one: a stable choice
  const Side lacker_side = needer_side == Side::kSource ? Side::kDestination : Side::kSource;
  Agreement a;
  a.status = kRejectedCapability;
  a.why = Who(needer_side, local) + " requires capability '" + CapabilityName(bit) + "' which " +
          Who(lacker_side, local) + " (protocol " + RangeText(lacker) + ") does not offer";
  return a;
}

}  // namespace

std::string CapabilityName(uint32_t bit) {
  for (const auto& e : kCapabilityNames) {
    if (e.bit == bit) return e.name;
  }
  for (int i = 0; i < 32; ++i) {
    if (bit == (1u << i)) return "capability bit " + std::to_string(i);
  }
  return "capability set " + std::to_string(bit);
}

std::string CapabilityNames(uint32_t caps) {
  if (caps == 0) return "none";
  std::string s;
  for (int i = 0; i < 32; ++i) {
    if (!(caps & (1u << i))) continue;
    if (!s.empty()) s += ", ";
    s += CapabilityName(1u << i);
  }
  return s;
}

uint32_t DigestCapability(uint16_t digest) {
  if (digest == 1) return kCapDigestXxh3;
  if (digest == 2) return kCapDigestSha256;
  return 0;
}

Offer LocalOffer(uint32_t withheld, uint32_t required) {
  Offer o;
  o.offered = (kKnownCaps & ~withheld) | required;
  o.required = required;
  return o;
}

Agreement Negotiate(const Offer& local, Side local_side, const Offer& peer) {
  const Offer& src = local_side == Side::kSource ? local : peer;
  const Offer& dst = local_side == Side::kSource ? peer : local;
  const uint16_t hi = std::min(src.max_version, dst.max_version);
  const uint16_t lo = std::max(src.min_version, dst.min_version);
  if (lo > hi) {
    Agreement a;
    a.status = kRejectedVersion;
    a.why = Who(Side::kSource, local_side) + " speaks protocol " + RangeText(src) + " and " +
            Who(Side::kDestination, local_side) + " " + RangeText(dst) + ": no version in common";
    return a;
  }
  // The source's requirements first, whichever side computes this, so both
  // ends name the same capability.
  if (auto a = MissingCapability(src, Side::kSource, dst, local_side)) return *a;
  if (auto a = MissingCapability(dst, Side::kDestination, src, local_side)) return *a;
  Agreement a;
  a.version = hi;
  a.caps = src.offered & dst.offered;
  return a;
}

// ---- hello ----

void EncodeHello(const Hello& h, uint8_t out[kHelloSize]) {
  std::memset(out, 0, kHelloSize);
  PutLe64(out, kHelloMagic);
  PutLe16(out + 8, h.min_version);
  PutLe16(out + 10, h.channel_id);
  PutLe16(out + 12, h.channel_count);
  PutLe16(out + 14, h.digest);
  std::memcpy(out + 16, h.session.data(), 16);
  PutLe64(out + 32, h.image_size);
  PutLe32(out + 40, h.page_size);
  PutLe16(out + 44, h.max_version);
  PutLe32(out + 48, h.offered);
  PutLe32(out + 52, h.required);
  PutLe32(out + 56, Crc32c(0, out, 56));
}

Hello DecodeHello(const uint8_t in[kHelloSize]) {
  if (GetLe64(in) != kHelloMagic) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "not a tls-migrate channel hello (bad magic): is the peer a tls-migrate source?");
  }
  if (GetLe32(in + 56) != Crc32c(0, in, 56)) throw Error(ErrorKind::kIntegrity, EBADMSG, "channel hello checksum mismatch");
  Hello h;
  h.min_version = GetLe16(in + 8);
  h.channel_id = GetLe16(in + 10);
  h.channel_count = GetLe16(in + 12);
  h.digest = GetLe16(in + 14);
  std::memcpy(h.session.data(), in + 16, 16);
  h.image_size = GetLe64(in + 32);
  h.page_size = GetLe32(in + 40);
  h.max_version = GetLe16(in + 44);
  h.offered = GetLe32(in + 48);
  h.required = GetLe32(in + 52);
  // Before version 3 a hello named one version and had zeros here.
  if (h.max_version == 0 && h.min_version <= 2) h.max_version = h.min_version;
  if (h.min_version == 0 || h.min_version > h.max_version) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "channel hello has protocol range " + std::to_string(h.min_version) +
                                                    ".." + std::to_string(h.max_version));
  }
  if (h.required & ~h.offered) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "channel hello requires capabilities it does not offer (" +
                                                    CapabilityNames(h.required & ~h.offered) + ")");
  }
  if (h.digest != 1 && h.digest != 2) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "channel hello names unknown digest algorithm " + std::to_string(h.digest));
  }
  if (h.channel_count == 0 || h.channel_count > kMaxChannels || h.channel_id >= h.channel_count) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "channel hello has channel " + std::to_string(h.channel_id) + " of " +
                             std::to_string(h.channel_count));
  }
  if (h.page_size < kMinPageSize || h.page_size > kMaxPageSize || (h.page_size & (h.page_size - 1))) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "channel hello has page size " + std::to_string(h.page_size));
  }
  if (h.image_size == 0 || h.image_size > (1ull << 46)) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "channel hello has image size " + std::to_string(h.image_size));
  }
  return h;
}

void EncodeHeader(const PacketHeader& h, const uint64_t* offsets, uint8_t* out) {
  PutLe32(out, kPacketMagic);
  PutLe16(out + 4, h.version);
  PutLe16(out + 6, h.type);
  PutLe64(out + 8, h.packet_num);
  PutLe32(out + 16, h.iteration);
  PutLe32(out + 20, h.page_size);
  PutLe32(out + 24, h.page_count);
  PutLe32(out + 28, h.flags);
  PutLe32(out + 32, h.payload_len);
  PutLe32(out + 36, 0);
  uint8_t* wire_offsets = out + kHeaderSize;
  for (uint32_t i = 0; i < h.page_count; ++i) PutLe64(wire_offsets + 8 * size_t{i}, offsets[i]);
  uint32_t crc = Crc32c(0, out, kHeaderSize);
  crc = Crc32c(crc, wire_offsets, sizeof(uint64_t) * h.page_count);
  PutLe32(out + 36, crc);
}

PacketHeader DecodeHeader(const uint8_t in[kHeaderSize], const Geometry& g) {
  if (GetLe32(in) != kPacketMagic) Bad("bad magic (stream out of step, or not a tls-migrate source)");
  PacketHeader h;
  h.version = GetLe16(in + 4);
  h.type = GetLe16(in + 6);
  h.packet_num = GetLe64(in + 8);
  h.iteration = GetLe32(in + 16);
  h.page_size = GetLe32(in + 20);
  h.page_count = GetLe32(in + 24);
  h.flags = GetLe32(in + 28);
  h.payload_len = GetLe32(in + 32);
  if (h.version != kVersion) Bad("version " + std::to_string(h.version));
  switch (h.type) {
    case kPages:
    case kZero:
      if (h.page_size != g.page_size) {
        Bad("page size " + std::to_string(h.page_size) + ", negotiated " + std::to_string(g.page_size));
      }
      if (h.page_count == 0 || h.page_count > kMaxPagesPerPacket) {
        Bad("page count " + std::to_string(h.page_count) + " (allowed 1.." +
            std::to_string(kMaxPagesPerPacket) + ")");
      }
      if (h.payload_len != 0 || h.flags != 0) Bad("unexpected payload/flags on a page packet");
      break;
    case kSync:
      if (h.page_count != 0 || h.payload_len != 0 || (h.flags & ~kFlagFinal)) Bad("malformed SYNC");
      break;
    case kEnd:
      if (h.page_count != 0 || h.payload_len != kDigestSize || h.flags != 0) Bad("malformed END");
      break;
    case kAbort:
      if (h.page_count != 0 || h.payload_len < 8 || h.payload_len > kMaxAbortPayload || h.flags != 0) {
        Bad("malformed ABORT");
      }
      break;
    default:
      Bad("unknown type " + std::to_string(h.type));
  }
  return h;
}

void ValidateOffsets(const uint8_t header[kHeaderSize], const PacketHeader& h, uint64_t* offsets,
                     const Geometry& g) {
  uint8_t copy[kHeaderSize];
  std::memcpy(copy, header, kHeaderSize);
  PutLe32(copy + 36, 0);
  auto* wire_offsets = reinterpret_cast<uint8_t*>(offsets);
  uint32_t crc = Crc32c(0, copy, kHeaderSize);
  crc = Crc32c(crc, wire_offsets, sizeof(uint64_t) * h.page_count);
  if (crc != GetLe32(header + 36)) Bad("header checksum mismatch (corrupted or forged)");
  // In place: each 8 wire bytes become the host's u64 (a no-op on
  // little-endian hosts, which the compiler sees).
  for (uint32_t i = 0; i < h.page_count; ++i) offsets[i] = GetLe64(wire_offsets + 8 * size_t{i});
  const uint64_t limit = g.padded_size();
  for (uint32_t i = 0; i < h.page_count; ++i) {
    const uint64_t off = offsets[i];
    if (off >= limit || limit - off < g.page_size) {
      Bad("page offset " + std::to_string(off) + " beyond the image (" + std::to_string(g.image_size) +
          " bytes)");
    }
    if (off % g.page_size != 0) Bad("page offset " + std::to_string(off) + " not page aligned");
    if (i > 0 && off <= offsets[i - 1]) Bad("page offsets not strictly increasing");
  }
}

void EncodeU32Pair(uint32_t magic, uint32_t status, uint8_t out[kAckSize]) {
  PutLe32(out, magic);
  PutLe32(out + 4, status);
}

uint32_t DecodeU32Pair(uint32_t magic, const uint8_t in[kAckSize], const char* what) {
  if (GetLe32(in) != magic) throw Error(ErrorKind::kIntegrity, EBADMSG, std::string("bad ") + what + " from the peer");
  return GetLe32(in + 4);
}

// ---- hello acknowledgement ----

void EncodeHelloAck(const HelloAck& a, uint8_t out[kHelloAckSize]) {
  std::memset(out, 0, kHelloAckSize);
  PutLe32(out, kHelloAckMagic);
  PutLe32(out + 4, a.status);
  PutLe16(out + 8, a.version);
  PutLe16(out + 10, a.destination.min_version);
  PutLe16(out + 12, a.destination.max_version);
  PutLe32(out + 16, a.agreed);
  PutLe32(out + 20, a.destination.offered);
  PutLe32(out + 24, a.destination.required);
  PutLe32(out + 28, Crc32c(0, out, 28));
}

HelloAck DecodeHelloAck(const uint8_t in[kHelloAckSize]) {
  auto bad = [](const std::string& what) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "invalid channel acknowledgement: " + what);
  };
  if (GetLe32(in) != kHelloAckMagic) bad("bad magic");
  if (GetLe32(in + 28) != Crc32c(0, in, 28)) bad("checksum mismatch");
  HelloAck a;
  a.status = GetLe32(in + 4);
  a.version = GetLe16(in + 8);
  a.destination.min_version = GetLe16(in + 10);
  a.destination.max_version = GetLe16(in + 12);
  a.agreed = GetLe32(in + 16);
  a.destination.offered = GetLe32(in + 20);
  a.destination.required = GetLe32(in + 24);
  const Offer& d = a.destination;
  if (d.min_version == 0 || d.min_version > d.max_version) {
    bad("destination range " + std::to_string(d.min_version) + ".." + std::to_string(d.max_version));
  }
  if (d.required & ~d.offered) bad("the destination requires capabilities it does not offer");
  if (a.agreed & ~d.offered) bad("agreed capabilities the destination does not offer");
  if (a.status == kOk && (a.version < d.min_version || a.version > d.max_version)) {
    bad("chosen version " + std::to_string(a.version) + " outside the destination's range");
  }
  return a;
}

size_t HelloAckRest(const uint8_t first[kAckSize]) {
  const uint32_t magic = GetLe32(first);
  if (magic == kHelloAckMagic) return kHelloAckSize - kAckSize;
  if (magic == kAckMagic) return 0;
  throw Error(ErrorKind::kIntegrity, EBADMSG, "bad channel acknowledgement from the peer");
}

size_t EncodeHelloAnswer(const Hello& h, const Offer& destination, uint32_t status, uint8_t out[kHelloAckSize]) {
  if (h.max_version < 3) {
    EncodeU32Pair(kAckMagic, status, out);
    return kAckSize;
  }
  HelloAck a;
  a.status = status;
  a.destination = destination;
  if (status == kOk) {
    const Agreement g = Negotiate(destination, Side::kDestination, h.offer());
    a.version = g.version;
    a.agreed = g.caps;
  }
  EncodeHelloAck(a, out);
  return kHelloAckSize;
}

Agreement SourceVerdict(const Offer& source, const uint8_t* ack, size_t len) {
  Agreement v;
  if (len == kAckSize) {  // a plain Ack: busy, unparsable hello, or a destination before version 3
    v.status = DecodeU32Pair(kAckMagic, ack, "channel acknowledgement");
    if (v.status == kOk) {
      v.status = kRejectedVersion;
      v.why = "the destination acknowledged without a version range (protocol 2..2?); this source speaks " +
              RangeText(source);
    } else if (v.status == kRejectedVersion) {
      v.why = "this source speaks protocol " + RangeText(source) +
              " and the destination an older one (2..2: its refusal carries no range): no version in common";
    } else {
      v.why = StatusText(v.status);
    }
    return v;
  }
  if (len != kHelloAckSize) throw Error(ErrorKind::kInternal, EINVAL, "SourceVerdict: bad length");
  const HelloAck a = DecodeHelloAck(ack);
  const Agreement mine = Negotiate(source, Side::kSource, a.destination);
  if (a.status != kOk) {
    v.status = a.status;
    // The destination's sentence, rebuilt here from what it sent.
    v.why = mine.status == a.status ? mine.why : StatusText(a.status);
    return v;
  }
  if (mine.status != kOk) return mine;  // the destination agreed although we cannot
  if (a.version != mine.version || a.agreed != mine.caps) {
    v.status = kRejectedCapability;
    v.why = "the destination (protocol " + RangeText(a.destination) + ") chose version " + std::to_string(a.version) +
            " with capabilities " + CapabilityNames(a.agreed) + ", not the version " + std::to_string(mine.version) +
            " with " + CapabilityNames(mine.caps) + " this source computes";
    return v;
  }
  return mine;
}

// ---- tunnel header ----

namespace {
// The header's CRC: the version and open-predecessor count (8..11) and the
// session and sequence number (16..39).
uint32_t TunnelHeaderCrc(const uint8_t* h) { return Crc32c(Crc32c(0, h + 8, 4), h + 16, 24); }
}  // namespace

void EncodeTunnelHeader(const TunnelHeader& h, uint8_t out[kTunnelHeaderSize]) {
  std::memset(out, 0, kTunnelHeaderSize);
  PutLe64(out, kTunnelMagic);
  PutLe16(out + 8, kTunnelVersion);
  const uint64_t open_before = h.first_open <= h.seq ? h.seq - h.first_open : 0;
  PutLe16(out + 10, static_cast<uint16_t>(std::min<uint64_t>(open_before, 0xffff)));
  std::memcpy(out + 16, h.session.data(), 16);
  PutLe64(out + 32, h.seq);
  PutLe32(out + 12, TunnelHeaderCrc(out));
}

TunnelHeader DecodeTunnelHeader(const uint8_t in[kTunnelHeaderSize]) {
  if (GetLe64(in) != kTunnelMagic) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "not a tls-migrate tunnel connection (bad magic)");
  }
  const uint16_t version = GetLe16(in + 8);
  if (version != kTunnelVersion) {
    throw Error(ErrorKind::kIntegrity, EPROTO,
                "tunnel protocol version " + std::to_string(version) + " not supported (this tunnel speaks " +
                    std::to_string(kTunnelVersion) + "; run the same tls-migrate version on both ends)");
  }
  if (GetLe32(in + 12) != TunnelHeaderCrc(in)) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "tunnel header checksum mismatch");
  }
  TunnelHeader h;
  std::memcpy(h.session.data(), in + 16, 16);
  h.seq = GetLe64(in + 32);
  const uint16_t open_before = GetLe16(in + 10);
  if (open_before > h.seq) {
    throw Error(ErrorKind::kIntegrity, EBADMSG,
                "tunnel header names " + std::to_string(open_before) + " open connections before connection " +
                    std::to_string(h.seq));
  }
  h.first_open = h.seq - open_before;
  return h;
}

std::string UuidString(const Uuid& u) {
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < u.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s += '-';
    s += hex[u[i] >> 4];
    s += hex[u[i] & 15];
  }
  return s;
}

Uuid RandomUuid() {
  Uuid u;
  if (getrandom(u.data(), u.size(), 0) != static_cast<ssize_t>(u.size())) ThrowErrno(ErrorKind::kInternal, errno, "getrandom");
  u[6] = (u[6] & 0x0F) | 0x40;
  u[8] = (u[8] & 0x3F) | 0x80;
  return u;
}

size_t EncodeAbortPayload(const AbortNote& a, uint8_t* out) {
  const size_t n = std::min(a.reason.size(), kMaxAbortReason);
  PutLe32(out, a.kind);
  PutLe32(out + 4, static_cast<uint32_t>(n));
  std::memcpy(out + 8, a.reason.data(), n);
  return 8 + n;
}

AbortNote DecodeAbortPayload(const uint8_t* in, size_t len) {
  if (len < 8 || len > kMaxAbortPayload) throw Error(ErrorKind::kIntegrity, EBADMSG, "ABORT payload of " + std::to_string(len) + " bytes");
  AbortNote a;
  a.kind = GetLe32(in);
  const uint32_t n = GetLe32(in + 4);
  if (n != len - 8) throw Error(ErrorKind::kIntegrity, EBADMSG, "ABORT reason length disagrees with its packet");
  if (a.kind < kAbortUsage || a.kind > kAbortSecurity) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "ABORT of unknown kind " + std::to_string(a.kind));
  }
  a.reason.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    const char c = static_cast<char>(in[8 + i]);
    a.reason.push_back(c >= 0x20 && c < 0x7f ? c : '?');  // never a terminal escape from the wire
  }
  return a;
}

}  // namespace ktm::wire

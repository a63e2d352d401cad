#include "transport/protocol.h"

#include <sys/random.h>

#include <cstring>

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
  }
  return "unknown status";
}

uint32_t Crc32c(uint32_t crc, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < len; ++i) crc = kCrc.t[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

void EncodeHello(const Hello& h, uint8_t out[kHelloSize]) {
  std::memset(out, 0, kHelloSize);
  PutLe64(out, kHelloMagic);
  PutLe16(out + 8, h.version);
  PutLe16(out + 10, h.channel_id);
  PutLe16(out + 12, h.channel_count);
  PutLe16(out + 14, h.digest);
  std::memcpy(out + 16, h.session.data(), 16);
  PutLe64(out + 32, h.image_size);
  PutLe32(out + 40, h.page_size);
  PutLe32(out + 56, Crc32c(0, out, 56));
}

Hello DecodeHello(const uint8_t in[kHelloSize]) {
  if (GetLe64(in) != kHelloMagic) {
    throw Error(ErrorKind::kIntegrity, EBADMSG, "not a tls-migrate channel hello (bad magic): is the peer a tls-migrate source?");
  }
  if (GetLe32(in + 56) != Crc32c(0, in, 56)) throw Error(ErrorKind::kIntegrity, EBADMSG, "channel hello checksum mismatch");
  Hello h;
  h.version = GetLe16(in + 8);
  h.channel_id = GetLe16(in + 10);
  h.channel_count = GetLe16(in + 12);
  h.digest = GetLe16(in + 14);
  std::memcpy(h.session.data(), in + 16, 16);
  h.image_size = GetLe64(in + 32);
  h.page_size = GetLe32(in + 40);
  if (h.version != kVersion) {
    throw Error(ErrorKind::kIntegrity, EPROTO, "channel hello has protocol version " + std::to_string(h.version) +
                            "; this destination speaks " + std::to_string(kVersion));
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

}  // namespace ktm::wire

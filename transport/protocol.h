// Wire format of a migration. All integers little-endian, whatever the
// host's byte order (base/le.h), fixed layouts encoded field by field (no
// struct punning), the page offsets too; every field validated.
//
// Per channel, after TLS (or plain TCP with TLS off):
//   source -> dest   Hello (64 bytes)
//   dest   -> source HelloAck (8 bytes)
//   source -> dest   Packet*   (header, offsets, page data)
//   dest   -> source Done (8 bytes, channel 0 only, after END)
//
// Packet = PacketHeader (40 bytes) + page_count u64 offsets + payload:
//   PAGES: page_count * page_size bytes of data, in offset order
//   ZERO:  no data (all-zero pages travel as offsets only)
//   SYNC:  no offsets; closes `iteration` on this channel (flag FINAL on
//          the last one)
//   END:   channel 0 only, after the final barrier: the 32-byte image digest
//          (util/image_digest.h, the hello's algorithm) at switch-over
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace ktm::wire {

// 2: the hello names the image digest algorithm; END carries that digest.
inline constexpr uint16_t kVersion = 2;
inline constexpr uint64_t kHelloMagic = 0x4F4C4C45484D544Bull;  // "KTMHELLO"
inline constexpr uint32_t kPacketMagic = 0x504D544B;            // "KTMP"
inline constexpr uint32_t kAckMagic = 0x414D544B;               // "KTMA"
inline constexpr uint32_t kDoneMagic = 0x444D544B;              // "KTMD"
inline constexpr uint32_t kMaxPagesPerPacket = 1024;
inline constexpr uint32_t kMinPageSize = 4096;
inline constexpr uint32_t kMaxPageSize = 2u << 20;
inline constexpr uint16_t kMaxChannels = 64;

inline constexpr size_t kHelloSize = 64;
inline constexpr size_t kHeaderSize = 40;
inline constexpr size_t kAckSize = 8;
inline constexpr size_t kDigestSize = 32;

enum PacketType : uint16_t { kPages = 1, kZero = 2, kSync = 3, kEnd = 4 };
inline constexpr uint32_t kFlagFinal = 1;

using Uuid = std::array<uint8_t, 16>;

struct Hello {
  uint16_t version = kVersion;
  uint16_t channel_id = 0;
  uint16_t channel_count = 0;
  Uuid session{};
  uint64_t image_size = 0;
  uint32_t page_size = 0;
  uint16_t digest = 1;  // DigestAlgorithm (util/image_digest.h): 1 xxh3, 2 sha256
};

struct PacketHeader {
  uint16_t version = kVersion;
  uint16_t type = 0;
  uint64_t packet_num = 0;
  uint32_t iteration = 0;
  uint32_t page_size = 0;
  uint32_t page_count = 0;
  uint32_t flags = 0;
  uint32_t payload_len = 0;  // END: kDigestSize; others: 0 (pages are implied)
};

// Ack/Done status codes.
enum Status : uint32_t {
  kOk = 0,
  kRejectedVersion = 1,
  kRejectedSession = 2,   // foreign UUID / stray
  kRejectedChannel = 3,   // bad or duplicate channel id / count mismatch
  kRejectedGeometry = 4,  // image/page size
  kDigestMismatch = 5,
  kFailed = 6,
  kNoSpace = 7,        // image larger than the destination's limit or free space
  kInvalidHello = 8,   // the hello did not parse (corrupted in transit, or not a source)
  kCommitFailed = 9,   // DONE: the destination could not make the image durable
  kRefusedData = 10,   // DONE, sent early: the destination refused our data (invalid or forged)
  kTimedOut = 11,      // DONE, sent early: a channel made no progress within the io timeout
  kBusy = 12,          // ACK: the destination is running another migration
};
const char* StatusText(uint32_t s);

uint32_t Crc32c(uint32_t crc, const void* data, size_t len);

void EncodeHello(const Hello& h, uint8_t out[kHelloSize]);
// Throws Error describing the first invalid field.
Hello DecodeHello(const uint8_t in[kHelloSize]);

// Encodes the header and, right after it, the h.page_count `offsets` (host
// order) as little-endian u64: `out` holds kHeaderSize + 8 * page_count
// bytes. The CRC covers the header (CRC field zero) and those offset bytes.
void EncodeHeader(const PacketHeader& h, const uint64_t* offsets, uint8_t* out);

// Limits the destination checks a packet against.
struct Geometry {
  uint64_t image_size = 0;   // bytes the image really has
  uint32_t page_size = 0;
  uint64_t padded_size() const { return (image_size + page_size - 1) / page_size * page_size; }
};

// Decodes and checks the fixed header alone (magic, version, type, page
// size, counts, payload length) before any variable-length read. The CRC is
// checked by ValidateOffsets once the offsets are in.
PacketHeader DecodeHeader(const uint8_t in[kHeaderSize], const Geometry& g);

// `offsets`: the h.page_count offsets as read from the wire. Checks the CRC
// over header+offset bytes, converts the offsets in place to host order,
// then checks each: inside the image, page aligned, strictly increasing.
// Throws Error naming the problem.
void ValidateOffsets(const uint8_t header[kHeaderSize], const PacketHeader& h, uint64_t* offsets,
                     const Geometry& g);

void EncodeU32Pair(uint32_t magic, uint32_t status, uint8_t out[kAckSize]);
// Returns the status; throws if the magic is wrong.
uint32_t DecodeU32Pair(uint32_t magic, const uint8_t in[kAckSize], const char* what);

std::string UuidString(const Uuid& u);
Uuid RandomUuid();

}  // namespace ktm::wire

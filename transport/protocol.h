// Wire format of a migration. All integers little-endian, whatever the
// host's byte order (base/le.h), fixed layouts encoded field by field (no
// struct punning), the page offsets too; every field validated.
//
// Per channel, after TLS (or plain TCP with TLS off):
//   source -> dest   Hello (64 bytes)
//   dest   -> source HelloAck (32 bytes, magic KTMN), or a plain Ack
//                    (8 bytes, magic KTMA: busy, unparsable hello, or a
//                    refusal of a version-2 source)
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
//   ABORT: instead of END, when abort-reason was agreed: why the source
//          gives up (see below); the destination fails with that kind
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace ktm::wire {

// Protocol versions
//   2: the hello names the image digest algorithm; END carries that digest.
//   3: the hello announces a version range and capability bits; the
//      destination answers with a HelloAck saying what was chosen.
// This build speaks kMinVersion..kMaxVersion; packets carry kVersion (the
// only packet format so far: once there are several, the negotiated
// version selects it).
inline constexpr uint16_t kMinVersion = 3;
inline constexpr uint16_t kMaxVersion = 3;
inline constexpr uint16_t kVersion = 3;
inline constexpr uint64_t kHelloMagic = 0x4F4C4C45484D544Bull;  // "KTMHELLO"
inline constexpr uint32_t kPacketMagic = 0x504D544B;            // "KTMP"
inline constexpr uint32_t kAckMagic = 0x414D544B;               // "KTMA"
inline constexpr uint32_t kHelloAckMagic = 0x4E4D544B;          // "KTMN"
inline constexpr uint32_t kDoneMagic = 0x444D544B;              // "KTMD"
inline constexpr uint32_t kMaxPagesPerPacket = 1024;
inline constexpr uint32_t kMinPageSize = 4096;
inline constexpr uint32_t kMaxPageSize = 2u << 20;
inline constexpr uint16_t kMaxChannels = 64;

inline constexpr size_t kHelloSize = 64;
inline constexpr size_t kHeaderSize = 40;
inline constexpr size_t kAckSize = 8;
inline constexpr size_t kHelloAckSize = 32;
inline constexpr size_t kDigestSize = 32;

enum PacketType : uint16_t { kPages = 1, kZero = 2, kSync = 3, kEnd = 4, kAbort = 5 };
inline constexpr uint32_t kFlagFinal = 1;

using Uuid = std::array<uint8_t, 16>;

// ---- Capabilities ----
// A capability is one bit: something a peer might not implement. Each side
// announces what it offers (can do) and what it requires (must be agreed
// for it to go on); required bits are always offered too. The agreed set
// is the intersection of the two offers. Rules, so that adding one later
// (rekey, resume, ...) never breaks an older peer:
//  - a new capability takes the next free bit, and its name goes into the
//    table in protocol.cc; bits are never reused or renumbered;
//  - a side only uses a feature when its bit is in the agreed set, so a
//    peer that does not know the bit (and therefore does not offer it) just
//    does without;
//  - a side requires a bit only when it cannot work without it (a user's
//    explicit choice, e.g. a digest algorithm); requiring it refuses, by
//    name, every peer that lacks it, older peers included;
//  - bits a side does not know are ignored in the peer's offer; a peer
//    that requires an unknown bit is refused ("capability bit N").
// 32 bits fit in the 64-byte hello; a version that needs more grows the
// hello (and says so with its version range).
enum Capability : uint32_t {
  kCapDigestXxh3 = 1u << 0,    // image digest XXH3-128 (END, DigestAlgorithm 1)
  kCapDigestSha256 = 1u << 1,  // image digest SHA-256 (END, DigestAlgorithm 2)
  kCapZeroPages = 1u << 2,     // ZERO packets: all-zero pages as offsets only
  kCapAbortReason = 1u << 3,   // ABORT packets: the source says why it gives up
  kCapRekey = 1u << 4,         // TLS 1.3 KeyUpdate: this side's channel follows the peer's
};
// Every capability this build implements.
inline constexpr uint32_t kKnownCaps =
    kCapDigestXxh3 | kCapDigestSha256 | kCapZeroPages | kCapAbortReason | kCapRekey;

// kCapRekey when a channel cannot follow a peer's TLS 1.3 KeyUpdate, else 0:
// `tls` is ChannelStats::rekey.applies, `can_rekey` its can_rekey before the
// hello (userspace TLS 1.3: yes; kTLS: whether the kernel re-keys, which
// covers both directions; TLS 1.2: no). A plaintext channel offers it:
// there is nothing to follow. After the hello each side tells every
// channel whether the peer offered it (Channel::set_peer_follows_key_updates):
// a channel never sends a KeyUpdate to a peer that did not, and stops at
// its key's limit instead.
inline uint32_t RekeyWithheld(bool tls, bool can_rekey) { return tls && !can_rekey ? uint32_t{kCapRekey} : 0u; }

// "digest-xxh3", ...; "capability bit N" for a bit this build does not know.
std::string CapabilityName(uint32_t bit);
// Comma-separated names of the bits in `caps` ("none" for 0).
std::string CapabilityNames(uint32_t caps);
// The capability that stands for DigestAlgorithm `digest` (1 or 2), 0 else.
uint32_t DigestCapability(uint16_t digest);

// What one side announces: the versions it speaks, and its capabilities.
struct Offer {
  uint16_t min_version = kMinVersion;
  uint16_t max_version = kMaxVersion;
  uint32_t offered = kKnownCaps;
  uint32_t required = 0;  // subset of offered
};

// This build's offer: every known capability but `withheld`, requiring
// `required` (which is offered whatever `withheld` says).
Offer LocalOffer(uint32_t withheld, uint32_t required);

enum class Side { kSource, kDestination };

// The outcome of a negotiation.
struct Agreement {
  uint32_t status = 0;     // kOk, else kRejectedVersion / kRejectedCapability / kInvalidHello
  uint16_t version = 0;    // the highest version both speak (kOk only)
  uint32_t caps = 0;       // offered by both (kOk only)
  std::string why;         // refusals: a sentence naming versions or the capability
};

// Pure: what `local` (playing `local_side`) and `peer` agree on. Refuses
// when the ranges do not overlap (the sentence names both ranges), then
// when the source requires a capability the destination does not offer,
// then the other way round (the sentence names the capability and the
// lacking side's range). Both ends compute the same result, and the same
// sentence up to "this"/"the".
Agreement Negotiate(const Offer& local, Side local_side, const Offer& peer);

// ---- Hello (source -> destination, 64 bytes) ----
// Layout, little-endian, the same for every version >= 2 so any version
// can read the range and refuse cleanly:
//   0 magic "KTMHELLO" u64      8 min_version u16   10 channel_id u16
//  12 channel_count u16        14 digest u16       16 session UUID [16]
//  32 image_size u64           40 page_size u32    44 max_version u16
//  46 reserved u16 (0)         48 offered caps u32 52 required caps u32
//  56 CRC-32C of bytes 0..55   60 reserved u32 (0)
// A version-2 hello has zeros at 44..55: it reads as range 2..2 with no
// capabilities, and is refused (kRejectedVersion, in a plain Ack it
// understands) naming both ranges.
struct Hello {
  uint16_t min_version = kMinVersion;
  uint16_t max_version = kMaxVersion;
  uint16_t channel_id = 0;
  uint16_t channel_count = 0;
  Uuid session{};
  uint64_t image_size = 0;
  uint32_t page_size = 0;
  uint16_t digest = 1;  // DigestAlgorithm (util/image_digest.h): 1 xxh3, 2 sha256
  uint32_t offered = kKnownCaps;
  uint32_t required = 0;
  Offer offer() const { return {min_version, max_version, offered, required}; }
};

// ---- HelloAck (destination -> source, 32 bytes) ----
//   0 magic "KTMN" u32   4 status u32      8 chosen version u16 (0 if refused)
//  10 destination min_version u16         12 destination max_version u16
//  14 reserved u16 (0)  16 agreed caps u32 (0 if refused)
//  20 destination offered caps u32        24 destination required caps u32
//  28 CRC-32C of bytes 0..27
// Sent to every source whose hello parsed and announces max_version >= 3,
// whatever the status, so a refused source can name the versions or the
// capability itself. A plain Ack (magic KTMA + status, 8 bytes) is sent
// instead to a version-2 source, to a hello that did not parse, and by the
// busy responder; its first 8 bytes have the same shape as a HelloAck's, so
// a source reads 8 bytes and then, for KTMN, the 24 more.
struct HelloAck {
  uint32_t status = 0;
  uint16_t version = 0;
  Offer destination;
  uint32_t agreed = 0;
};
void EncodeHelloAck(const HelloAck& a, uint8_t out[kHelloAckSize]);
// Throws Error(kIntegrity) on a bad magic, CRC, range or capability set.
HelloAck DecodeHelloAck(const uint8_t in[kHelloAckSize]);
// 24 when these first 8 acknowledgement bytes begin a HelloAck, 0 for a
// plain Ack; throws Error(kIntegrity) for anything else.
size_t HelloAckRest(const uint8_t first[kAckSize]);

// The destination's answer to hello `h` (already decoded) with `status`:
// a HelloAck for a version-3+ source (agreement included when kOk), a
// plain Ack for an older one. Returns the bytes written to `out`.
size_t EncodeHelloAnswer(const Hello& h, const Offer& destination, uint32_t status,
                         uint8_t out[kHelloAckSize]);

// The source's reading of the destination's answer: `ack` holds `len`
// bytes (kAckSize for a plain Ack, kHelloAckSize for a HelloAck). kOk with
// the agreement, or the refusal with a sentence: the destination's (by
// name, from the ranges and sets it sent), or this source's own when the
// destination agreed to less than the source requires. Throws
// Error(kIntegrity) on a malformed answer.
Agreement SourceVerdict(const Offer& source, const uint8_t* ack, size_t len);

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

// ---- ABORT (source -> destination, any channel, capability
// abort-reason) ----
// The source gives up for a reason of its own (its input changed, a local
// failure) and says so before it closes, so the destination fails with
// the same kind of error, and both ends exit with the same code, instead
// of reading a vanished peer. Header: type kAbort, page_count 0, flags 0,
// payload_len 8 + n. Payload: u32 kind (AbortKind), u32 n, n bytes of
// reason (ASCII; the destination prints it with control bytes replaced).
// A source sends it only when abort-reason was agreed.
// kAbortSecurity: a TLS send key reached its limit and could not change.
enum AbortKind : uint32_t { kAbortUsage = 1, kAbortLocalIo = 2, kAbortInternal = 3, kAbortSecurity = 4 };
inline constexpr size_t kMaxAbortReason = 480;
inline constexpr size_t kMaxAbortPayload = 8 + kMaxAbortReason;

struct AbortNote {
  uint32_t kind = kAbortInternal;
  std::string reason;
};
// Writes the payload (reason cut to kMaxAbortReason) to `out` (at least
// kMaxAbortPayload bytes); returns its length.
size_t EncodeAbortPayload(const AbortNote& a, uint8_t* out);
// Throws Error(kIntegrity) when the lengths disagree or the kind is unknown.
AbortNote DecodeAbortPayload(const uint8_t* in, size_t len);

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
  kRejectedCapability = 13,  // HELLOACK: a required capability is not offered by the other side
};
const char* StatusText(uint32_t s);

uint32_t Crc32c(uint32_t crc, const void* data, size_t len);

void EncodeHello(const Hello& h, uint8_t out[kHelloSize]);
// Throws Error describing the first invalid field. Does not judge the
// version range beyond its shape (min <= max): that is Negotiate's.
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

// ---- Tunnel header (transport/tunnel.h), 40 bytes ----
// The first bytes on every tunnel connection (inside TLS, so
// authenticated): magic "KTMTUNL1" u64, version u16 at 8, at 10 u16 how
// many connections before this one were still open at the source (capped
// at 65535; see TunnelHeader::first_open), CRC-32C of bytes 8..11 and
// 16..39 at 12, the source tunnel's session UUID at 16 and the connection's
// sequence number u64 at 32 (the order the source side accepted it). Both
// ends are one tunnel build: a single version, refused by number when it
// differs (version 1 had no first_open).
inline constexpr size_t kTunnelHeaderSize = 40;
inline constexpr uint64_t kTunnelMagic = 0x314C4E55544D544Bull;  // "KTMTUNL1"
inline constexpr uint16_t kTunnelVersion = 2;

struct TunnelHeader {
  Uuid session{};
  uint64_t seq = 0;
  // The lowest sequence number of this session whose connection was still
  // open at the source when this header was sent (<= seq). Every earlier
  // one has ended there and can never reach the destination, so the
  // destination does not wait for it: a destination tunnel end restarted
  // mid-session (QEMU's postcopy recovery) forwards the session's next
  // connection at once instead of waiting for connections it never saw.
  // Encoded as seq - first_open, capped at 65535 (first_open is then
  // raised: the destination waits for at most 65535 earlier connections).
  uint64_t first_open = 0;
};
void EncodeTunnelHeader(const TunnelHeader& h, uint8_t out[kTunnelHeaderSize]);
// Throws Error(kIntegrity) on a bad magic, version or CRC.
TunnelHeader DecodeTunnelHeader(const uint8_t in[kTunnelHeaderSize]);

std::string UuidString(const Uuid& u);
Uuid RandomUuid();

}  // namespace ktm::wire

// The wire's version and capability negotiation (transport/protocol.h):
// pure unit tests of the encodings and of Negotiate, then end-to-end over
// real sockets with peers that lack a capability.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/le.h"
#include "channel/address.h"
#include "channel/socket_channel.h"
#include "transport/migration.h"
#include "transport/page_source.h"
#include "transport/protocol.h"
#include "util/image_digest.h"

namespace ktm {
namespace {

using wire::Agreement;
using wire::Offer;
using wire::Side;

bool Has(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

Offer Range(uint16_t lo, uint16_t hi, uint32_t offered = wire::kKnownCaps, uint32_t required = 0) {
  return Offer{lo, hi, offered, required};
}

// ---- negotiation ----

TEST(Negotiate, SameOffersAgreeOnEverything) {
  const Agreement a = wire::Negotiate(Range(3, 3), Side::kDestination, Range(3, 3));
  EXPECT_EQ(a.status, wire::kOk);
  EXPECT_EQ(a.version, 3);
  EXPECT_EQ(a.caps, wire::kKnownCaps);
}

TEST(Negotiate, PicksTheHighestCommonVersionAndTheIntersection) {
  const Agreement a = wire::Negotiate(Range(3, 5, 0b0111), Side::kSource, Range(4, 7, 0b1101));
  EXPECT_EQ(a.status, wire::kOk) << a.why;
  EXPECT_EQ(a.version, 5);
  EXPECT_EQ(a.caps, 0b0101u);
  // The same from the other end.
  const Agreement b = wire::Negotiate(Range(4, 7, 0b1101), Side::kDestination, Range(3, 5, 0b0111));
  EXPECT_EQ(b.version, 5);
  EXPECT_EQ(b.caps, 0b0101u);
}

TEST(Negotiate, VersionMismatchNamesBothRanges) {
  const Agreement d = wire::Negotiate(Range(3, 3), Side::kDestination, Range(2, 2, 0));
  EXPECT_EQ(d.status, wire::kRejectedVersion);
  EXPECT_EQ(d.why, "the source speaks protocol 2..2 and this destination 3..3: no version in common");
  const Agreement s = wire::Negotiate(Range(5, 6), Side::kSource, Range(3, 4));
  EXPECT_EQ(s.status, wire::kRejectedVersion);
  EXPECT_EQ(s.why, "this source speaks protocol 5..6 and the destination 3..4: no version in common");
}

TEST(Negotiate, MissingOptionalCapabilityIsLeftOut) {
  const uint32_t dst = wire::kKnownCaps & ~wire::kCapDigestSha256;
  const Agreement a = wire::Negotiate(Range(3, 3, dst), Side::kDestination,
                                      Range(3, 3, wire::kKnownCaps, wire::kCapDigestXxh3 | wire::kCapZeroPages));
  EXPECT_EQ(a.status, wire::kOk) << a.why;
  EXPECT_EQ(a.caps, dst);
}

TEST(Negotiate, MissingRequiredCapabilityIsNamedOnBothSides) {
  const Offer src = Range(3, 3, wire::kKnownCaps, wire::kCapDigestSha256);
  const Offer dst = Range(3, 3, wire::kKnownCaps & ~wire::kCapDigestSha256);
  const Agreement at_dst = wire::Negotiate(dst, Side::kDestination, src);
  EXPECT_EQ(at_dst.status, wire::kRejectedCapability);
  EXPECT_EQ(at_dst.why,
            "the source requires capability 'digest-sha256' which this destination (protocol 3..3) does not offer");
  const Agreement at_src = wire::Negotiate(src, Side::kSource, dst);
  EXPECT_EQ(at_src.why,
            "this source requires capability 'digest-sha256' which the destination (protocol 3..3) does not offer");

  const Offer picky = Range(3, 3, wire::kKnownCaps, wire::kCapZeroPages);
  const Offer plain = Range(3, 3, wire::kCapDigestXxh3);
  EXPECT_EQ(wire::Negotiate(plain, Side::kSource, picky).why,
            "the destination requires capability 'zero-pages' which this source (protocol 3..3) does not offer");
}

// The growth rule: a capability added later (rekey, resume, ...) does not
// disturb an older peer unless the newer side requires it.
TEST(Negotiate, UnknownBitsAreIgnoredUnlessRequired) {
  const uint32_t future = 1u << 20;
  const Agreement a =
      wire::Negotiate(Range(3, 3), Side::kDestination, Range(3, 4, wire::kKnownCaps | future));
  EXPECT_EQ(a.status, wire::kOk);
  EXPECT_EQ(a.caps, wire::kKnownCaps);
  const Agreement b =
      wire::Negotiate(Range(3, 3), Side::kDestination, Range(3, 4, wire::kKnownCaps | future, future));
  EXPECT_EQ(b.status, wire::kRejectedCapability);
  EXPECT_TRUE(Has(b.why, "'capability bit 20'")) << b.why;
}

TEST(Negotiate, CapabilityNames) {
  EXPECT_EQ(wire::CapabilityNames(wire::kKnownCaps), "digest-xxh3, digest-sha256, zero-pages, abort-reason, rekey");
  EXPECT_EQ(wire::CapabilityNames(0), "none");
  EXPECT_EQ(wire::DigestCapability(1), wire::kCapDigestXxh3);
  EXPECT_EQ(wire::DigestCapability(2), wire::kCapDigestSha256);
  EXPECT_EQ(wire::DigestCapability(3), 0u);
  const Offer o = wire::LocalOffer(wire::kCapDigestSha256 | wire::kCapZeroPages, wire::kCapZeroPages);
  EXPECT_EQ(o.offered, wire::kCapDigestXxh3 | wire::kCapZeroPages | wire::kCapAbortReason | wire::kCapRekey);  // required stays offered
  EXPECT_EQ(o.required, wire::kCapZeroPages);
}

// 'rekey' is offered unless a TLS channel cannot follow a KeyUpdate, and
// is optional: a peer without it still agrees, just without the bit.
TEST(Negotiate, RekeyIsWithheldOnlyByTlsChannelsThatCannotFollow) {
  EXPECT_EQ(wire::CapabilityName(wire::kCapRekey), "rekey");
  EXPECT_EQ(wire::kCapRekey, 1u << 4);  // the next free bit, for ever
  EXPECT_EQ(wire::RekeyWithheld(/*tls=*/false, false), 0u);
  EXPECT_EQ(wire::RekeyWithheld(/*tls=*/true, /*can_rekey=*/true), 0u);
  EXPECT_EQ(wire::RekeyWithheld(/*tls=*/true, /*can_rekey=*/false), wire::kCapRekey);
  const Agreement a = wire::Negotiate(wire::LocalOffer(wire::kCapRekey, 0), Side::kDestination, Range(3, 3));
  EXPECT_EQ(a.status, wire::kOk) << a.why;
  EXPECT_EQ(a.caps, wire::kKnownCaps & ~wire::kCapRekey);
}

// ---- hello ----

wire::Hello SampleHello() {
  wire::Hello h;
  h.channel_id = 1;
  h.channel_count = 2;
  h.session = wire::RandomUuid();
  h.image_size = 1 << 20;
  h.page_size = 4096;
  h.digest = 2;
  h.required = wire::kCapDigestSha256;
  return h;
}

TEST(Hello, RoundTripsRangeAndCapabilities) {
  wire::Hello h = SampleHello();
  h.max_version = 9;
  h.offered = wire::kKnownCaps | (1u << 30);
  uint8_t buf[wire::kHelloSize];
  wire::EncodeHello(h, buf);
  EXPECT_EQ(GetLe16(buf + 8), 3);
  EXPECT_EQ(GetLe16(buf + 44), 9);
  const wire::Hello d = wire::DecodeHello(buf);
  EXPECT_EQ(d.min_version, 3);
  EXPECT_EQ(d.max_version, 9);
  EXPECT_EQ(d.offered, h.offered);
  EXPECT_EQ(d.required, h.required);
  EXPECT_EQ(d.session, h.session);
}

TEST(Hello, RejectsInconsistentRangesAndRequirements) {
  uint8_t buf[wire::kHelloSize];
  wire::Hello h = SampleHello();
  h.min_version = 4;
  h.max_version = 3;
  wire::EncodeHello(h, buf);
  EXPECT_THROW(wire::DecodeHello(buf), Error);
  h = SampleHello();
  h.offered = wire::kCapDigestXxh3;  // requires sha256 without offering it
  wire::EncodeHello(h, buf);
  EXPECT_THROW(wire::DecodeHello(buf), Error);
}

// Today's version-2 source: version 2 at offset 8, zeros in 44..55. It
// reads as 2..2, is refused naming both ranges, in a plain Ack it parses.
void EncodeVersion2Hello(const wire::Hello& h, uint8_t buf[wire::kHelloSize]) {
  wire::Hello v2 = h;
  v2.min_version = 2;
  v2.max_version = 0;
  v2.offered = v2.required = 0;
  wire::EncodeHello(v2, buf);
}

TEST(Hello, Version2SourceIsRefusedInAPlainAck) {
  uint8_t buf[wire::kHelloSize];
  EncodeVersion2Hello(SampleHello(), buf);
  const wire::Hello h = wire::DecodeHello(buf);
  EXPECT_EQ(h.min_version, 2);
  EXPECT_EQ(h.max_version, 2);
  const Offer dst = wire::LocalOffer(0, 0);
  const Agreement a = wire::Negotiate(dst, Side::kDestination, h.offer());
  EXPECT_EQ(a.status, wire::kRejectedVersion);
  EXPECT_TRUE(Has(a.why, "2..2") && Has(a.why, "3..3")) << a.why;
  uint8_t ack[wire::kHelloAckSize];
  ASSERT_EQ(wire::EncodeHelloAnswer(h, dst, a.status, ack), wire::kAckSize);
  EXPECT_EQ(wire::DecodeU32Pair(wire::kAckMagic, ack, "ack"), wire::kRejectedVersion);  // what version 2 reads
}

// ---- acknowledgement ----

TEST(HelloAck, RoundTripsAndRejectsCorruption) {
  wire::HelloAck a;
  a.status = wire::kOk;
  a.version = 3;
  a.destination = Range(3, 4, wire::kKnownCaps, wire::kCapZeroPages);
  a.agreed = wire::kCapZeroPages | wire::kCapDigestXxh3;
  uint8_t buf[wire::kHelloAckSize];
  wire::EncodeHelloAck(a, buf);
  EXPECT_EQ(wire::HelloAckRest(buf), wire::kHelloAckSize - wire::kAckSize);
  const wire::HelloAck d = wire::DecodeHelloAck(buf);
  EXPECT_EQ(d.version, 3);
  EXPECT_EQ(d.destination.max_version, 4);
  EXPECT_EQ(d.destination.required, wire::kCapZeroPages);
  EXPECT_EQ(d.agreed, a.agreed);
  buf[17] ^= 1;
  EXPECT_THROW(wire::DecodeHelloAck(buf), Error);
  uint8_t junk[wire::kAckSize] = {1, 2, 3, 4, 0, 0, 0, 0};
  EXPECT_THROW(wire::HelloAckRest(junk), Error);
}

TEST(HelloAck, SourceReadsTheAgreement) {
  wire::Hello h = SampleHello();
  const Offer src = h.offer();
  const Offer dst = wire::LocalOffer(wire::kCapZeroPages, 0);
  uint8_t ack[wire::kHelloAckSize];
  ASSERT_EQ(wire::EncodeHelloAnswer(h, dst, wire::kOk, ack), wire::kHelloAckSize);
  const Agreement a = wire::SourceVerdict(src, ack, sizeof(ack));
  EXPECT_EQ(a.status, wire::kOk) << a.why;
  EXPECT_EQ(a.version, 3);
  EXPECT_EQ(a.caps, wire::kCapDigestXxh3 | wire::kCapDigestSha256 | wire::kCapAbortReason | wire::kCapRekey);
}

TEST(HelloAck, SourceNamesTheDestinationsRefusal) {
  const wire::Hello h = SampleHello();  // requires digest-sha256
  const Offer dst = wire::LocalOffer(wire::kCapDigestSha256, 0);
  const Agreement at_dst = wire::Negotiate(dst, Side::kDestination, h.offer());
  uint8_t ack[wire::kHelloAckSize];
  ASSERT_EQ(wire::EncodeHelloAnswer(h, dst, at_dst.status, ack), wire::kHelloAckSize);
  const Agreement a = wire::SourceVerdict(h.offer(), ack, sizeof(ack));
  EXPECT_EQ(a.status, wire::kRejectedCapability);
  EXPECT_EQ(a.why,
            "this source requires capability 'digest-sha256' which the destination (protocol 3..3) does not offer");
}

// A destination that says kOk although it lacks what the source requires
// (a forged or buggy peer) is refused by the source, by name.
TEST(HelloAck, SourceRefusesAnAgreementWithoutItsRequirements) {
  const wire::Hello h = SampleHello();
  wire::HelloAck forged;
  forged.status = wire::kOk;
  forged.version = 3;
  forged.destination = wire::LocalOffer(wire::kCapDigestSha256, 0);
  forged.agreed = forged.destination.offered;
  uint8_t ack[wire::kHelloAckSize];
  wire::EncodeHelloAck(forged, ack);
  const Agreement a = wire::SourceVerdict(h.offer(), ack, sizeof(ack));
  EXPECT_EQ(a.status, wire::kRejectedCapability);
  EXPECT_TRUE(Has(a.why, "'digest-sha256'")) << a.why;
  // Agreeing to more than both offer is caught too.
  forged.destination = wire::LocalOffer(0, 0);
  forged.agreed = wire::kCapZeroPages;
  wire::EncodeHelloAck(forged, ack);
  EXPECT_EQ(wire::SourceVerdict(h.offer(), ack, sizeof(ack)).status, wire::kRejectedCapability);
}

TEST(HelloAck, Version2DestinationRefusalNamesBothRanges) {
  uint8_t ack[wire::kAckSize];
  wire::EncodeU32Pair(wire::kAckMagic, wire::kRejectedVersion, ack);
  const Agreement a = wire::SourceVerdict(wire::LocalOffer(0, 0), ack, sizeof(ack));
  EXPECT_EQ(a.status, wire::kRejectedVersion);
  EXPECT_TRUE(Has(a.why, "3..3") && Has(a.why, "2..2")) << a.why;
  wire::EncodeU32Pair(wire::kAckMagic, wire::kBusy, ack);
  EXPECT_EQ(wire::SourceVerdict(wire::LocalOffer(0, 0), ack, sizeof(ack)).why, wire::StatusText(wire::kBusy));
}

// ---- tunnel header ----

TEST(TunnelHeader, RoundTripsAndRejectsTampering) {
  wire::TunnelHeader h;
  h.session = wire::RandomUuid();
  h.seq = 0x0102030405060708ull;
  uint8_t buf[wire::kTunnelHeaderSize];
  wire::EncodeTunnelHeader(h, buf);
  EXPECT_EQ(std::memcmp(buf, "KTMTUNL1", 8), 0);
  const wire::TunnelHeader d = wire::DecodeTunnelHeader(buf);
  EXPECT_EQ(d.session, h.session);
  EXPECT_EQ(d.seq, h.seq);
  // The default (0: every earlier connection may still come) is capped at
  // 65535 open predecessors; smaller counts round-trip.
  EXPECT_EQ(d.first_open, h.seq - 0xffff);
  h.first_open = h.seq - 3;
  wire::EncodeTunnelHeader(h, buf);
  EXPECT_EQ(wire::DecodeTunnelHeader(buf).first_open, h.seq - 3);
  h.first_open = h.seq;
  wire::EncodeTunnelHeader(h, buf);
  EXPECT_EQ(wire::DecodeTunnelHeader(buf).first_open, h.seq);
  // The count is under the CRC.
  uint8_t bad[wire::kTunnelHeaderSize];
  std::memcpy(bad, buf, sizeof(bad));
  bad[10] ^= 1;
  EXPECT_THROW(wire::DecodeTunnelHeader(bad), Error);
  // More open predecessors than earlier connections: refused.
  h.seq = 2;
  h.first_open = 0;
  wire::EncodeTunnelHeader(h, buf);
  std::memcpy(bad, buf, sizeof(bad));
  PutLe16(bad + 10, 3);
  PutLe32(bad + 12, wire::Crc32c(wire::Crc32c(0, bad + 8, 4), bad + 16, 24));
  EXPECT_THROW(wire::DecodeTunnelHeader(bad), Error);
  std::memcpy(bad, buf, sizeof(bad));
  bad[33] ^= 0x10;
  EXPECT_THROW(wire::DecodeTunnelHeader(bad), Error);
  std::memcpy(bad, buf, sizeof(bad));
  PutLe16(bad + 8, 1);
  try {
    wire::DecodeTunnelHeader(bad);
    ADD_FAILURE() << "version 1 accepted";
  } catch (const Error& e) {
    EXPECT_TRUE(Has(e.what(), "version 1")) << e.what();
  }
  std::memcpy(bad, buf, sizeof(bad));
  bad[0] ^= 1;
  EXPECT_THROW(wire::DecodeTunnelHeader(bad), Error);
}

TEST(Abort, PayloadRoundTripsAndRejectsLiesAndEscapes) {
  uint8_t buf[wire::kMaxAbortPayload];
  wire::AbortNote a;
  a.kind = wire::kAbortLocalIo;
  a.reason = "input changed\x1b[2J";
  const size_t n = wire::EncodeAbortPayload(a, buf);
  ASSERT_EQ(n, 8 + a.reason.size());
  const wire::AbortNote b = wire::DecodeAbortPayload(buf, n);
  EXPECT_EQ(b.kind, wire::kAbortLocalIo);
  EXPECT_EQ(b.reason, "input changed?[2J");  // no terminal escape from the wire
  EXPECT_THROW(wire::DecodeAbortPayload(buf, n - 1), Error);  // length disagrees
  buf[0] = 9;
  EXPECT_THROW(wire::DecodeAbortPayload(buf, n), Error);  // unknown kind
  a.reason.assign(4000, 'x');
  EXPECT_EQ(wire::EncodeAbortPayload(a, buf), wire::kMaxAbortPayload);  // cut, never overflows
}

// ---- end to end, over loopback sockets ----

struct Outcome {
  MigrationReport src;
  std::string src_error, dst_error;
  ErrorKind src_kind = ErrorKind::kInternal, dst_kind = ErrorKind::kInternal;
  std::vector<std::string> logs;
  std::vector<uint8_t> received;
};

Outcome Migrate(PageSource& img, DigestAlgorithm digest, const std::function<void(SourceOptions&)>& tweak_src,
                const std::function<void(DestinationOptions&)>& tweak_dst) {
  Listener l = Listener::Listen("127.0.0.1:0");
  Outcome o;
  o.received.assign(img.page_count() * img.page_size(), 0xAA);
  std::mutex mu;
  auto dst = std::async(std::launch::async, [&] {
    DestinationOptions d;
    d.memory = o.received.data();
    d.memory_size = o.received.size();
    d.security.tls = false;
    d.accept_timeout = std::chrono::seconds(20);
    d.log = [&](const std::string& s) {
      std::lock_guard<std::mutex> g(mu);
      o.logs.push_back(s);
    };
    if (tweak_dst) tweak_dst(d);
    try {
      RunDestination(l, d);
    } catch (const Error& e) {
      o.dst_error = e.what();
      o.dst_kind = e.kind();
    } catch (const std::exception& e) {
      o.dst_error = e.what();
    }
  });
  SourceOptions s;
  s.address = l.address();
  s.channels = 2;
  s.security.tls = false;
  s.digest = digest;
  s.connect_timeout = std::chrono::seconds(5);
  if (tweak_src) tweak_src(s);
  try {
    o.src = RunSource(img, s);
  } catch (const Error& e) {
    o.src_error = e.what();
    o.src_kind = e.kind();
  }
  dst.get();
  return o;
}

std::unique_ptr<MappedImage> Image() {
  auto img = MappedImage::Anonymous((4u << 20) + 100);
  img->FillMixed(30, 5);  // data and zero pages: ZERO packets are used
  return img;
}

std::string JoinedLogs(const Outcome& o) {
  std::string s;
  for (const auto& l : o.logs) s += l + "\n";
  return s;
}

// digest-sha256 is optional for an XXH3 source: a destination without it
// still receives the image, byte for byte.
TEST(Negotiation, DestinationWithoutAnOptionalCapabilityStillMigrates) {
  auto img = Image();
  Outcome o = Migrate(*img, DigestAlgorithm::kXxh3, nullptr,
                      [](DestinationOptions& d) { d.capabilities_withheld = wire::kCapDigestSha256; });
  ASSERT_EQ(o.src_error, "");
  ASSERT_EQ(o.dst_error, "");
  EXPECT_EQ(std::memcmp(o.received.data(), img->data(), img->size()), 0);
  EXPECT_EQ(o.src.digest,
            DigestHex(DigestAlgorithm::kXxh3, ImageDigestOf(DigestAlgorithm::kXxh3, o.received.data(), img->size(),
                                                            img->page_size())));
}

// And a source that does not offer what nobody requires migrates too.
TEST(Negotiation, SourceWithoutAnOptionalCapabilityStillMigrates) {
  auto img = Image();
  Outcome o = Migrate(
      *img, DigestAlgorithm::kSha256, [](SourceOptions& s) { s.capabilities_withheld = wire::kCapDigestXxh3; },
      nullptr);
  ASSERT_EQ(o.src_error, "");
  ASSERT_EQ(o.dst_error, "");
  EXPECT_EQ(std::memcmp(o.received.data(), img->data(), img->size()), 0);
}

// An image whose source refuses to vouch for it at switch-over, as when
// the input file changed during the migration.
class RefusingImage final : public PageSource {
 public:
  explicit RefusingImage(PageSource& inner) : inner_(inner) {}
  const uint8_t* data() const override { return inner_.data(); }
  uint64_t size() const override { return inner_.size(); }
  uint32_t page_size() const override { return inner_.page_size(); }
  void CollectDirty(std::vector<uint64_t>& pages) override { inner_.CollectDirty(pages); }
  void Validate() const override {
    throw Error(ErrorKind::kLocalIo, EIO, "input /tmp/guest.img changed during the migration (new mtime)");
  }

 private:
  PageSource& inner_;
};

// abort-reason agreed: the source says why it gives up, and the
// destination fails with the same kind of error (both exit 5), not as if
// the source had vanished.
TEST(Negotiation, SourceThatGivesUpTellsTheDestinationWhy) {
  auto img = Image();
  RefusingImage refusing(*img);
  Outcome o = Migrate(refusing, DigestAlgorithm::kXxh3, nullptr, nullptr);
  EXPECT_EQ(o.src_kind, ErrorKind::kLocalIo) << o.src_error;
  EXPECT_EQ(o.dst_kind, ErrorKind::kLocalIo) << o.dst_error;
  EXPECT_NE(o.dst_error.find("the source gave up: input /tmp/guest.img changed during the migration (new mtime)"),
            std::string::npos)
      << o.dst_error;
}

// A destination without abort-reason (an older build) is never sent ABORT:
// it sees the source go away, as before.
TEST(Negotiation, DestinationWithoutAbortReasonSeesAVanishedSource) {
  auto img = Image();
  RefusingImage refusing(*img);
  Outcome o = Migrate(refusing, DigestAlgorithm::kXxh3, nullptr,
                      [](DestinationOptions& d) { d.capabilities_withheld = wire::kCapAbortReason; });
  EXPECT_EQ(o.src_kind, ErrorKind::kLocalIo) << o.src_error;
  EXPECT_EQ(o.dst_kind, ErrorKind::kPeer) << o.dst_error;
  EXPECT_EQ(o.dst_error.find("gave up"), std::string::npos) << o.dst_error;
}

TEST(Negotiation, SourceRequiringWhatTheDestinationLacksIsRefusedByName) {
  auto img = Image();
  Outcome o = Migrate(*img, DigestAlgorithm::kSha256, nullptr, [](DestinationOptions& d) {
    d.capabilities_withheld = wire::kCapDigestSha256;
    d.accept_timeout = std::chrono::seconds(3);  // the refused source never comes back
  });
  EXPECT_TRUE(Has(o.src_error, "destination refused channel 0: this source requires capability 'digest-sha256' "
                               "which the destination (protocol 3..3) does not offer"))
      << o.src_error;
  EXPECT_EQ(o.src_kind, ErrorKind::kSecurity);
  EXPECT_TRUE(Has(JoinedLogs(o), "the source requires capability 'digest-sha256' which this destination "
                                 "(protocol 3..3) does not offer"))
      << JoinedLogs(o);
  EXPECT_TRUE(Has(o.dst_error, "no migration arrived")) << o.dst_error;
}

TEST(Negotiation, DestinationRequiringWhatTheSourceLacksIsRefusedByName) {
  auto img = Image();
  Outcome o = Migrate(
      *img, DigestAlgorithm::kXxh3, [](SourceOptions& s) { s.capabilities_withheld = wire::kCapDigestSha256; },
      [](DestinationOptions& d) {
        d.capabilities_required = wire::kCapDigestSha256;
        d.accept_timeout = std::chrono::seconds(3);
      });
  EXPECT_TRUE(Has(o.src_error, "the destination requires capability 'digest-sha256' which this source "
                               "(protocol 3..3) does not offer"))
      << o.src_error;
  EXPECT_EQ(o.src_kind, ErrorKind::kSecurity);
  EXPECT_TRUE(Has(JoinedLogs(o), "this destination requires capability 'digest-sha256' which the source "))
      << JoinedLogs(o);
}

// Today's version-2 source, spoken by hand: a plain Ack it understands
// (kRejectedVersion), and the destination's log names both ranges.
TEST(Negotiation, Version2SourceGetsAPlainRefusal) {
  Listener l = Listener::Listen("127.0.0.1:0");
  std::vector<std::string> logs;
  std::mutex mu;
  auto dst = std::async(std::launch::async, [&] {
    DestinationOptions d;
    d.security.tls = false;
    d.accept_timeout = std::chrono::seconds(3);
    d.log = [&](const std::string& s) {
      std::lock_guard<std::mutex> g(mu);
      logs.push_back(s);
    };
    try {
      RunDestination(l, d);
    } catch (const Error&) {
    }
  });
  SocketOptions so;
  so.zero_copy = ZeroCopyMode::kOff;
  auto ch = SocketChannel::Connect(l.address(), std::chrono::seconds(5), so);
  uint8_t hello[wire::kHelloSize];
  EncodeVersion2Hello(SampleHello(), hello);
  ch->write_all(hello, sizeof(hello));
  uint8_t ack[wire::kAckSize];
  ASSERT_TRUE(ch->read_all(ack, sizeof(ack)));
  EXPECT_EQ(wire::DecodeU32Pair(wire::kAckMagic, ack, "ack"), wire::kRejectedVersion);
  uint8_t more;
  EXPECT_FALSE(ch->read_all(&more, 1));  // nothing after it: the stream ends
  dst.get();
  std::string all;
  for (const auto& s : logs) all += s + "\n";
  EXPECT_TRUE(Has(all, "the source speaks protocol 2..2 and this destination 3..3: no version in common")) << all;
}

}  // namespace
}  // namespace ktm

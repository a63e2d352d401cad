// Range arithmetic of MSG_ZEROCOPY completions, through the real cmsg parser:
// every case feeds crafted sock_extended_err records, as recvmsg(MSG_ERRQUEUE)
// would deliver them.
#include "channel/zerocopy_tracker.h"

#include <gtest/gtest.h>
#include <linux/errqueue.h>
#include <netinet/in.h>

#include <cstring>
#include <map>
#include <vector>

namespace ktm {
namespace {

// One error-queue control message carrying a sock_extended_err.
struct Record {
  alignas(cmsghdr) char buf[CMSG_SPACE(sizeof(sock_extended_err))] = {};
  cmsghdr* cm() { return reinterpret_cast<cmsghdr*>(buf); }
};

Record MakeRecord(uint32_t lo, uint32_t hi, bool copied, int level = SOL_IP,
                  int type = IP_RECVERR, uint8_t origin = SO_EE_ORIGIN_ZEROCOPY,
                  uint32_t err = 0) {
  Record r;
  cmsghdr* cm = r.cm();
  cm->cmsg_level = level;
  cm->cmsg_type = type;
  cm->cmsg_len = CMSG_LEN(sizeof(sock_extended_err));
  sock_extended_err serr{};
  serr.ee_errno = err;
  serr.ee_origin = origin;
  serr.ee_code = copied ? SO_EE_CODE_ZEROCOPY_COPIED : 0;
  serr.ee_info = lo;
  serr.ee_data = hi;
  std::memcpy(CMSG_DATA(cm), &serr, sizeof(serr));
  return r;
}

void Feed(ZeroCopyTracker& t, uint32_t lo, uint32_t hi, bool copied = false) {
  Record r = MakeRecord(lo, hi, copied);
  std::optional<Error> err = t.OnControlMessage(r.cm());
  ASSERT_FALSE(err.has_value()) << err->what();
}

TEST(ZeroCopyTracker, InOrderSingleRanges) {
  ZeroCopyTracker t;
  for (int i = 0; i < 3; ++i) EXPECT_EQ(t.OnSend(), static_cast<uint64_t>(i));
  EXPECT_FALSE(t.IsReleased(0));
  Feed(t, 0, 0);
  EXPECT_TRUE(t.IsReleased(0));
  EXPECT_FALSE(t.IsReleased(1));
  Feed(t, 1, 1);
  Feed(t, 2, 2);
  EXPECT_TRUE(t.all_released());
  EXPECT_EQ(t.counters().released, 3u);
  EXPECT_EQ(t.counters().completion_records, 3u);
  EXPECT_EQ(t.counters().zero_copied, 3u);
  EXPECT_EQ(t.counters().copied, 0u);
}

TEST(ZeroCopyTracker, MergedRangeReleasesAllAndCountsCopies) {
  ZeroCopyTracker t;
  for (int i = 0; i < 10; ++i) t.OnSend();
  Feed(t, 0, 9, /*copied=*/true);
  EXPECT_TRUE(t.all_released());
  EXPECT_TRUE(t.IsReleased(ZeroCopyIds{0, 10}));
  EXPECT_EQ(t.counters().completion_records, 1u);
  EXPECT_EQ(t.counters().copied, 10u);
  EXPECT_EQ(t.counters().zero_copied, 0u);
  EXPECT_FALSE(t.TakeZeroCopiedSinceLast());
}

TEST(ZeroCopyTracker, OutOfOrderRangesNeverReleaseEarly) {
  ZeroCopyTracker t;
  for (int i = 0; i < 8; ++i) t.OnSend();
  Feed(t, 5, 7);
  EXPECT_FALSE(t.IsReleased(0));
  EXPECT_FALSE(t.IsReleased(4));
  EXPECT_TRUE(t.IsReleased(5));
  EXPECT_TRUE(t.IsReleased(7));
  EXPECT_FALSE(t.IsReleased(ZeroCopyIds{4, 8}));
  EXPECT_TRUE(t.IsReleased(ZeroCopyIds{5, 8}));
  Feed(t, 2, 3);
  EXPECT_FALSE(t.IsReleased(ZeroCopyIds{0, 8}));
  EXPECT_FALSE(t.IsReleased(4));
  Feed(t, 0, 1);
  EXPECT_TRUE(t.IsReleased(ZeroCopyIds{0, 4}));
  EXPECT_FALSE(t.all_released());
  Feed(t, 4, 4);
  EXPECT_TRUE(t.all_released());
  EXPECT_TRUE(t.IsReleased(ZeroCopyIds{0, 8}));
  EXPECT_EQ(t.counters().released, 8u);
}

TEST(ZeroCopyTracker, WrapAroundPast2To32) {
  const uint64_t start = (1ull << 32) - 3;  // kernel ids ...FFFD, FFFE, FFFF, 0, 1, 2
  ZeroCopyTracker t(start);
  for (int i = 0; i < 6; ++i) t.OnSend();
  // A merged range that wraps: ee_info=0xFFFFFFFE, ee_data=1 (numerically smaller).
  Feed(t, 0xFFFFFFFEu, 1u);
  EXPECT_FALSE(t.IsReleased(start));
  EXPECT_TRUE(t.IsReleased(start + 1));
  EXPECT_TRUE(t.IsReleased(start + 4));  // 64-bit id of kernel id 1
  EXPECT_FALSE(t.IsReleased(start + 5));
  EXPECT_EQ(t.counters().released, 4u);
  Feed(t, 2u, 2u);
  Feed(t, 0xFFFFFFFDu, 0xFFFFFFFDu);
  EXPECT_TRUE(t.all_released());
  EXPECT_EQ(t.next_id(), start + 6);
}

TEST(ZeroCopyTracker, CallbackFiresExactlyOncePerIdWithRanges) {
  ZeroCopyTracker t((1ull << 32) - 2);
  std::map<uint64_t, int> seen;
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  t.set_release_callback([&](uint64_t first, uint64_t last, bool) {
    calls.emplace_back(first, last);
    for (uint64_t id = first; id <= last; ++id) ++seen[id];
  });
  const uint64_t base = t.next_id();
  for (int i = 0; i < 6; ++i) t.OnSend();
  Feed(t, 2, 3);                     // ids base+4, base+5
  Feed(t, 0xFFFFFFFEu, 0xFFFFFFFFu);  // base, base+1
  Feed(t, 0, 1);                     // base+2, base+3
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0], std::make_pair(base + 4, base + 5));
  EXPECT_EQ(calls[1], std::make_pair(base, base + 1));
  ASSERT_EQ(seen.size(), 6u);
  for (auto& [id, n] : seen) EXPECT_EQ(n, 1) << "id " << id;
}

TEST(ZeroCopyTracker, RejectsRangeNamingUnsentIds) {
  ZeroCopyTracker t;
  t.OnSend();
  Record r = MakeRecord(0, 1, false);
  EXPECT_THROW(t.OnControlMessage(r.cm()), Error);
  EXPECT_FALSE(t.IsReleased(0));
}

TEST(ZeroCopyTracker, RejectsDuplicateRelease) {
  ZeroCopyTracker t;
  for (int i = 0; i < 4; ++i) t.OnSend();
  Feed(t, 2, 3);
  Record r = MakeRecord(3, 3, false);
  try {
    t.OnControlMessage(r.cm());
    FAIL() << "duplicate accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("already released"), std::string::npos) << e.what();
  }
  EXPECT_EQ(t.counters().released, 2u);
}

TEST(ZeroCopyTracker, KernelErrorIsReturnedNotDropped) {
  ZeroCopyTracker t;
  t.OnSend();
  Record r = MakeRecord(0, 0, false, SOL_IP, IP_RECVERR, SO_EE_ORIGIN_ZEROCOPY, ENOMEM);
  std::optional<Error> err = t.OnControlMessage(r.cm());
  ASSERT_TRUE(err.has_value());
  EXPECT_EQ(err->code(), ENOMEM);
  EXPECT_NE(std::string(err->what()).find("send failure"), std::string::npos);
  EXPECT_FALSE(t.IsReleased(0));
}

TEST(ZeroCopyTracker, ValidatesLevelTypeAndOrigin) {
  ZeroCopyTracker t;
  t.OnSend();
  Record wrong_level = MakeRecord(0, 0, false, SOL_SOCKET, IP_RECVERR);
  EXPECT_TRUE(t.OnControlMessage(wrong_level.cm()).has_value());
  Record wrong_origin = MakeRecord(0, 0, false, SOL_IP, IP_RECVERR, SO_EE_ORIGIN_LOCAL);
  EXPECT_TRUE(t.OnControlMessage(wrong_origin.cm()).has_value());
  Record shortrec = MakeRecord(0, 0, false);
  shortrec.cm()->cmsg_len = CMSG_LEN(4);
  EXPECT_TRUE(t.OnControlMessage(shortrec.cm()).has_value());
  EXPECT_FALSE(t.IsReleased(0));
  // IPv6 sockets report with SOL_IPV6/IPV6_RECVERR.
  Record v6 = MakeRecord(0, 0, true, SOL_IPV6, IPV6_RECVERR);
  EXPECT_FALSE(t.OnControlMessage(v6.cm()).has_value());
  EXPECT_TRUE(t.IsReleased(0));
}

}  // namespace
}  // namespace ktm

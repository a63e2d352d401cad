// SocketChannel on real loopback sockets: integrity of large zero-copy
// transfers, honest completion accounting, buffer lifetime, ENOBUFS, errors.
#include "channel/socket_channel.h"

#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>

#include <atomic>
#include <map>
#include <thread>
#include <vector>

#include "tests/test_util.h"
#include "util/sha256.h"

namespace ktm {
namespace {

using testing::ConnectedPair;
using testing::DrainAndHash;
using testing::FillPattern;
using testing::Mapping;
using testing::ResetOnClose;
using testing::WaitHangup;
using namespace std::chrono_literals;

// Sends `len` bytes of the mapping in `chunk`-sized zero-copy writes, then
// flushes and half-closes. Returns the number of writev_all calls.
uint64_t SendZeroCopy(SocketChannel& ch, const Mapping& m, size_t chunk) {
  uint64_t writes = 0;
  for (size_t off = 0; off < m.size(); off += chunk) {
    ch.write_all(m.data() + off, std::min(chunk, m.size() - off), kWriteZeroCopy);
    ++writes;
  }
  ch.flush();
  ch.shutdown(ShutdownHow::kWrite);
  return writes;
}

TEST(SocketChannel, ZeroCopy256MiBArrivesIntactAndEveryCompletionIsCounted) {
  constexpr size_t kSize = 256u << 20;
  Mapping m(kSize);
  FillPattern(m.data(), kSize, 1);
  const Sha256::Digest want = Sha256::Of(m.data(), kSize);

  auto p = ConnectedPair("127.0.0.1:0");
  ASSERT_TRUE(p.client->zero_copy_available()) << p.client->zero_copy_reason();
  ASSERT_TRUE(p.client->has_feature(kFeatureZeroCopyWrite));
  std::pair<uint64_t, Sha256::Digest> got;
  std::thread rx([&] { got = DrainAndHash(*p.server); });
  SendZeroCopy(*p.client, m, 1u << 20);
  rx.join();

  EXPECT_EQ(got.first, kSize);
  EXPECT_EQ(Sha256::Hex(got.second), Sha256::Hex(want));
  const ZeroCopyCounters& c = p.client->zero_copy_counters();
  EXPECT_GE(c.sends, 256u);  // at least one sendmsg per 1 MiB write
  EXPECT_EQ(c.released, c.sends);
  EXPECT_EQ(c.outstanding(), 0u);
  EXPECT_EQ(c.zero_copied + c.copied, c.sends);
  // Loopback delivers locally, so the kernel copies the pinned pages when it
  // hands them to the receiving socket and says so: every completion must
  // carry SO_EE_CODE_ZEROCOPY_COPIED here.
  EXPECT_EQ(c.copied, c.sends);
  EXPECT_EQ(c.zero_copied, 0u);
  EXPECT_GE(c.completion_records, 1u);
  EXPECT_LE(c.completion_records, c.sends);
}

TEST(SocketChannel, Ipv6TransferIntact) {
  constexpr size_t kSize = 32u << 20;
  Mapping m(kSize);
  FillPattern(m.data(), kSize, 2);
  std::unique_ptr<testing::Pair> p;
  try {
    p = std::make_unique<testing::Pair>(ConnectedPair("[::1]:0"));
  } catch (const Error& e) {
    GTEST_FAIL() << "IPv6 loopback unavailable: " << e.what();
  }
  EXPECT_NE(p->client->describe().find("[::1]"), std::string::npos) << p->client->describe();
  std::pair<uint64_t, Sha256::Digest> got;
  std::thread rx([&] { got = DrainAndHash(*p->server); });
  SendZeroCopy(*p->client, m, 256u << 10);
  rx.join();
  EXPECT_EQ(got.first, kSize);
  EXPECT_EQ(got.second, Sha256::Of(m.data(), kSize));
  EXPECT_EQ(p->client->zero_copy_counters().released, p->client->zero_copy_counters().sends);
}

TEST(SocketChannel, UnixSocketCopiesAndSaysWhy) {
  std::string path = "/tmp/ktm-test-" + std::to_string(getpid()) + ".sock";
  auto p = ConnectedPair("unix:" + path);
  EXPECT_FALSE(p.client->zero_copy_available());
  EXPECT_FALSE(p.client->has_feature(kFeatureZeroCopyWrite));
  EXPECT_NE(p.client->zero_copy_reason().find("UNIX"), std::string::npos);
  constexpr size_t kSize = 16u << 20;
  Mapping m(kSize);
  FillPattern(m.data(), kSize, 3);
  std::pair<uint64_t, Sha256::Digest> got;
  std::thread rx([&] { got = DrainAndHash(*p.server); });
  // The zero-copy flag is a request: on a channel without the feature the
  // write is synchronous and produces no ids.
  ZeroCopyIds ids = p.client->write_all(m.data(), kSize, kWriteZeroCopy);
  EXPECT_TRUE(ids.empty());
  p.client->shutdown(ShutdownHow::kWrite);
  rx.join();
  EXPECT_EQ(got.first, kSize);
  EXPECT_EQ(got.second, Sha256::Of(m.data(), kSize));
  EXPECT_EQ(p.client->zero_copy_counters().sends, 0u);
  unlink(path.c_str());
}

TEST(SocketChannel, RequireZeroCopyFailsAtSetupOnUnixSocket) {
  std::string path = "/tmp/ktm-test-req-" + std::to_string(getpid()) + ".sock";
  Listener l = Listener::Listen("unix:" + path);
  SocketOptions req;
  req.zero_copy = ZeroCopyMode::kRequire;
  try {
    SocketChannel::Connect(l.address(), 5s, req);
    FAIL() << "require on a UNIX socket must fail at setup";
  } catch (const Error& e) {
    std::string w = e.what();
    EXPECT_NE(w.find("zero copy was required"), std::string::npos) << w;
    EXPECT_EQ(e.kind(), ErrorKind::kSecurity) << w;
    EXPECT_EQ(e.remedy(), Remedy::kZeroCopyNotRequired) << w;
  }
  unlink(path.c_str());
}

TEST(SocketChannel, ZeroCopyOffNeverPins) {
  SocketOptions off;
  off.zero_copy = ZeroCopyMode::kOff;
  auto p = ConnectedPair("127.0.0.1:0", off);
  EXPECT_FALSE(p.client->has_feature(kFeatureZeroCopyWrite));
  std::vector<uint8_t> buf(64 << 10, 7);
  EXPECT_TRUE(p.client->write_all(buf.data(), buf.size(), kWriteZeroCopy).empty());
  EXPECT_EQ(p.client->zero_copy_counters().sends, 0u);
  EXPECT_NE(p.client->describe().find("turned off by policy"), std::string::npos) << p.client->describe();
}

TEST(SocketChannel, WritesBelowThresholdAreCopied) {
  SocketOptions o;
  o.zero_copy_threshold = 16 << 10;
  auto p = ConnectedPair("127.0.0.1:0", o);
  std::vector<uint8_t> small(4096, 1), big(64 << 10, 2);
  EXPECT_TRUE(p.client->write_all(small.data(), small.size(), kWriteZeroCopy).empty());
  ZeroCopyIds ids = p.client->write_all(big.data(), big.size(), kWriteZeroCopy);
  EXPECT_FALSE(ids.empty());
  EXPECT_EQ(p.client->zero_copy_counters().below_threshold, 1u);
  EXPECT_EQ(p.client->zero_copy_counters().sends, ids.end - ids.first);
  std::vector<uint8_t> in(small.size() + big.size());
  ASSERT_TRUE(p.server->read_all(in.data(), in.size()));
  EXPECT_EQ(0, memcmp(in.data(), small.data(), small.size()));
  EXPECT_EQ(0, memcmp(in.data() + small.size(), big.data(), big.size()));
  p.client->flush();
  EXPECT_TRUE(p.client->is_released(ids));
}

// Fills the path to a peer that does not read, with non-blocking zero-copy
// writes, until the kernel refuses more. Returns the ids written.
std::vector<ZeroCopyIds> FillUntilBlocked(SocketChannel& ch, const Mapping& m, size_t chunk) {
  std::vector<ZeroCopyIds> ids;
  ch.set_blocking(false);
  size_t off = 0;
  for (;;) {
    iovec v{m.data() + off, chunk};
    WriteResult r = ch.writev(std::span<const iovec>(&v, 1), kWriteZeroCopy);
    if (r.would_block) break;
    ids.push_back(r.zc);
    off = (off + r.bytes) % (m.size() - chunk);
  }
  ch.set_blocking(true);
  return ids;
}

TEST(SocketChannel, FlushBlocksWhilePeerStalledAndCompletesAfterResume) {
  auto p = ConnectedPair("127.0.0.1:0");
  Mapping m(16u << 20);
  FillPattern(m.data(), m.size(), 4);
  std::map<uint64_t, int> released_count;
  p.client->set_release_callback([&](uint64_t first, uint64_t last, bool copied) {
    EXPECT_TRUE(copied);  // loopback
    for (uint64_t id = first; id <= last; ++id) ++released_count[id];
  });
  std::vector<ZeroCopyIds> ids = FillUntilBlocked(*p.client, m, 64 << 10);
  ASSERT_GT(ids.size(), 2u);
  // The newest write is still in the send queue (the receiver's window is
  // full), so the kernel holds its pages: it must not read as released.
  p.client->try_flush();
  int unsent = 0;
  ASSERT_EQ(ioctl(p.client->fd(), SIOCOUTQNSD, &unsent), 0);
  EXPECT_GT(unsent, 0);
  EXPECT_FALSE(p.client->is_released(ids.back()));

  std::atomic<bool> flushed{false};
  FlushResult fr;
  std::thread flusher([&] {
    fr = p.client->flush();
    flushed = true;
  });
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(flushed.load()) << "flush returned while the peer was not reading";

  // Peer resumes: reading everything it was sent lets the kernel transmit
  // (and, on loopback, copy) the remaining pages.
  std::vector<uint8_t> buf(1 << 20);
  p.server->set_blocking(false);
  while (!flushed.load()) {
    iovec v{buf.data(), buf.size()};
    ReadResult r = p.server->readv(std::span<const iovec>(&v, 1));
    if (r.would_block) std::this_thread::sleep_for(1ms);
  }
  flusher.join();
  EXPECT_TRUE(fr.complete);
  EXPECT_FALSE(fr.any_zero_copied);  // loopback copies; flush must say so
  for (auto& i : ids) EXPECT_TRUE(p.client->is_released(i));
  const ZeroCopyCounters& c = p.client->zero_copy_counters();
  EXPECT_EQ(c.sends, ids.size());
  EXPECT_EQ(c.released, c.sends);
  ASSERT_EQ(released_count.size(), ids.size());
  for (auto& [id, n] : released_count) EXPECT_EQ(n, 1) << "id " << id;
}

// A peer that stops reading: a blocking write_all must end with a timeout
// about io_timeout after it could no longer move a byte, not a multiple of
// it. (A blocking sendmsg that SO_SNDTIMEO cuts short returns the bytes it
// queued before it blocked; taking that as progress and blocking again for
// the full timeout ended a stalled plaintext source after 2-3x the bound.)
enum class SendPath { kCopy, kMsgZeroCopy, kUringZeroCopy };
class StalledPeerWrite : public ::testing::TestWithParam<SendPath> {};

TEST_P(StalledPeerWrite, EndsWithinTheIoTimeout) {
  SocketOptions o;
  o.zero_copy = GetParam() == SendPath::kCopy ? ZeroCopyMode::kOff : ZeroCopyMode::kAuto;
  if (GetParam() == SendPath::kUringZeroCopy) o.backend = SendBackend::kIoUring;
  auto p = ConnectedPair("127.0.0.1:0", o);  // the server end never reads
  constexpr auto kTimeout = 2000ms;
  p.client->set_io_timeout(kTimeout);
  Mapping m(64u << 20);  // far more than loopback's socket buffers hold
  FillPattern(m.data(), m.size(), 9);
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (int i = 0; i < 4; ++i) p.client->write_all(m.data(), m.size(), kWriteZeroCopy);
    ADD_FAILURE() << "256 MiB were written to a peer that reads nothing";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kTimeout) << e.what();
  }
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, kTimeout);
  EXPECT_LT(took, kTimeout * 3 / 2) << "a stalled write took "
                                    << std::chrono::duration<double>(took).count() << " s with a 2 s io timeout";
}

INSTANTIATE_TEST_SUITE_P(EverySendPath, StalledPeerWrite,
                         ::testing::Values(SendPath::kCopy, SendPath::kMsgZeroCopy, SendPath::kUringZeroCopy),
                         [](const auto& info) {
                           return info.param == SendPath::kCopy          ? "Copy"
                                  : info.param == SendPath::kMsgZeroCopy ? "MsgZeroCopy"
                                                                         : "UringZeroCopy";
                         });

TEST(SocketChannel, ReleasedMeansTheKernelNoLongerReadsTheBuffer) {
  auto p = ConnectedPair("127.0.0.1:0");
  // Stall the peer so the kernel really holds on to the zero-copy pages.
  Mapping filler(8u << 20);
  FillPattern(filler.data(), filler.size(), 5);
  std::vector<ZeroCopyIds> ids = FillUntilBlocked(*p.client, filler, 64 << 10);
  Mapping page(64 << 10);
  std::memset(page.data(), 'A', page.size());
  ASSERT_FALSE(ids.empty());
  std::atomic<bool> written{false};
  ZeroCopyIds last;
  std::thread writer([&] {
    last = p.client->write_all(page.data(), page.size(), kWriteZeroCopy);
    p.client->wait_released(last);
    // Only now may the page be reused: the peer must still see 'A'.
    std::memset(page.data(), 'B', page.size());
    written = true;
    p.client->shutdown(ShutdownHow::kWrite);
  });
  std::vector<uint8_t> buf(1 << 20);
  std::vector<uint8_t> tail;
  for (;;) {
    iovec v{buf.data(), buf.size()};
    ReadResult r = p.server->readv(std::span<const iovec>(&v, 1));
    if (r.eof()) break;
    tail.insert(tail.end(), buf.begin(), buf.begin() + r.bytes);
    if (tail.size() > (1u << 20)) tail.erase(tail.begin(), tail.end() - (1 << 20));
  }
  writer.join();
  ASSERT_TRUE(written.load());
  ASSERT_GE(tail.size(), page.size());
  for (size_t i = tail.size() - page.size(); i < tail.size(); ++i) {
    ASSERT_EQ(tail[i], 'A') << "byte " << i << " changed after release";
  }
}

TEST(SocketChannel, EnobufsRetriesOnceThenNamesTheLimits) {
  // Child process: RLIMIT_MEMLOCK 0 and no CAP_IPC_LOCK, so the kernel cannot
  // account the pinned pages and every zero-copy send fails with ENOBUFS.
  const std::string msg = testing::RunInChild([] {
    rlimit rl{0, 0};
    if (setrlimit(RLIMIT_MEMLOCK, &rl) != 0) throw Error(ErrorKind::kInternal, errno, "setrlimit");
    if (!testing::DropIpcLock()) throw Error(ErrorKind::kInternal, errno, "capset");
    auto p = ConnectedPair("127.0.0.1:0");
    std::vector<uint8_t> buf(256 << 10, 9);
    try {
      p.client->write_all(buf.data(), buf.size(), kWriteZeroCopy);
      return std::string("NO ERROR");
    } catch (const Error& e) {
      return std::to_string(e.code()) + "|" + std::string(ToString(e.kind())) + "|" + std::to_string(p.client->zero_copy_counters().enobufs_retries) +
             "|" + e.what();
    }
  });
  EXPECT_EQ(msg.substr(0, msg.find('|')), std::to_string(ENOBUFS)) << msg;
  EXPECT_NE(msg.find("|1|"), std::string::npos) << "expected exactly one retry: " << msg;
  EXPECT_NE(msg.find("ulimit -l"), std::string::npos) << msg;
  EXPECT_NE(msg.find("= 0 KiB"), std::string::npos) << msg;
  EXPECT_NE(msg.find("net.core.optmem_max = "), std::string::npos) << msg;
  EXPECT_NE(msg.find("|local-io|"), std::string::npos) << msg;
  EXPECT_NE(msg.find("turn zero copy off"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("--"), std::string::npos) << "the library names no CLI flag: " << msg;
}

TEST(SocketChannel, NonBlockingReadAndWriteReportWouldBlock) {
  SocketOptions nb;
  nb.blocking = false;
  auto p = ConnectedPair("127.0.0.1:0", nb, nb);
  uint8_t b[16];
  iovec v{b, sizeof(b)};
  EXPECT_TRUE(p.server->readv(std::span<const iovec>(&v, 1)).would_block);
  std::vector<uint8_t> big(1 << 20, 3);
  bool saw_block = false;
  for (int i = 0; i < 10000 && !saw_block; ++i) {
    iovec w{big.data(), big.size()};
    saw_block = p.client->writev(std::span<const iovec>(&w, 1), 0).would_block;
  }
  EXPECT_TRUE(saw_block);
}

TEST(SocketChannel, ConnectRefusedSaysIsTheDestinationListening) {
  uint16_t port;
  {
    Listener l = Listener::Listen("127.0.0.1:0");
    port = l.port();
  }
  try {
    SocketChannel::Connect("127.0.0.1:" + std::to_string(port), 2s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ECONNREFUSED);
    EXPECT_NE(std::string(e.what()).find("listening"), std::string::npos) << e.what();
  }
}

TEST(SocketChannel, AcceptTimesOut) {
  Listener l = Listener::Listen("127.0.0.1:0");
  try {
    l.AcceptFd(50ms);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ETIMEDOUT);
  }
}

TEST(SocketChannel, BadAddressesAreRejectedClearly) {
  EXPECT_THROW(Listener::Listen("nocolon"), Error);
  EXPECT_THROW(Listener::Listen("127.0.0.1:99999"), Error);
  EXPECT_THROW(Listener::Listen("[::1"), Error);
}

TEST(SocketChannel, TruncatedMessageIsAnErrorNotEof) {
  auto p = ConnectedPair("127.0.0.1:0");
  uint8_t b[100] = {};
  p.client->write_all(b, 40);
  p.client->shutdown(ShutdownHow::kWrite);
  try {
    p.server->read_all(b, sizeof(b));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("40 of 100"), std::string::npos) << e.what();
  }
  // A clean EOF before a message is not an error.
  auto q = ConnectedPair("127.0.0.1:0");
  q.client->shutdown(ShutdownHow::kWrite);
  EXPECT_FALSE(q.server->read_all(b, sizeof(b)));
}

TEST(SocketChannel, WriteToVanishedPeerSaysSo) {
  auto p = ConnectedPair("127.0.0.1:0");
  p.server->close();
  std::vector<uint8_t> buf(64 << 10, 1);
  try {
    for (int i = 0; i < 100; ++i) p.client->write_all(buf.data(), buf.size(), kWriteZeroCopy);
    FAIL() << "writes to a closed peer kept succeeding";
  } catch (const Error& e) {
    EXPECT_TRUE(e.code() == EPIPE || e.code() == ECONNRESET) << e.what();
    EXPECT_NE(std::string(e.what()).find("peer closed or reset"), std::string::npos);
  }
  // Completions for what was queued still arrive: nothing stays pinned.
  p.client->flush();
  EXPECT_EQ(p.client->zero_copy_counters().outstanding(), 0u);
}

// channel.h's shutdown rule on a plain socket: the end of stream that
// cannot reach the peer is an error; kRead, kBoth and close() never throw.
TEST(SocketChannel, ShutdownFollowsTheChannelRule) {
  auto p = ConnectedPair("127.0.0.1:0");
  ResetOnClose(p.server->fd());
  p.server->close();
  ASSERT_TRUE(WaitHangup(p.client->fd())) << "the reset never arrived";
  try {
    p.client->shutdown(ShutdownHow::kWrite);
    FAIL() << "the end of stream was reported sent to a peer that had reset the connection";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kPeer) << e.what();
  }
  EXPECT_NO_THROW(p.client->shutdown(ShutdownHow::kRead));
  EXPECT_NO_THROW(p.client->shutdown(ShutdownHow::kBoth));
  p.client->close();
  EXPECT_NO_THROW(p.client->shutdown(ShutdownHow::kRead));
  EXPECT_NO_THROW(p.client->shutdown(ShutdownHow::kBoth));
  EXPECT_NO_THROW(p.client->close());
  try {
    p.client->shutdown(ShutdownHow::kWrite);
    FAIL() << "kWrite on a closed channel";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal) << e.what();
  }
  // Idempotent once it has succeeded.
  auto q = ConnectedPair("127.0.0.1:0");
  q.client->shutdown(ShutdownHow::kWrite);
  EXPECT_NO_THROW(q.client->shutdown(ShutdownHow::kWrite));
}

}  // namespace
}  // namespace ktm

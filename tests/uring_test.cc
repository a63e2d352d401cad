// The io_uring send backend on real loopback sockets: the same guarantees as
// MSG_ZEROCOPY (integrity, accounting, release exactly once, never early),
// registered buffers, the fallback where a socket refuses SEND_ZC, and the
// locked-memory error for registration.
#include <gtest/gtest.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/resource.h>

#include <atomic>
#include <map>
#include <thread>

#include "channel/zero_copy_sender.h"
#include "tests/test_util.h"
#include "util/sha256.h"

namespace ktm {
namespace {

using testing::ConnectedPair;
using testing::DrainAndHash;
using testing::FillPattern;
using testing::Mapping;
using namespace std::chrono_literals;

SocketOptions Uring() {
  SocketOptions o;
  o.backend = SendBackend::kIoUring;
  return o;
}

// Small socket buffers on an io_uring pair, so a large write leaves
// requests in flight until the peer reads.
void ShrinkBuffers(testing::Pair& p) {
  ASSERT_EQ(p.client->backend(), SendBackend::kIoUring) << p.client->backend_reason();
  const int small = 64 << 10;
  ASSERT_EQ(setsockopt(p.client->fd(), SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
  ASSERT_EQ(setsockopt(p.server->fd(), SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)), 0);
}

void TransferAndCheck(bool registered, size_t size) {
  Mapping m(size);
  FillPattern(m.data(), size, registered ? 21 : 22);
  const Sha256::Digest want = Sha256::Of(m.data(), size);
  auto p = ConnectedPair("127.0.0.1:0", Uring());
  ASSERT_EQ(p.client->backend(), SendBackend::kIoUring) << p.client->backend_reason();
  if (registered) {
    ASSERT_TRUE(p.client->register_region(m.data(), size));
  }
  std::map<uint64_t, int> released;
  p.client->set_release_callback([&](uint64_t first, uint64_t last, bool) {
    for (uint64_t id = first; id <= last; ++id) ++released[id];
  });
  std::pair<uint64_t, Sha256::Digest> got;
  std::thread rx([&] { got = DrainAndHash(*p.server); });
  uint64_t writes = 0;
  for (size_t off = 0; off < size; off += 256 << 10) {
    // Two iovecs per write, like a packet: a small header-ish piece and pages.
    iovec v[2] = {{m.data() + off, 4096}, {m.data() + off + 4096, (256 << 10) - 4096}};
    p.client->writev_all(std::span<const iovec>(v, 2), kWriteZeroCopy);
    ++writes;
  }
  p.client->flush();
  p.client->shutdown(ShutdownHow::kWrite);
  rx.join();
  EXPECT_EQ(got.first, size);
  EXPECT_EQ(Sha256::Hex(got.second), Sha256::Hex(want));
  const ZeroCopyCounters& c = p.client->zero_copy_counters();
  EXPECT_GE(c.sends, writes);
  EXPECT_EQ(c.released, c.sends);
  EXPECT_EQ(c.zero_copied + c.copied, c.sends);
  // Loopback: IORING_NOTIF_USAGE_ZC_COPIED on every notification, as with
  // SO_EE_CODE_ZEROCOPY_COPIED for MSG_ZEROCOPY.
  EXPECT_EQ(c.copied, c.sends);
  ASSERT_EQ(released.size(), c.sends);
  for (auto& [id, n] : released) EXPECT_EQ(n, 1) << "id " << id;
  // Each 256 KiB write went out as a chain of linked requests.
  EXPECT_GT(p.client->stats().max_in_flight, 1u);
  if (registered) {
    EXPECT_GE(p.client->stats().fixed_sends, writes);  // the page part of each write
  } else {
    EXPECT_EQ(p.client->stats().fixed_sends, 0u);
  }
  std::printf("  io_uring%s: %llu sends, %llu released (%llu copied), %llu fixed-buffer sends\n",
              registered ? " + registered buffers" : "", (unsigned long long)c.sends,
              (unsigned long long)c.released, (unsigned long long)c.copied,
              (unsigned long long)p.client->stats().fixed_sends);
}

TEST(Uring, SendZc256MiBIntactWithExactAccounting) { TransferAndCheck(false, 256u << 20); }

TEST(Uring, RegisteredBuffers256MiBIntact) { TransferAndCheck(true, 256u << 20); }

TEST(Uring, FlushBlocksWhilePeerStalledAndReleasedMeansDone) {
  auto p = ConnectedPair("127.0.0.1:0", Uring());
  Mapping filler(8u << 20);
  FillPattern(filler.data(), filler.size(), 3);
  // Fill the path with non-blocking zero-copy writes until the kernel refuses.
  p.client->set_blocking(false);
  std::vector<ZeroCopyIds> ids;
  for (size_t off = 0;; off = (off + (64 << 10)) % (filler.size() - (64 << 10))) {
    iovec v{filler.data() + off, 64 << 10};
    WriteResult r = p.client->writev(std::span<const iovec>(&v, 1), kWriteZeroCopy);
    if (r.would_block) break;
    ids.push_back(r.zc);
  }
  p.client->set_blocking(true);
  ASSERT_GT(ids.size(), 2u);
  p.client->try_flush();
  int unsent = 0;
  ASSERT_EQ(ioctl(p.client->fd(), SIOCOUTQNSD, &unsent), 0);
  EXPECT_GT(unsent, 0);
  EXPECT_FALSE(p.client->is_released(ids.back()));
  // A page written now must reach the peer as written, though we overwrite
  // it the moment the channel says it is released.
  Mapping page(64 << 10);
  std::memset(page.data(), 'A', page.size());
  std::atomic<bool> done{false};
  std::thread writer([&] {
    ZeroCopyIds last = p.client->write_all(page.data(), page.size(), kWriteZeroCopy);
    p.client->flush();
    EXPECT_TRUE(p.client->is_released(last));
    std::memset(page.data(), 'B', page.size());
    done = true;
    p.client->shutdown(ShutdownHow::kWrite);
  });
  std::this_thread::sleep_for(300ms);
  EXPECT_FALSE(done.load()) << "flush returned while the peer was not reading";
  std::vector<uint8_t> buf(1 << 20), tail;
  for (;;) {
    iovec v{buf.data(), buf.size()};
    ReadResult r = p.server->readv(std::span<const iovec>(&v, 1));
    if (r.eof()) break;
    tail.insert(tail.end(), buf.begin(), buf.begin() + r.bytes);
    if (tail.size() > (2u << 20)) tail.erase(tail.begin(), tail.end() - (1 << 20));
  }
  writer.join();
  ASSERT_GE(tail.size(), page.size());
  for (size_t i = tail.size() - page.size(); i < tail.size(); ++i) ASSERT_EQ(tail[i], 'A') << i;
  const ZeroCopyCounters& c = p.client->zero_copy_counters();
  EXPECT_EQ(c.released, c.sends);
}

// A blocking write hands the kernel its bytes and returns without waiting
// for them to reach the socket: with the peer not reading, a 4 MiB write
// (far more than the socket buffers hold) still returns, its requests stay
// in the ring, and once the peer reads, the bytes arrive in order and every
// id is released exactly once. One send in flight at a time (the old
// behaviour) would block in the write until the peer read.
TEST(Uring, BlockingWriteReturnsWithSeveralSendsInFlight) {
  auto p = ConnectedPair("127.0.0.1:0", Uring());
  ASSERT_NO_FATAL_FAILURE(ShrinkBuffers(p));
  Mapping m(4u << 20);
  FillPattern(m.data(), m.size(), 41);
  const Sha256::Digest want = Sha256::Of(m.data(), m.size());
  std::map<uint64_t, int> released;
  p.client->set_release_callback([&](uint64_t first, uint64_t last, bool) {
    for (uint64_t id = first; id <= last; ++id) ++released[id];
  });
  // The first write waits for its result (a socket that refuses SEND_ZC
  // must be found out before any byte is reported sent).
  constexpr size_t kFirst = 16 << 10;  // above the zero-copy threshold
  p.client->write_all(m.data(), kFirst, kWriteZeroCopy);
  std::atomic<bool> returned{false};
  ZeroCopyIds ids;
  std::thread writer([&] {
    ids = p.client->write_all(m.data() + kFirst, m.size() - kFirst, kWriteZeroCopy);
    returned = true;
  });
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!returned && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(1ms);
  EXPECT_TRUE(returned.load()) << "the write waited for a peer that does not read";
  int queued = 0;
  ASSERT_EQ(ioctl(p.client->fd(), SIOCOUTQ, &queued), 0);
  EXPECT_LT(static_cast<size_t>(queued), m.size() - kFirst) << "the socket cannot hold the write: requests are in flight";
  EXPECT_GT(p.client->stats().max_in_flight, 1u);
  EXPECT_FALSE(p.client->is_released(ids));
  std::pair<uint64_t, Sha256::Digest> got;
  std::thread rx([&] { got = DrainAndHash(*p.server); });
  writer.join();
  p.client->flush();
  EXPECT_TRUE(p.client->is_released(ids));
  p.client->shutdown(ShutdownHow::kWrite);
  rx.join();
  EXPECT_EQ(got.first, m.size());
  EXPECT_EQ(Sha256::Hex(got.second), Sha256::Hex(want));
  const ZeroCopyCounters& c = p.client->zero_copy_counters();
  EXPECT_EQ(c.released, c.sends);
  ASSERT_EQ(released.size(), c.sends);
  for (auto& [id, n] : released) EXPECT_EQ(n, 1) << "id " << id;
  std::printf("  %llu sends, at most %llu in flight\n", (unsigned long long)c.sends,
              (unsigned long long)p.client->stats().max_in_flight);
}

// shutdown(kWrite) half-closes after the chain on the socket, also when
// the channel was switched to non-blocking while that chain still runs: a
// FIN queued before the chain's bytes would cut the stream short.
TEST(Uring, ShutdownWaitsForTheChainInFlightAlsoWhenNonBlocking) {
  auto p = ConnectedPair("127.0.0.1:0", Uring());
  ASSERT_NO_FATAL_FAILURE(ShrinkBuffers(p));
  Mapping m(8u << 20);
  FillPattern(m.data(), m.size(), 47);
  const Sha256::Digest want = Sha256::Of(m.data(), m.size());
  constexpr size_t kFirst = 16 << 10;  // the first send waits for its result
  p.client->write_all(m.data(), kFirst, kWriteZeroCopy);
  // Returns with the rest still in flight: the peer does not read yet.
  p.client->write_all(m.data() + kFirst, m.size() - kFirst, kWriteZeroCopy);
  int queued = 0;
  ASSERT_EQ(ioctl(p.client->fd(), SIOCOUTQ, &queued), 0);
  ASSERT_LT(static_cast<size_t>(queued), m.size() - kFirst) << "nothing in flight: the test proves nothing";
  p.client->set_blocking(false);
  std::pair<uint64_t, Sha256::Digest> got;
  std::thread rx([&] { got = DrainAndHash(*p.server); });
  p.client->shutdown(ShutdownHow::kWrite);
  rx.join();
  EXPECT_EQ(got.first, m.size()) << "the end of stream overtook bytes still in flight";
  EXPECT_EQ(Sha256::Hex(got.second), Sha256::Hex(want));
}

// Zero-copy chains still running and plain sends (writes below the
// threshold) on one socket: the plain bytes must not overtake the chain's.
TEST(Uring, PlainWritesNeverOvertakeSendsInFlight) {
  auto p = ConnectedPair("127.0.0.1:0", Uring());
  ASSERT_EQ(p.client->backend(), SendBackend::kIoUring) << p.client->backend_reason();
  Mapping m(64u << 20);
  FillPattern(m.data(), m.size(), 43);
  std::pair<uint64_t, Sha256::Digest> got;
  std::thread rx([&] { got = DrainAndHash(*p.server); });
  Sha256 want;
  uint64_t total = 0;
  uint8_t small[100];
  for (size_t off = 0, i = 0; off + (1 << 20) <= m.size(); off += 1 << 20, ++i) {
    p.client->write_all(m.data() + off, 1 << 20, kWriteZeroCopy);  // a chain of requests
    want.Update(m.data() + off, 1 << 20);
    std::memset(small, static_cast<int>(i), sizeof(small));
    p.client->write_all(small, sizeof(small), kWriteZeroCopy);  // below the threshold: plain send
    want.Update(small, sizeof(small));
    total += (1 << 20) + sizeof(small);
  }
  p.client->flush();
  p.client->shutdown(ShutdownHow::kWrite);
  rx.join();
  EXPECT_EQ(got.first, total);
  EXPECT_EQ(Sha256::Hex(got.second), Sha256::Hex(want.Final()));
  EXPECT_GT(p.client->stats().max_in_flight, 1u);
  EXPECT_GT(p.client->zero_copy_counters().below_threshold, 0u);
}

// Notifications out of order: a request the full socket refused (EAGAIN,
// nothing pinned) is released while the write before it still has bytes
// pinned in the send queue; each id is released once, at its own time.
TEST(Uring, OutOfOrderNotificationsReleaseEachIdOnceAtItsTime) {
  auto p = ConnectedPair("127.0.0.1:0", Uring());
  ASSERT_EQ(p.client->backend(), SendBackend::kIoUring) << p.client->backend_reason();
  std::map<uint64_t, int> released;
  std::vector<uint64_t> order;
  p.client->set_release_callback([&](uint64_t first, uint64_t last, bool) {
    for (uint64_t id = first; id <= last; ++id) {
      ++released[id];
      order.push_back(id);
    }
  });
  Mapping m(8u << 20);
  FillPattern(m.data(), m.size(), 47);
  p.client->set_blocking(false);
  uint64_t last_accepted = 0;
  ZeroCopyIds refused;
  for (size_t off = 0;; off = (off + (64 << 10)) % (m.size() - (64 << 10))) {
    iovec v{m.data() + off, 64 << 10};
    WriteResult r = p.client->writev(std::span<const iovec>(&v, 1), kWriteZeroCopy);
    if (r.would_block) {
      refused = r.zc;
      break;
    }
    last_accepted = r.zc.end - 1;
  }
  p.client->set_blocking(true);
  ASSERT_EQ(refused.end - refused.first, 1u);
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!p.client->is_released(refused) && std::chrono::steady_clock::now() < deadline) {
    p.client->try_flush();
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_TRUE(p.client->is_released(refused));
  EXPECT_FALSE(p.client->is_released(ZeroCopyIds{last_accepted, last_accepted + 1}));
  std::thread rx([&] { DrainAndHash(*p.server); });
  p.client->flush();
  p.client->shutdown(ShutdownHow::kWrite);
  rx.join();
  const ZeroCopyCounters& c = p.client->zero_copy_counters();
  EXPECT_EQ(c.released, c.sends);
  for (auto& [id, n] : released) EXPECT_EQ(n, 1) << "id " << id;
  // The refused id was released before the accepted write ahead of it.
  const auto pos = [&](uint64_t id) { return std::find(order.begin(), order.end(), id) - order.begin(); };
  EXPECT_LT(pos(refused.first), pos(last_accepted));
}

TEST(Uring, UnixSocketRefusesSendZcAndFallsBackWithReason) {
  std::string path = "/tmp/ktm-uring-" + std::to_string(getpid()) + ".sock";
  auto p = ConnectedPair("unix:" + path, Uring());
  std::vector<uint8_t> data(1 << 20);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 13);
  std::thread w([&] {
    p.client->write_all(data.data(), data.size(), kWriteZeroCopy);
    p.client->flush();
    p.client->shutdown(ShutdownHow::kWrite);
  });
  std::vector<uint8_t> in(data.size());
  ASSERT_TRUE(p.server->read_all(in.data(), in.size()));
  w.join();
  EXPECT_EQ(in, data);
  EXPECT_EQ(p.client->backend(), SendBackend::kSendmsg);
  EXPECT_NE(p.client->backend_reason().find("EOPNOTSUPP"), std::string::npos) << p.client->backend_reason();
  EXPECT_NE(p.client->describe().find("plain send"), std::string::npos) << p.client->describe();
  EXPECT_EQ(p.client->zero_copy_counters().outstanding(), 0u);
  unlink(path.c_str());
}

TEST(Uring, ProbeAcceptsPlainTcpAndRefusesUnix) {
  auto tcp = ConnectedPair("127.0.0.1:0");
  EXPECT_FALSE(ProbeSendZc(tcp.client->fd()).has_value());
  // Nothing was sent by the probe.
  tcp.client->shutdown(ShutdownHow::kWrite);
  uint8_t b;
  EXPECT_FALSE(tcp.server->read_all(&b, 1));
  std::string path = "/tmp/ktm-uring-probe-" + std::to_string(getpid()) + ".sock";
  auto unix_pair = ConnectedPair("unix:" + path);
  std::optional<std::string> why = ProbeSendZc(unix_pair.client->fd());
  ASSERT_TRUE(why.has_value());
  EXPECT_NE(why->find("EOPNOTSUPP"), std::string::npos);
  unlink(path.c_str());
}

TEST(Uring, WriteToVanishedPeerSaysSoAndNothingStaysPinned) {
  auto p = ConnectedPair("127.0.0.1:0", Uring());
  p.server->close();
  std::vector<uint8_t> buf(64 << 10, 1);
  try {
    for (int i = 0; i < 200; ++i) p.client->write_all(buf.data(), buf.size(), kWriteZeroCopy);
    FAIL() << "writes to a closed peer kept succeeding";
  } catch (const Error& e) {
    EXPECT_TRUE(e.code() == EPIPE || e.code() == ECONNRESET) << e.what();
  }
  p.client->flush();
  EXPECT_EQ(p.client->zero_copy_counters().outstanding(), 0u);
}

TEST(Uring, RegistrationBeyondMemlockNamesTheLimit) {
  const std::string msg = testing::RunInChild([] {
    rlimit rl{64 << 10, 64 << 10};
    setrlimit(RLIMIT_MEMLOCK, &rl);
    testing::DropIpcLock();
    auto p = ConnectedPair("127.0.0.1:0", Uring());
    Mapping m(16u << 20);
    try {
      p.client->register_region(m.data(), m.size());
      return std::string("NO ERROR");
    } catch (const Error& e) {
      return std::string(e.what());
    }
  });
  EXPECT_NE(msg.find("ulimit -l"), std::string::npos) << msg;
  EXPECT_NE(msg.find("64 KiB"), std::string::npos) << msg;
  EXPECT_NE(msg.find("sendmsg backend"), std::string::npos) << msg;
}

}  // namespace
}  // namespace ktm

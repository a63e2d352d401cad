// The channel workers' contract (transport/channel_worker.h): order within
// a worker, urgent first, shutdown with pending work, error propagation
// (the first failure is the one reported, the others are stopped, nothing
// waits forever). Waits for events (futures, latches), never for a time.
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/unique_fd.h"
#include "channel/socket_channel.h"
#include "transport/channel_worker.h"

namespace ktm {
namespace {

// Holds a worker inside an item until released, so the test knows what
// is queued behind it.
class Gate {
 public:
  WorkItem Item() {
    return [this] {
      entered_.set_value();
      open_.wait();
    };
  }
  void WaitEntered() { entered_.get_future().wait(); }
  void Open() { release_.set_value(); }

 private:
  std::promise<void> entered_, release_;
  std::shared_future<void> open_ = release_.get_future().share();
};

TEST(WorkQueue, FifoWithinALaneUrgentFirst) {
  WorkQueue q(4);
  std::vector<std::string> ran;
  ASSERT_TRUE(q.Push([&] { ran.push_back("n1"); }, Lane::kNormal));
  ASSERT_TRUE(q.Push([&] { ran.push_back("n2"); }, Lane::kNormal));
  ASSERT_TRUE(q.Push([&] { ran.push_back("u1"); }, Lane::kUrgent));
  ASSERT_TRUE(q.Push([&] { ran.push_back("u2"); }, Lane::kUrgent));
  q.Close();
  EXPECT_FALSE(q.Push([] {}, Lane::kNormal));  // closed: refused
  WorkItem item;
  while (q.Pop(item)) item();
  EXPECT_EQ(ran, (std::vector<std::string>{"u1", "u2", "n1", "n2"}));
}

TEST(WorkQueue, FullLaneBlocksUntilPopOrAbort) {
  WorkQueue q(1);
  ASSERT_TRUE(q.Push([] {}, Lane::kNormal));
  ASSERT_TRUE(q.Push([] {}, Lane::kUrgent));  // lanes are bounded apart
  auto blocked = std::async(std::launch::async, [&] { return q.Push([] {}, Lane::kNormal); });
  WorkItem item;
  ASSERT_TRUE(q.Pop(item));  // the urgent one: the normal lane is still full
  ASSERT_TRUE(q.Pop(item));  // now there is room
  EXPECT_TRUE(blocked.get());
  auto refused = std::async(std::launch::async, [&] { return q.Push([] {}, Lane::kNormal); });
  EXPECT_EQ(q.Abort(), 1u);  // the pushed one is dropped, the waiter wakes
  EXPECT_FALSE(refused.get());
  EXPECT_FALSE(q.Pop(item));
}

TEST(ChannelWorkers, OrderPerWorkerAndUrgentOvertakesQueuedWork) {
  Gate gate;
  ChannelWorkers w(2, 8);
  std::mutex mu;
  std::vector<int> ran;
  auto log = [&](int v) {
    return [&, v] {
      std::lock_guard<std::mutex> l(mu);
      ran.push_back(v);
    };
  };
  ASSERT_TRUE(w.Post(0, gate.Item()));
  gate.WaitEntered();  // worker 0 is busy: what follows is queued
  for (int i = 1; i <= 3; ++i) ASSERT_TRUE(w.Post(0, log(i)));
  ASSERT_TRUE(w.Post(0, log(100), Lane::kUrgent));
  gate.Open();
  EXPECT_TRUE(w.WaitIdle());
  EXPECT_EQ(ran, (std::vector<int>{100, 1, 2, 3}));
  w.ThrowIfFailed();  // nothing failed
}

TEST(ChannelWorkers, StopRunsPendingWorkDestructorDropsIt) {
  std::atomic<int> ran{0};
  {
    Gate gate;  // outlives the workers: it is joined inside an item
    ChannelWorkers w(1, 8);
    ASSERT_TRUE(w.Post(0, gate.Item()));
    gate.WaitEntered();
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(w.Post(0, [&] { ++ran; }));
    gate.Open();
    w.Stop();  // graceful: the queued five still run
    EXPECT_EQ(ran.load(), 5);
    EXPECT_FALSE(w.Post(0, [&] { ++ran; }));  // stopped: refused
    EXPECT_TRUE(w.WaitIdle());                // and not counted
  }
  std::future<void> dropped;
  {
    Gate gate;  // outlives the workers: it is joined inside an item
    ChannelWorkers w(1, 8);
    ASSERT_TRUE(w.Post(0, gate.Item()));
    gate.WaitEntered();
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(w.Post(0, [&] { ++ran; }));
    dropped = w.Call(0, [] {});
    gate.Open();  // the destructor may see the queue before or after the gate
  }
  EXPECT_LE(ran.load(), 10);  // destroyed: joined, pending work dropped or run, none pending
  try {
    dropped.get();  // ran, or broken: never a hang
  } catch (const std::future_error& e) {
    EXPECT_EQ(e.code(), std::future_errc::broken_promise);
  }
}

TEST(ChannelWorkers, FailureStopsTheOthersAndTheFirstIsReported) {
  std::promise<void> unblock;  // what the hook's "channel shutdown" releases
  std::shared_future<void> unblocked = unblock.get_future().share();
  std::atomic<int> hooks{0};
  std::once_flag once;
  std::atomic<int> ran_after{0};
  Gate g1, g2;
  ChannelWorkers w(3, 4, [&](const std::exception& e, size_t worker, FirstFailure& first) {
    ++hooks;
    first.Record(e, [&] { std::call_once(once, [&] { unblock.set_value(); }); });
    EXPECT_LT(worker, 3u);
  });
  // Worker 1 and 2 are stuck in "I/O" until the failure unblocks them;
  // they then fail in consequence.
  for (size_t c : {1u, 2u}) {
    Gate& g = c == 1 ? g1 : g2;
    ASSERT_TRUE(w.Post(c, [&g, unblocked, c] {
      g.Item()();
      unblocked.wait();
      throw Error(ErrorKind::kPeer, EPIPE, "channel " + std::to_string(c) + " reset");
    }));
    ASSERT_TRUE(w.Post(c, [&] { ++ran_after; }));  // dropped by the failure
  }
  g1.WaitEntered();
  g2.WaitEntered();
  g1.Open();
  g2.Open();
  ASSERT_TRUE(w.Post(0, [] { throw Error(ErrorKind::kIntegrity, EIO, "the first failure"); }));
  w.Post(0, [&] { ++ran_after; });  // refused or dropped: worker 0 may have failed already
  EXPECT_FALSE(w.WaitIdle());  // returns: nothing waits forever
  EXPECT_EQ(ran_after.load(), 0);
  EXPECT_GE(hooks.load(), 1);
  EXPECT_FALSE(w.Post(0, [] {}));  // failed: refused
  try {
    w.ThrowIfFailed();
    FAIL() << "no failure reported";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kIntegrity);
    EXPECT_NE(std::string(e.what()).find("the first failure"), std::string::npos);
  }
}

TEST(ChannelWorkers, NonLibraryExceptionsAreInternalAndCallKeepsItsError) {
  ChannelWorkers w(1, 2);
  auto f = w.Call(0, [] { throw Error(ErrorKind::kPeer, EPIPE, "to the caller"); });
  EXPECT_THROW(f.get(), Error);
  EXPECT_TRUE(w.WaitIdle());  // a Call's error does not fail the group
  ASSERT_TRUE(w.Post(0, [] { throw std::runtime_error("plain"); }));
  EXPECT_FALSE(w.WaitIdle());
  try {
    w.ThrowIfFailed();
    FAIL() << "no failure reported";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kInternal);
  }
}


// WritePacket's layout over a real socket pair: the writes it makes (what
// a kTLS socket turns into record boundaries) and the bytes that arrive.
class RecordingChannel : public SocketChannel {
 public:
  RecordingChannel(UniqueFd fd, bool record_writes)
      : SocketChannel(std::move(fd), NoZeroCopy()), record_writes_(record_writes) {}
  unsigned features() const override {
    return SocketChannel::features() | (record_writes_ ? unsigned{kFeatureRecordWrites} : 0u);
  }
  WriteResult writev(std::span<const iovec> iov, unsigned flags) override {
    WriteResult r = SocketChannel::writev(iov, flags);
    writes.push_back({r.bytes, flags});
    return r;
  }
  static SocketOptions NoZeroCopy() {
    SocketOptions o;
    o.zero_copy = ZeroCopyMode::kOff;
    return o;
  }
  std::vector<std::pair<size_t, unsigned>> writes;  // bytes taken, flags

 private:
  const bool record_writes_;
};

// Sends a 552-byte header and 16 scattered pages; returns the writes made
// and checks the bytes that arrived.
std::vector<std::pair<size_t, unsigned>> SendOnePacket(bool record_writes) {
  int sv[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
  RecordingChannel tx(UniqueFd(sv[0]), record_writes);
  SocketChannel rx(UniqueFd(sv[1]), RecordingChannel::NoZeroCopy());
  std::vector<uint8_t> head(552, 0xab), image(32 * 4096);
  for (size_t i = 0; i < image.size(); ++i) image[i] = static_cast<uint8_t>(i * 31 + 1);
  std::vector<iovec> iov{{head.data(), head.size()}};
  std::vector<uint8_t> want(head);
  for (size_t k = 0; k < 16; ++k) {
    iov.push_back({image.data() + 2 * k * 4096, 4096});
    want.insert(want.end(), image.begin() + 2 * k * 4096, image.begin() + (2 * k + 1) * 4096);
  }
  std::vector<uint8_t> got(want.size());
  auto reader = std::async(std::launch::async, [&] { return rx.read_all(got.data(), got.size()); });
  WritePacket(tx, iov);
  EXPECT_TRUE(reader.get());
  EXPECT_EQ(got, want);
  return tx.writes;
}

TEST(WritePacket, RecordWritesChannelGetsTheHeaderAndTheRunInSeparateWrites) {
  const auto w = SendOnePacket(/*record_writes=*/true);
  ASSERT_GE(w.size(), 2u);
  EXPECT_EQ(w[0].first, 552u);  // the header alone: its own kTLS record
  EXPECT_EQ(w[0].second, 0u);
  size_t run = 0;
  for (size_t i = 1; i < w.size(); ++i) {
    run += w[i].first;
    EXPECT_EQ(w[i].second, kWriteZeroCopy);
  }
  EXPECT_EQ(run, 16u * 4096);  // the run from its first byte: records fall on it
}

TEST(WritePacket, OtherChannelsGetOneWriteAsBefore) {
  const auto w = SendOnePacket(/*record_writes=*/false);
  ASSERT_GE(w.size(), 1u);
  EXPECT_GT(w[0].first, 552u);  // header and pages together
  size_t all = 0;
  for (const auto& x : w) all += x.first;
  EXPECT_EQ(all, 552u + 16u * 4096);
}

}  // namespace
}  // namespace ktm

// Persistent per-channel worker threads, each fed by a small bounded queue,
// as QEMU's multifd keeps one thread per channel for the whole migration
// instead of starting threads for every iteration. Private to transport/
// (a header only so tests/channel_worker_test.cc can reach it).
//
// Contract
// - Items: a WorkItem is moved into the queue by Post/Call and owned by it
//   until the worker has run it (or it is dropped); the worker destroys it
//   before it counts as finished. An item may capture references to data
//   the caller keeps alive until WaitIdle() (or Call's future) returns.
// - Order: per worker, urgent items run before normal ones; within a lane,
//   FIFO. Items of different workers are not ordered: the caller orders
//   them with WaitIdle() (the sync barrier of an iteration).
// - Blocking: Post blocks while the lane is full (backpressure), and
//   returns false without blocking further once the workers have failed or
//   stopped. WaitIdle blocks until every item posted so far has run or been
//   dropped. Nothing waits forever as long as a running item ends: a
//   failure hook must unblock the I/O the other items may be stuck in
//   (the source shuts its channels down).
// - Errors: an exception escaping an item fails the whole group: every
//   queue is aborted (pending items are dropped, unrun; Post refuses more),
//   then the failure hook runs on the failing worker's thread with the
//   group's FirstFailure. Items already running are not interrupted; those
//   that fail in consequence call the hook too, and FirstFailure keeps the
//   first. ThrowIfFailed() throws it on the caller's thread.
// - Call: runs a function on a worker and hands its result (or exception)
//   to the caller through a future instead of failing the group; if it is
//   dropped, the future throws std::future_error (broken_promise).
// - Shutdown: Stop() closes the queues, lets the pending items run, and
//   joins. The destructor aborts (drops pending items) and joins.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/uio.h>

#include <span>

#include "channel/channel.h"
#include "transport/first_failure.h"

namespace ktm {

using WorkItem = std::function<void()>;

// Urgent: requests that must overtake bulk work already queued on the
// channel (postcopy page requests, a resumed migration's recovery).
enum class Lane { kNormal = 0, kUrgent = 1 };

// A bounded two-lane FIFO: the urgent lane is served first. Thread-safe.
class WorkQueue {
 public:
  explicit WorkQueue(size_t capacity_per_lane);

  // Moves `item` in; blocks while `lane` is full. Returns false (`item`
  // is destroyed unrun) once the queue is closed or aborted.
  bool Push(WorkItem item, Lane lane);
  // Blocks for the next item (urgent first) and returns true; returns
  // false once the queue is aborted, or closed and empty.
  bool Pop(WorkItem& out);
  // Refuses new items; the queued ones are still handed out.
  void Close();
  // Refuses new items and drops the queued ones (destroyed outside the
  // lock); returns how many were dropped.
  size_t Abort();

 private:
  std::mutex mu_;
  std::condition_variable readable_, writable_;
  std::deque<WorkItem> lanes_[2];
  const size_t capacity_;
  bool closed_ = false, aborted_ = false;
};

// One worker thread and one queue per channel, for the group's lifetime.
class ChannelWorkers {
 public:
  // Runs on the failing worker's thread after every queue was aborted. It
  // records the error (or the one it stands for) in `first` and unblocks
  // whatever the other running items may wait on. Must not throw. The
  // default records `e` as is.
  using FailureHook = std::function<void(const std::exception& e, size_t worker, FirstFailure& first)>;

  ChannelWorkers(size_t workers, size_t queue_capacity, FailureHook hook = {});
  ~ChannelWorkers();
  ChannelWorkers(const ChannelWorkers&) = delete;
  ChannelWorkers& operator=(const ChannelWorkers&) = delete;

  // Queues `item` for `worker`. False: the group has failed or stopped,
  // and the item was dropped.
  bool Post(size_t worker, WorkItem item, Lane lane = Lane::kNormal);
  // Runs `fn` on `worker`; its exception goes to the future, not the hook.
  std::future<void> Call(size_t worker, std::function<void()> fn, Lane lane = Lane::kNormal);
  // The barrier: waits until every item posted so far has finished or
  // been dropped. Returns false if an item has failed.
  bool WaitIdle();
  // Throws the first failure recorded, if any. Call after WaitIdle().
  void ThrowIfFailed() { first_.ThrowIfFailed(); }
  // Lets the pending items run, then ends the threads. Idempotent.
  void Stop();

  size_t size() const { return queues_.size(); }

 private:
  void Loop(size_t worker);
  void Fail(const std::exception& e, size_t worker);
  void Finished(size_t n);
  void Join();

  std::vector<std::unique_ptr<WorkQueue>> queues_;
  FailureHook hook_;
  FirstFailure first_;
  std::mutex mu_;
  std::condition_variable idle_;
  size_t outstanding_ = 0;  // posted, not yet finished or dropped
  bool failed_ = false;
  std::vector<std::thread> threads_;  // last: started once the rest is ready
};

// Writes one packet: iov[0] its header (and offsets), the rest its page
// run. On a channel with kFeatureRecordWrites (kTLS) the header goes in a
// write of its own and the run in a second one, so the run travels in
// whole 16 KiB records of its own, which the destination, reading the
// header and then the run into the image (receive_channel.cc), has the
// kernel decrypt in place. Elsewhere in one writev: userspace TLS corks it
// into full records anyway, and a plain socket saves a syscall. The header
// is written without kWriteZeroCopy (kTLS has no zero-copy ids), the run
// with it. Returns the zero-copy ids of the writes.
ZeroCopyIds WritePacket(Channel& ch, std::span<const iovec> iov);

}  // namespace ktm

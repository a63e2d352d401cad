#include "transport/channel_worker.h"

#include <stdexcept>
#include <utility>

namespace ktm {

WorkQueue::WorkQueue(size_t capacity_per_lane) : capacity_(capacity_per_lane ? capacity_per_lane : 1) {}

bool WorkQueue::Push(WorkItem item, Lane lane) {
  auto& q = lanes_[static_cast<int>(lane)];
  {
    std::unique_lock<std::mutex> l(mu_);
    writable_.wait(l, [&] { return closed_ || aborted_ || q.size() < capacity_; });
    if (!closed_ && !aborted_) {
      q.push_back(std::move(item));
      readable_.notify_one();
      return true;
    }
  }
  return false;  // `item` dies here, outside the lock
}

bool WorkQueue::Pop(WorkItem& out) {
  std::unique_lock<std::mutex> l(mu_);
  auto& urgent = lanes_[static_cast<int>(Lane::kUrgent)];
  auto& normal = lanes_[static_cast<int>(Lane::kNormal)];
  readable_.wait(l, [&] { return aborted_ || !urgent.empty() || !normal.empty() || closed_; });
  if (aborted_) return false;
  auto& q = !urgent.empty() ? urgent : normal;
  if (q.empty()) return false;  // closed and drained
  out = std::move(q.front());
  q.pop_front();
  writable_.notify_all();  // the waiter may be on either lane
  return true;
}

void WorkQueue::Close() {
  std::lock_guard<std::mutex> l(mu_);
  closed_ = true;
  readable_.notify_all();
  writable_.notify_all();
}

size_t WorkQueue::Abort() {
  std::deque<WorkItem> dropped[2];
  {
    std::lock_guard<std::mutex> l(mu_);
    aborted_ = true;
    dropped[0].swap(lanes_[0]);
    dropped[1].swap(lanes_[1]);
    readable_.notify_all();
    writable_.notify_all();
  }
  // Destroyed here: an item's captures (a Call's promise) may run code.
  return dropped[0].size() + dropped[1].size();
}

ChannelWorkers::ChannelWorkers(size_t workers, size_t queue_capacity, FailureHook hook) : hook_(std::move(hook)) {
  for (size_t w = 0; w < workers; ++w) queues_.push_back(std::make_unique<WorkQueue>(queue_capacity));
  try {
    for (size_t w = 0; w < workers; ++w) threads_.emplace_back([this, w] { Loop(w); });
  } catch (...) {
    for (auto& q : queues_) q->Abort();
    Join();
    throw;
  }
}

ChannelWorkers::~ChannelWorkers() {
  for (auto& q : queues_) q->Abort();
  Join();
}

bool ChannelWorkers::Post(size_t worker, WorkItem item, Lane lane) {
  {
    std::lock_guard<std::mutex> l(mu_);
    ++outstanding_;
  }
  // Counted before it is queued, so a concurrent failure's Abort (which
  // uncounts what it drops) cannot make the count go below zero.
  if (queues_.at(worker)->Push(std::move(item), lane)) return true;
  Finished(1);
  return false;
}

std::future<void> ChannelWorkers::Call(size_t worker, std::function<void()> fn, Lane lane) {
  auto task = std::make_shared<std::packaged_task<void()>>(std::move(fn));
  std::future<void> f = task->get_future();
  Post(worker, [task] { (*task)(); }, lane);  // dropped: the promise breaks
  return f;
}

bool ChannelWorkers::WaitIdle() {
  std::unique_lock<std::mutex> l(mu_);
  idle_.wait(l, [&] { return outstanding_ == 0; });
  return !failed_;
}

void ChannelWorkers::Stop() {
  for (auto& q : queues_) q->Close();
  Join();
}

void ChannelWorkers::Join() {
  for (auto& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void ChannelWorkers::Loop(size_t worker) {
  WorkItem item;
  while (queues_[worker]->Pop(item)) {
    try {
      item();
    } catch (const std::exception& e) {
      Fail(e, worker);
    } catch (...) {
      Fail(std::runtime_error("a channel worker's item threw a non-standard exception"), worker);
    }
    item = nullptr;  // its captures go before it counts as finished
    Finished(1);
  }
}

void ChannelWorkers::Fail(const std::exception& e, size_t worker) {
  {
    std::lock_guard<std::mutex> l(mu_);
    failed_ = true;
  }
  // The failing item is still outstanding, so WaitIdle cannot return
  // before the hook below has recorded the failure.
  size_t dropped = 0;
  for (auto& q : queues_) dropped += q->Abort();
  Finished(dropped);
  if (hook_) {
    hook_(e, worker, first_);
  } else {
    first_.Record(e, nullptr);
  }
}

void ChannelWorkers::Finished(size_t n) {
  if (n == 0) return;
  std::lock_guard<std::mutex> l(mu_);
  outstanding_ -= n;
  if (outstanding_ == 0) idle_.notify_all();
}

ZeroCopyIds WritePacket(Channel& ch, std::span<const iovec> iov) {
  if (!ch.has_feature(kFeatureRecordWrites) || iov.size() < 2) return ch.writev_all(iov, kWriteZeroCopy);
  ch.writev_all(iov.first(1), 0);
  return ch.writev_all(iov.subspan(1), kWriteZeroCopy);
}

}  // namespace ktm

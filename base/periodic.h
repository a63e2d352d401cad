// A thread that calls a function at a fixed interval until it is destroyed.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

namespace ktm {

// Calls `fn` every `interval` (first call one interval after construction)
// on its own thread. The destructor stops it promptly (it does not wait out
// the interval) and joins, so `fn` never runs after the object is gone; a
// call in progress finishes first.
class PeriodicThread {
 public:
  PeriodicThread(std::chrono::milliseconds interval, std::function<void()> fn)
      : thread_([this, interval, fn = std::move(fn)] {
          std::unique_lock<std::mutex> l(mu_);
          while (!cv_.wait_for(l, interval, [&] { return stop_; })) {
            l.unlock();
            fn();
            l.lock();
          }
        }) {}
  ~PeriodicThread() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  PeriodicThread(const PeriodicThread&) = delete;
  PeriodicThread& operator=(const PeriodicThread&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;  // last: starts after the members it uses exist
};

}  // namespace ktm

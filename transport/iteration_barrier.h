// The destination's iteration barrier: every channel's receiver waits here
// after SYNC(i) until all channels have sent SYNC(i). Abortable, so one
// failing channel releases the others. Private to transport/.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace ktm {

class IterationBarrier {
 public:
  explicit IterationBarrier(size_t n) : n_(n) {}

  // Returns false if the migration was aborted. Throws Error(kIntegrity) if
  // the channels disagree about whether this iteration is the final one.
  // Thread safe.
  bool ArriveAndWait(bool final);

  // Releases every waiter (and every later arrival) with false.
  void Abort();

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const size_t n_;
  size_t arrived_ = 0;
  uint64_t generation_ = 0;
  bool final_ = false;
  bool aborted_ = false;
};

}  // namespace ktm

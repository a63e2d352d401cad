#include "transport/iteration_barrier.h"

#include <cerrno>

#include "base/error.h"

namespace ktm {

bool IterationBarrier::ArriveAndWait(bool final) {
  std::unique_lock<std::mutex> l(mu_);
  if (aborted_) return false;
  const uint64_t gen = generation_;
  if (arrived_ == 0) final_ = final;
  if (final != final_) throw Error(ErrorKind::kIntegrity, EBADMSG, "invalid packet: channels disagree about the final iteration");
  if (++arrived_ == n_) {
    arrived_ = 0;
    ++generation_;
    cv_.notify_all();
    return true;
  }
  cv_.wait(l, [&] { return generation_ != gen || aborted_; });
  return !aborted_ || generation_ != gen;
}

void IterationBarrier::Abort() {
  std::lock_guard<std::mutex> l(mu_);
  aborted_ = true;
  cv_.notify_all();
}

}  // namespace ktm

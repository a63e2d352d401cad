// The first failure among a migration's worker threads: the one the user is
// told about. Later failures (usually consequences: other channels shut down
// to unblock them) are dropped. Private to transport/.
#pragma once

#include <exception>
#include <functional>
#include <mutex>
#include <optional>

#include "base/error.h"

namespace ktm {

class FirstFailure {
 public:
  // Called from a worker's catch block. The first caller's error is kept
  // (non-library exceptions become kInternal) and `on_first` runs once,
  // under the lock, to unblock the other workers.
  void Record(const std::exception& e, const std::function<void()>& on_first) {
    std::lock_guard<std::mutex> l(mu_);
    if (error_) return;
    const auto* ke = dynamic_cast<const Error*>(&e);
    error_ = ke ? *ke : Error(ErrorKind::kInternal, EIO, e.what());
    if (on_first) on_first();
  }

  // Throws the first failure, if any. Call after joining the workers.
  void ThrowIfFailed() {
    std::lock_guard<std::mutex> l(mu_);
    if (error_) throw *error_;
  }

 private:
  std::mutex mu_;
  std::optional<Error> error_;
};

}  // namespace ktm

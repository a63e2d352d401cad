// Error type shared by every layer: an errno (0 when none applies) plus a
// sentence a user can act on. Thrown by blocking operations; see channel.h
// for which calls throw and which report "would block" instead.
#pragma once

#include <stdexcept>
#include <string>

namespace ktm {

class Error : public std::runtime_error {
 public:
  // `what` should say what failed and, where possible, what to do about it.
  Error(int err, const std::string& what);
  explicit Error(const std::string& what) : Error(0, what) {}

  // The errno behind the failure, or 0 for protocol/validation errors.
  int code() const noexcept { return code_; }

 private:
  int code_;
};

// Builds "<what>: <strerror(err)>" for the common syscall-failed case.
[[noreturn]] void ThrowErrno(int err, const std::string& what);

}  // namespace ktm

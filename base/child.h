// Running a function in a forked child and collecting what it reports.
//
// Used where something must happen in another process: the loopback
// destination of `demo`/`bench` (so each side's CPU time and peak RSS are
// its own), and tests that change rlimits or capabilities that must not leak
// into the test process. The child's function returns an exit status and a
// string; the string comes back through a pipe.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <functional>
#include <string>
#include <utility>

namespace ktm {

struct ChildResult {
  int exit_code = -1;    // the function's status, or -1 if the child died of a signal
  int term_signal = 0;   // the signal that ended it, if any
  std::string output;    // what the function returned
  rusage usage{};        // the child's resource usage (CPU, peak RSS)
};

class ChildProcess {
 public:
  // Forks; the child runs `fn` and exits with its status. An exception in the
  // child becomes status 1 and "EXCEPTION <what>". Throws Error(kInternal) if
  // the pipe or fork fails.
  static ChildProcess Start(const std::function<std::pair<int, std::string>()>& fn);

  ChildProcess(ChildProcess&& o) noexcept;
  ChildProcess& operator=(ChildProcess&&) = delete;
  ~ChildProcess();  // waits for the child if Wait() was not called

  // Reads the child's output to its end, then reaps it. Call once.
  ChildResult Wait();
  pid_t pid() const { return pid_; }

 private:
  ChildProcess(pid_t pid, int fd) : pid_(pid), read_fd_(fd) {}
  pid_t pid_ = -1;
  int read_fd_ = -1;
};

// Start(fn).Wait() for a function that only produces a string.
std::string RunInChild(const std::function<std::string()>& fn);

}  // namespace ktm

// Running helper programs (iperf3, gnuplot) without a shell: fork/exec with
// pipes, so no argument is ever interpreted by /bin/sh.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "base/proc.h"  // TcpPortListening

namespace ktm::cli {

// A loopback TCP port that was free a moment ago.
int FreeTcpPort();

// Whether `name` is an executable file in $PATH.
bool ProgramInPath(const std::string& name);

// A started program; stdout (and stderr) are collected by Wait().
class Program {
 public:
  // Starts argv[0] (searched in $PATH) with `input` written to its stdin.
  // Throws Error(kLocalIo) if it cannot be started.
  static Program Start(const std::vector<std::string>& argv, const std::string& input = "");
  Program(Program&& o) noexcept;
  Program& operator=(Program&&) = delete;
  ~Program();

  // Reads its output to the end and reaps it. Returns the exit status (-1
  // if killed by a signal).
  int Wait(std::string* output = nullptr);

  // Sends `sig` to the program (a no-op once it has been waited for).
  void Signal(int sig);

 private:
  Program() = default;
  pid_t pid_ = -1;
  int out_fd_ = -1;
};

}  // namespace ktm::cli

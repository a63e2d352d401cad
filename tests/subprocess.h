// A child process with its stdout+stderr on a pipe; killed and reaped on
// destruction. Used to run the real openssl s_server / gnutls-serv peers.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <vector>

#include "base/error.h"

namespace ktm::testing {

class Subprocess {
 public:
  // Output goes to a temp file, not a pipe: a chatty peer (gnutls-serv logs
  // every line it echoes) must never block on a pipe nobody drains.
  explicit Subprocess(std::vector<std::string> argv) {
    char tmpl[] = "/tmp/ktm-peer-XXXXXX";
    out_fd_ = mkstemp(tmpl);
    if (out_fd_ < 0) ThrowErrno(ErrorKind::kInternal, errno, "mkstemp");
    unlink(tmpl);
    pid_ = fork();
    if (pid_ < 0) ThrowErrno(ErrorKind::kInternal, errno, "fork");
    if (pid_ == 0) {
      dup2(out_fd_, 1);
      dup2(out_fd_, 2);
      int devnull = open("/dev/null", O_RDONLY);
      dup2(devnull, 0);
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
  }
  ~Subprocess() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) close(out_fd_);
  }
  Subprocess(const Subprocess&) = delete;
  Subprocess& operator=(const Subprocess&) = delete;

  // Re-reads the output until `needle` appears or `timeout` passes.
  bool WaitFor(const std::string& needle, std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      Refresh();
      if (output_.find(needle) != std::string::npos) return true;
      if (std::chrono::steady_clock::now() >= deadline) return false;
      usleep(20 * 1000);
    }
  }
  const std::string& output() {
    Refresh();
    return output_;
  }

  void Signal(int sig) {
    if (pid_ > 0) kill(pid_, sig);
  }
  pid_t pid() const { return pid_; }

  // Waits for exit; returns the exit code, 128+signal if killed, or -1 on
  // timeout (the child is then killed).
  int Wait(std::chrono::milliseconds timeout) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      int st = 0;
      pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      if (std::chrono::steady_clock::now() >= deadline) {
        kill(pid_, SIGKILL);
        waitpid(pid_, nullptr, 0);
        pid_ = -1;
        return -1;
      }
      usleep(10 * 1000);
    }
  }

 private:
  void Refresh() {
    output_.clear();
    char buf[4096];
    ssize_t n;
    off_t off = 0;
    while ((n = pread(out_fd_, buf, sizeof(buf), off)) > 0) {
      output_.append(buf, n);
      off += n;
    }
  }
  pid_t pid_ = -1;
  int out_fd_ = -1;
  std::string output_;
};

// A TCP port that was free a moment ago (for peers that cannot report theirs).
inline int FreePort();

}  // namespace ktm::testing

#include "channel/socket_channel.h"

inline int ktm::testing::FreePort() {
  Listener l = Listener::Listen("127.0.0.1:0");
  return l.port();
}

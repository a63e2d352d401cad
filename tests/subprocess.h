// A child process with its stdout+stderr in a file; killed and reaped on
// destruction. Used to run the real openssl s_server / gnutls-serv peers.
// Its stdin is /dev/null, or with kStdinPipe a stream the test writes to
// (WriteStdin): how openssl s_server / s_client take their commands.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/socket.h>
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
  enum Stdin { kStdinNull, kStdinPipe };
  explicit Subprocess(std::vector<std::string> argv, Stdin in = kStdinNull) {
    char tmpl[] = "/tmp/ktm-peer-XXXXXX";
    out_fd_ = mkstemp(tmpl);
    if (out_fd_ < 0) ThrowErrno(ErrorKind::kInternal, errno, "mkstemp");
    unlink(tmpl);
    int in_fds[2] = {-1, -1};
    // A socket pair, not a pipe: writes to a child that has gone then fail
    // with EPIPE under MSG_NOSIGNAL instead of raising SIGPIPE.
    if (in == kStdinPipe && socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, in_fds) != 0) {
      ThrowErrno(ErrorKind::kInternal, errno, "socketpair");
    }
    pid_ = fork();
    if (pid_ < 0) ThrowErrno(ErrorKind::kInternal, errno, "fork");
    if (pid_ == 0) {
      dup2(out_fd_, 1);
      dup2(out_fd_, 2);
      const int stdin_fd = in == kStdinPipe ? in_fds[0] : open("/dev/null", O_RDONLY);
      dup2(stdin_fd, 0);  // dup2 clears O_CLOEXEC on fd 0
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execvp(args[0], args.data());
      _exit(127);
    }
    if (in == kStdinPipe) {
      close(in_fds[0]);
      stdin_fd_ = in_fds[1];
    }
  }
  ~Subprocess() {
    if (stdin_fd_ >= 0) close(stdin_fd_);
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

  // Writes all of `s` to the child's stdin (kStdinPipe only). A child that
  // has exited makes this fail (EPIPE), never SIGPIPE.
  bool WriteStdin(const std::string& s) {
    size_t off = 0;
    while (stdin_fd_ >= 0 && off < s.size()) {
      const ssize_t w = send(stdin_fd_, s.data() + off, s.size() - off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break;
      off += static_cast<size_t>(w);
    }
    return off == s.size();
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
  int stdin_fd_ = -1;  // kStdinPipe: the write end
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

#include "base/child.h"

#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <tuple>
#include <exception>

#include "base/error.h"

namespace ktm {

ChildProcess ChildProcess::Start(const std::function<std::pair<int, std::string>()>& fn) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) ThrowErrno(ErrorKind::kInternal, errno, "pipe");
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    close(pipefd[0]);
    close(pipefd[1]);
    ThrowErrno(ErrorKind::kInternal, e, "fork");
  }
  if (pid == 0) {
    close(pipefd[0]);
    int rc = 0;
    std::string out;
    try {
      std::tie(rc, out) = fn();
    } catch (const std::exception& e) {
      rc = 1;
      out = std::string("EXCEPTION ") + e.what();
    }
    for (size_t off = 0; off < out.size();) {
      ssize_t n = write(pipefd[1], out.data() + off, out.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    _exit(rc);
  }
  close(pipefd[1]);
  return ChildProcess(pid, pipefd[0]);
}

ChildProcess::ChildProcess(ChildProcess&& o) noexcept
    : pid_(std::exchange(o.pid_, -1)), read_fd_(std::exchange(o.read_fd_, -1)) {}

ChildProcess::~ChildProcess() {
  if (pid_ > 0) (void)Wait();
}

ChildResult ChildProcess::Wait() {
  ChildResult r;
  char buf[4096];
  for (;;) {
    ssize_t n = read(read_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r.output.append(buf, static_cast<size_t>(n));
  }
  close(read_fd_);
  read_fd_ = -1;
  int status = 0;
  while (wait4(pid_, &status, 0, &r.usage) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.term_signal = WTERMSIG(status);
  return r;
}

std::string RunInChild(const std::function<std::string()>& fn) {
  return ChildProcess::Start([&] { return std::make_pair(0, fn()); }).Wait().output;
}

}  // namespace ktm

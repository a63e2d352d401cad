#include "cli/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <utility>

#include "base/error.h"
#include "channel/address.h"

namespace ktm::cli {

bool ProgramInPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    const std::string p = (dir.empty() ? "." : dir) + "/" + name;
    struct stat st{};
    if (stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(p.c_str(), X_OK) == 0) return true;
  }
  return false;
}

Program Program::Start(const std::vector<std::string>& argv, const std::string& input) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) ThrowErrno(ErrorKind::kInternal, errno, "pipe");
  if (pipe2(out, O_CLOEXEC) != 0) {
    const int e = errno;
    close(in[0]);
    close(in[1]);
    ThrowErrno(ErrorKind::kInternal, e, "pipe");
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) ThrowErrno(ErrorKind::kInternal, errno, "fork");
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(out[1], 2);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  // The input is small (a gnuplot script); write it whole, then EOF. A
  // program that exits without reading must not kill us with SIGPIPE.
  signal(SIGPIPE, SIG_IGN);
  for (size_t off = 0; off < input.size();) {
    ssize_t n = write(in[1], input.data() + off, input.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<size_t>(n);
  }
  close(in[1]);
  Program p;
  p.pid_ = pid;
  p.out_fd_ = out[0];
  return p;
}

Program::Program(Program&& o) noexcept : pid_(std::exchange(o.pid_, -1)), out_fd_(std::exchange(o.out_fd_, -1)) {}

Program::~Program() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    Wait();
  }
}

void Program::Signal(int sig) {
  if (pid_ > 0) kill(pid_, sig);
}

int Program::Wait(std::string* output) {
  char buf[4096];
  for (;;) {
    ssize_t n = read(out_fd_, buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (output) output->append(buf, static_cast<size_t>(n));
  }
  close(out_fd_);
  out_fd_ = -1;
  int status = 0;
  while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

int FreeTcpPort() {
  Listener l = Listener::Listen("127.0.0.1:0");
  return l.port();
}

}  // namespace ktm::cli

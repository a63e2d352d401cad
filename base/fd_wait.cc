#include "base/fd_wait.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <string>

#include "base/error.h"

namespace ktm {

int PollTimeoutMs(std::chrono::milliseconds t) {
  return t.count() < 0 ? -1 : static_cast<int>(std::min<int64_t>(t.count(), INT32_MAX));
}

short PollFd(int fd, short events, std::chrono::milliseconds timeout) {
  pollfd p{fd, events, 0};
  const int ms = PollTimeoutMs(timeout);
  for (;;) {
    int rc = ::poll(&p, 1, ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) ThrowErrno(ErrorKind::kInternal, errno, "poll");
    return rc == 0 ? 0 : p.revents;
  }
}

void WaitFdReady(int fd, bool for_write) {
  PollFd(fd, for_write ? POLLOUT : POLLIN, std::chrono::milliseconds(-1));
}

bool WaitFdReadable(int fd, std::chrono::milliseconds timeout) { return PollFd(fd, POLLIN, timeout) != 0; }

Error IoTimeoutError(bool for_write, std::chrono::milliseconds timeout, const std::string& what) {
  const auto ms = timeout.count();
  const std::string t = ms % 1000 == 0 ? std::to_string(ms / 1000) + " s" : std::to_string(ms) + " ms";
  return Error(ErrorKind::kTimeout, ETIMEDOUT,
               "no progress for " + t + " while " + (for_write ? "writing to " : "reading from ") + what +
                   " (the peer stopped reading or sending, or the path stopped forwarding)");
}

void WaitFdReadyOrThrow(int fd, bool for_write, std::chrono::milliseconds timeout, const std::string& what) {
  if (PollFd(fd, for_write ? POLLOUT : POLLIN, timeout) == 0) throw IoTimeoutError(for_write, timeout, what);
}

void SetSocketTimeouts(int fd, std::chrono::milliseconds read, std::chrono::milliseconds write) {
  auto tv = [](std::chrono::milliseconds t) {
    timeval v{};  // zero: no timeout
    if (t.count() > 0) {
      v.tv_sec = t.count() / 1000;
      v.tv_usec = (t.count() % 1000) * 1000;
    }
    return v;
  };
  const timeval r = tv(read), w = tv(write);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &r, sizeof(r)) != 0 ||
      setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &w, sizeof(w)) != 0) {
    ThrowErrno(ErrorKind::kInternal, errno, "setsockopt(SO_RCVTIMEO/SO_SNDTIMEO)");
  }
}

void SetNonBlocking(int fd, bool nonblocking, const char* what) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) ThrowErrno(ErrorKind::kInternal, errno, std::string("fcntl(F_GETFL) on ") + what);
  fl = nonblocking ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK);
  if (fcntl(fd, F_SETFL, fl) != 0) ThrowErrno(ErrorKind::kInternal, errno, std::string("fcntl(F_SETFL) on ") + what);
}

bool IsNonBlocking(int fd) {
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0) ThrowErrno(ErrorKind::kInternal, errno, "fcntl(F_GETFL)");
  return (fl & O_NONBLOCK) != 0;
}

void ShutdownWriteOrThrow(int fd, const std::string& who) {
  if (::shutdown(fd, SHUT_WR) == 0) return;
  const int e = errno;
  if (e == ENOTCONN) {
    // TCP answers ENOTCONN once a reset has closed the connection.
    throw Error(ErrorKind::kPeer, e, "cannot end the stream: " + who + " has reset the connection");
  }
  ThrowErrno(SocketErrorKind(e), e, "shutdown(SHUT_WR) towards " + who);
}

}  // namespace ktm

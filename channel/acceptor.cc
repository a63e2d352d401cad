#include "channel/acceptor.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "base/error.h"
#include "base/fd_wait.h"

namespace ktm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// accept(2): "Linux accept() passes already-pending network errors on the
// new socket as an error code from accept()" - the connection is gone, the
// listener is fine. EPERM: a firewall rule refused it.
bool IsDeadConnection(int err) {
  switch (err) {
    case ECONNABORTED:
    case EPROTO:
    case ENOPROTOOPT:
    case ENETDOWN:
    case ENETUNREACH:
    case EHOSTDOWN:
    case EHOSTUNREACH:
    case ENONET:
    case EOPNOTSUPP:
    case EPERM:
      return true;
    default:
      return false;
  }
}

milliseconds Until(Clock::time_point t) {
  const auto d = std::chrono::ceil<milliseconds>(t - Clock::now());
  return std::max(d, milliseconds(0));
}

std::string Seconds(Clock::duration d) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f s", std::chrono::duration<double>(d).count());
  return buf;
}

}  // namespace

bool IsAcceptResourceShortage(int err) { return err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM; }

std::string AdmissionSource(const sockaddr_storage& peer, socklen_t len) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (peer.ss_family == AF_INET && len >= sizeof(sockaddr_in)) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in&>(peer).sin_addr, text, sizeof(text));
    return text;
  }
  if (peer.ss_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    in6_addr a = reinterpret_cast<const sockaddr_in6&>(peer).sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(&a)) {
      inet_ntop(AF_INET, &a.s6_addr[12], text, sizeof(text));
      return text;
    }
    // One site, one source: a /64 holds 2^64 addresses for whoever has one.
    std::memset(&a.s6_addr[8], 0, 8);
    inet_ntop(AF_INET6, &a, text, sizeof(text));
    return std::string(text) + "/64";
  }
  if (peer.ss_family == AF_UNIX) return "unix";
  return "?";
}

Acceptor::Acceptor(Listener& listener, Options opts)
    : listener_(listener), opts_(std::move(opts)) {
  if (opts_.wakeable) {
    wake_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) ThrowErrno(ErrorKind::kInternal, errno, "eventfd");
  }
  opts_.min_backoff = std::max(opts_.min_backoff, milliseconds(1));
  opts_.max_backoff = std::max(opts_.max_backoff, opts_.min_backoff);
  saved_flags_ = fcntl(listener_.fd(), F_GETFL);
  if (saved_flags_ < 0 || fcntl(listener_.fd(), F_SETFL, saved_flags_ | O_NONBLOCK) != 0) {
    ThrowErrno(ErrorKind::kInternal, errno, "fcntl O_NONBLOCK on " + listener_.address());
  }
}

Acceptor::~Acceptor() { (void)fcntl(listener_.fd(), F_SETFL, saved_flags_); }

void Acceptor::Log(const std::string& s) const {
  if (opts_.log) opts_.log(opts_.prefix + s);
}

void Acceptor::Wake() {
  if (!wake_) return;
  const uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof(one));
}

void Acceptor::ShortOf(int err, const std::string& what) {
  const auto now = Clock::now();
  ++episode_failures_;
  last_shortage_ = err;
  if (backoff_.count() == 0) {
    backoff_ = opts_.min_backoff;
    episode_start_ = now;
    Log(what + " on " + listener_.address() + ": " + std::strerror(err) + "; backing off (retrying after " +
        std::to_string(opts_.min_backoff.count()) + " ms, doubling up to every " +
        std::to_string(opts_.max_backoff.count()) + " ms, and whenever a connection ends) until it works again");
  } else {
    backoff_ = std::min(2 * backoff_, opts_.max_backoff);
  }
  retry_at_ = now + backoff_;
}

std::optional<Acceptor::Accepted> Acceptor::TryAccept() {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  const int fd = accept4(listener_.fd(), reinterpret_cast<sockaddr*>(&ss), &len, SOCK_CLOEXEC);
  if (fd >= 0) {
    if (backing_off()) {
      Log("accepting again on " + listener_.address() + " after " + std::to_string(episode_failures_) +
          " failed accept()s over " + Seconds(Clock::now() - episode_start_));
      backoff_ = milliseconds(0);
      episode_failures_ = 0;
    }
    Accepted a;
    a.fd.reset(fd);
    a.peer = SockName(fd, /*peer=*/true);
    a.source = AdmissionSource(ss, len);
    return a;
  }
  const int err = errno;
  if (IsAcceptResourceShortage(err)) {
    ShortOf(err, "accept failed");
    return std::nullopt;
  }
  if (err == EAGAIN || err == EWOULDBLOCK) {
    // Nothing queued (the connection went away): during a back-off, try
    // again at the next retry time without doubling the delay.
    if (backing_off()) retry_at_ = Clock::now() + backoff_;
    return std::nullopt;
  }
  if (err == EINTR || IsDeadConnection(err)) return std::nullopt;
  ThrowErrno(ErrorKind::kInternal, err, "accept on " + listener_.address());
}

// Polls the wake-up fd (and the listener unless backing off); accepts when
// the listener is readable or the back-off's retry time has come. Without
// a wake-up fd (-1) poll(2) ignores that entry: the wait is a plain sleep.
std::optional<Acceptor::Accepted> Acceptor::Next(milliseconds timeout) {
  auto drain_wake = [this] {
    bool woken = false;
    uint64_t v;
    while (wake_ && read(wake_.get(), &v, sizeof(v)) > 0) woken = true;
    return woken;
  };
  if (backing_off()) {
    // The listener stays readable while accept() fails: polling it would
    // spin. Sleep until the retry time, or until a descriptor comes back.
    const milliseconds until_retry = Until(retry_at_);
    (void)PollFd(wake_.get(), POLLIN, timeout.count() < 0 ? until_retry : std::min(timeout, until_retry));
    if (drain_wake() || Clock::now() >= retry_at_) return TryAccept();
    return std::nullopt;
  }
  pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {listener_.fd(), POLLIN, 0}};
  const int rc = poll(fds, 2, PollTimeoutMs(timeout));
  if (rc < 0 && errno != EINTR) ThrowErrno(ErrorKind::kInternal, errno, "poll");
  drain_wake();
  return rc > 0 && (fds[1].revents & POLLIN) ? TryAccept() : std::nullopt;
}

}  // namespace ktm

#include "channel/address.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>

#include "base/error.h"
#include "base/fd_wait.h"
#include "base/parse.h"
#include "channel/acceptor.h"

namespace ktm {
namespace {

sockaddr_un UnixAddr(const std::string& path) {
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::memcpy(sun.sun_path, path.data(), path.size());
  return sun;
}

struct AddrInfoDeleter {
  void operator()(addrinfo* p) const { freeaddrinfo(p); }
};
using AddrInfoPtr = std::unique_ptr<addrinfo, AddrInfoDeleter>;

AddrInfoPtr Resolve(const ParsedAddress& a, bool passive) {
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  addrinfo* res = nullptr;
  const char* host = a.host.empty() ? nullptr : a.host.c_str();
  int rc = getaddrinfo(host, a.port.c_str(), &hints, &res);
  if (rc != 0) {
    // An address to listen on is this host's own: one that does not
    // resolve (a typo, 999.1.1.1) is a usage error, not a peer's failure.
    if (passive) {
      throw Error(ErrorKind::kUsage, EINVAL,
                  "cannot listen on '" + a.host + "': not an address or name of this host (" + gai_strerror(rc) +
                      ")");
    }
    throw Error(ErrorKind::kPeer, EHOSTUNREACH, "cannot resolve '" + a.host + "': " + gai_strerror(rc));
  }
  return AddrInfoPtr(res);
}

// Nagle off on a new TCP socket, whatever runs over it later (plaintext,
// userspace TLS, kTLS, the tunnel): the protocol's small messages (SYNC,
// END, DONE at switch-over, TLS alerts) must not wait for a delayed ACK,
// and bulk writes are large anyway. Set at creation, the one place every
// connecting and listening socket passes through; Linux clones an accepted
// socket from its listener, so every accept() returns it set too (the
// transport's own accept loops included).
void SetNoDelay(int fd, int family) {
  if (family != AF_INET && family != AF_INET6) return;
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
    ThrowErrno(ErrorKind::kInternal, errno, "setsockopt(TCP_NODELAY)");
  }
}

// One non-blocking connect with a deadline; returns the fd in blocking mode.
UniqueFd ConnectOne(int family, const sockaddr* sa, socklen_t salen, const std::string& address,
                    std::chrono::milliseconds timeout) {
  UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) ThrowErrno(ErrorKind::kInternal, errno, "socket");
  SetNoDelay(fd.get(), family);
  if (::connect(fd.get(), sa, salen) != 0) {
    if (errno != EINPROGRESS && errno != EAGAIN) {
      const int e = errno;
      ThrowErrno(SocketErrorKind(e), e, "connect to " + address);
    }
    if (PollFd(fd.get(), POLLOUT, timeout) == 0) {
      throw Error(ErrorKind::kTimeout, ETIMEDOUT,
                  "connect to " + address + " timed out after " + std::to_string(timeout.count()) + " ms");
    }
    int err = 0;
    socklen_t l = sizeof(err);
    if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &l) != 0) err = errno;
    if (err != 0) {
      ThrowErrno(SocketErrorKind(err), err,
                 "connect to " + address + (err == ECONNREFUSED ? " (is the destination listening?)" : ""));
    }
  }
  SetNonBlocking(fd.get(), false, "a connected socket");
  return fd;
}

}  // namespace

ParsedAddress ParseAddress(const std::string& address) {
  ParsedAddress a;
  if (address.rfind("unix:", 0) == 0) {
    a.is_unix = true;
    a.path = address.substr(5);
    if (a.path.empty() || a.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      throw Error(ErrorKind::kUsage, EINVAL,
                  "bad UNIX socket address '" + address + "': need unix:PATH (at most " +
                      std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes)");
    }
    return a;
  }
  size_t colon;
  if (!address.empty() && address[0] == '[') {
    size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      throw Error(ErrorKind::kUsage, EINVAL, "bad address '" + address + "': IPv6 form is [ADDR]:PORT");
    }
    a.host = address.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = address.rfind(':');
    if (colon == std::string::npos) {
      throw Error(ErrorKind::kUsage, EINVAL,
                  "bad address '" + address + "': expected HOST:PORT, [V6]:PORT or unix:PATH");
    }
    a.host = address.substr(0, colon);
  }
  a.port = address.substr(colon + 1);
  if (!ParseUnsigned(a.port, 0, 65535)) {
    throw Error(ErrorKind::kUsage, EINVAL, "bad port in '" + address + "': expected a number 0-65535");
  }
  return a;
}

UniqueFd ConnectStream(const std::string& address, std::chrono::milliseconds timeout) {
  ParsedAddress a = ParseAddress(address);
  if (a.is_unix) {
    sockaddr_un sun = UnixAddr(a.path);
    return ConnectOne(AF_UNIX, reinterpret_cast<sockaddr*>(&sun), sizeof(sun), address, timeout);
  }
  if (a.port == "0" || a.port.find_first_not_of('0') == std::string::npos) {
    throw Error(ErrorKind::kUsage, EINVAL, "cannot connect to '" + address + "': port 0 is not a port one can "
                "connect to (it means 'any free port' only when listening)");
  }
  AddrInfoPtr res = Resolve(a, /*passive=*/false);
  std::optional<Error> last;
  for (addrinfo* ai = res.get(); ai; ai = ai->ai_next) {
    try {
      return ConnectOne(ai->ai_family, ai->ai_addr, ai->ai_addrlen, address, timeout);
    } catch (const Error& e) {
      last = e;
    }
  }
  throw last.value_or(Error(ErrorKind::kPeer, EHOSTUNREACH, "no address for " + address));
}

std::string SockName(int fd, bool peer) {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  int rc = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
                : getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (rc != 0) return "?";
  char buf[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    auto* s = reinterpret_cast<sockaddr_in*>(&ss);
    inet_ntop(AF_INET, &s->sin_addr, buf, sizeof(buf));
    return std::string(buf) + ":" + std::to_string(ntohs(s->sin_port));
  }
  if (ss.ss_family == AF_INET6) {
    auto* s = reinterpret_cast<sockaddr_in6*>(&ss);
    inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof(buf));
    return "[" + std::string(buf) + "]:" + std::to_string(ntohs(s->sin6_port));
  }
  if (ss.ss_family == AF_UNIX) {
    auto* s = reinterpret_cast<sockaddr_un*>(&ss);
    size_t n = len > offsetof(sockaddr_un, sun_path) ? len - offsetof(sockaddr_un, sun_path) : 0;
    return "unix:" + std::string(s->sun_path, strnlen(s->sun_path, n));
  }
  return "?";
}

Listener Listener::Listen(const std::string& address, int backlog) {
  ParsedAddress a = ParseAddress(address);
  Listener l;
  if (a.is_unix) {
    struct stat st{};
    if (lstat(a.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(a.path.c_str());
    l.fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!l.fd_) ThrowErrno(ErrorKind::kInternal, errno, "socket");
    sockaddr_un sun = UnixAddr(a.path);
    if (bind(l.fd_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
      ThrowErrno(ErrorKind::kLocalIo, errno, "bind " + address);
    }
    l.family_ = AF_UNIX;
    l.unix_path_ = a.path;
  } else {
    AddrInfoPtr res = Resolve(a, /*passive=*/true);
    int last_err = EADDRNOTAVAIL;
    for (addrinfo* ai = res.get(); ai; ai = ai->ai_next) {
      UniqueFd fd(::socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
      if (!fd) { last_err = errno; continue; }
      int one = 1;
      if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
        last_err = errno;
        continue;
      }
      SetNoDelay(fd.get(), ai->ai_family);  // inherited by every accepted socket
      if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) { last_err = errno; continue; }
      l.fd_ = std::move(fd);
      l.family_ = ai->ai_family;
      break;
    }
    if (!l.fd_) {
      ThrowErrno(ErrorKind::kLocalIo, last_err,
                 "bind " + address + (last_err == EADDRINUSE ? " (another process holds the port)" : ""));
    }
  }
  if (::listen(l.fd_.get(), backlog) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "listen " + address);
  return l;
}

UniqueFd Listener::AcceptFd(std::chrono::milliseconds timeout) {
  // The one accept policy (acceptor.h), without a log: a shortage of
  // descriptors backs off within `timeout` instead of failing at once.
  Acceptor::Options o;
  o.wakeable = false;
  Acceptor acceptor(*this, std::move(o));
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const auto left = timeout.count() < 0
                          ? timeout
                          : std::max(std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()),
                                     std::chrono::milliseconds(0));
    if (auto a = acceptor.Next(left)) return std::move(a->fd);
    if (timeout.count() < 0 || Clock::now() < deadline) continue;
    if (acceptor.backing_off()) {
      ThrowErrno(ErrorKind::kLocalIo, acceptor.last_shortage(),
                 "no connection accepted on " + address() + " within " + std::to_string(timeout.count()) +
                     " ms: accept() kept failing");
    }
    throw Error(ErrorKind::kTimeout, ETIMEDOUT,
                "no connection on " + address() + " within " + std::to_string(timeout.count()) + " ms");
  }
}

std::string Listener::address() const { return SockName(fd_.get(), /*peer=*/false); }

uint16_t Listener::port() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) return 0;
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

}  // namespace ktm

#include "channel/socket_channel.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/errqueue.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "channel/error.h"

namespace ktm {
namespace {

struct ParsedAddress {
  bool is_unix = false;
  std::string host;
  std::string port;
  std::string path;
};

ParsedAddress ParseAddress(const std::string& address) {
  ParsedAddress a;
  if (address.rfind("unix:", 0) == 0) {
    a.is_unix = true;
    a.path = address.substr(5);
    if (a.path.empty() || a.path.size() >= sizeof(sockaddr_un{}.sun_path)) {
      throw Error(EINVAL, "bad UNIX socket address '" + address + "': need unix:PATH (at most " +
                              std::to_string(sizeof(sockaddr_un{}.sun_path) - 1) + " bytes)");
    }
    return a;
  }
  size_t colon;
  if (!address.empty() && address[0] == '[') {
    size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      throw Error(EINVAL, "bad address '" + address + "': IPv6 form is [ADDR]:PORT");
    }
    a.host = address.substr(1, close - 1);
    colon = close + 1;
  } else {
    colon = address.rfind(':');
    if (colon == std::string::npos) {
      throw Error(EINVAL, "bad address '" + address + "': expected HOST:PORT, [V6]:PORT or unix:PATH");
    }
    a.host = address.substr(0, colon);
  }
  a.port = address.substr(colon + 1);
  if (a.port.empty() || a.port.find_first_not_of("0123456789") != std::string::npos ||
      std::stoul(a.port) > 65535) {
    throw Error(EINVAL, "bad port in '" + address + "': expected a number 0-65535");
  }
  return a;
}

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
    throw Error(EHOSTUNREACH, "cannot resolve '" + a.host + "': " + gai_strerror(rc));
  }
  return AddrInfoPtr(res);
}

// Waits for `events` on fd; timeout < 0 means forever. Returns revents, 0 on
// timeout.
short PollFd(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  for (;;) {
    int rc = ::poll(&p, 1, timeout_ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) ThrowErrno(errno, "poll");
    return rc == 0 ? 0 : p.revents;
  }
}

int ToMs(std::chrono::milliseconds t) {
  return t.count() < 0 ? -1 : static_cast<int>(std::min<int64_t>(t.count(), INT32_MAX));
}


}  // namespace

std::string ReadProcValue(const char* path) {
  std::ifstream f(path);
  std::string v;
  if (!(f >> v)) return "unknown";
  return v;
}

SendBackend ParseSendBackend(const std::string& s) {
  if (s == "sendmsg") return SendBackend::kSendmsg;
  if (s == "io_uring") return SendBackend::kIoUring;
  throw Error(EINVAL, "invalid send backend '" + s + "': use sendmsg or io_uring");
}

const char* ToString(SendBackend b) { return b == SendBackend::kIoUring ? "io_uring" : "sendmsg"; }

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

SocketChannel::SocketChannel(UniqueFd fd, const SocketOptions& opts)
    : fd_(std::move(fd)), threshold_(opts.zero_copy_threshold),
      reap_outstanding_(opts.reap_outstanding) {
  if (!fd_) throw Error(EBADF, "SocketChannel needs a connected socket");
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    ThrowErrno(errno, "getsockname");
  }
  family_ = ss.ss_family;
  peer_ = SockName(fd_.get(), /*peer=*/true);
  if (family_ == AF_INET || family_ == AF_INET6) {
    int one = 1;
    // Page packets are written whole; Nagle would only delay the tail.
    if (setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
      ThrowErrno(errno, "setsockopt(TCP_NODELAY)");
    }
  }
  if (opts.zero_copy != ZeroCopyMode::kOff && opts.backend == SendBackend::kIoUring) {
    // io_uring's zero-copy sends need no SO_ZEROCOPY; whether this socket
    // supports them shows at the first send (EOPNOTSUPP -> plain send).
    try {
      uring_ = std::make_unique<UringSender>(fd_.get());
      zero_copy_ = true;
      uring_unnotified_.reserve(64);
    } catch (const Error& e) {
      backend_reason_ = std::string("io_uring unavailable: ") + e.what();
      if (opts.zero_copy == ZeroCopyMode::kRequire) {
        throw Error(e.code(), "zero copy with --backend io_uring was required but " + backend_reason_);
      }
    }
  }
  if (opts.zero_copy == ZeroCopyMode::kOff) {
    zero_copy_reason_ = "zero copy turned off (--zero-copy off)";
  } else if (uring_) {
    // zero_copy_ already set
  } else {
    int one = 1;
    if (setsockopt(fd_.get(), SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) == 0) {
      zero_copy_ = true;
    } else {
      int e = errno;
      zero_copy_reason_ = std::string("the kernel refused SO_ZEROCOPY on this ") +
                          (family_ == AF_UNIX ? "UNIX" : "TCP") + " socket: " + std::strerror(e);
      if (family_ == AF_UNIX) zero_copy_reason_ += " (MSG_ZEROCOPY exists for TCP/UDP/vsock only)";
      if (opts.zero_copy == ZeroCopyMode::kRequire) {
        throw Error(e, "zero copy was required but is not available: " + zero_copy_reason_ +
                           "; use --zero-copy auto or off");
      }
    }
  }
  set_blocking(opts.blocking);
}

SocketChannel::~SocketChannel() { close(); }

std::unique_ptr<SocketChannel> SocketChannel::Connect(const std::string& address,
                                                      std::chrono::milliseconds timeout,
                                                      const SocketOptions& opts) {
  ParsedAddress a = ParseAddress(address);
  auto try_one = [&](int family, const sockaddr* sa, socklen_t salen) -> UniqueFd {
    UniqueFd fd(::socket(family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) ThrowErrno(errno, "socket");
    if (::connect(fd.get(), sa, salen) != 0) {
      if (errno != EINPROGRESS && errno != EAGAIN) {
        ThrowErrno(errno, "connect to " + address);
      }
      short ev = PollFd(fd.get(), POLLOUT, ToMs(timeout));
      if (ev == 0) {
        throw Error(ETIMEDOUT, "connect to " + address + " timed out after " +
                                   std::to_string(timeout.count()) + " ms");
      }
      int err = 0;
      socklen_t l = sizeof(err);
      getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &l);
      if (err != 0) {
        ThrowErrno(err, "connect to " + address +
                            (err == ECONNREFUSED ? " (is the destination listening?)" : ""));
      }
    }
    int fl = fcntl(fd.get(), F_GETFL);
    fcntl(fd.get(), F_SETFL, fl & ~O_NONBLOCK);
    return fd;
  };
  if (a.is_unix) {
    sockaddr_un sun = UnixAddr(a.path);
    return std::make_unique<SocketChannel>(
        try_one(AF_UNIX, reinterpret_cast<sockaddr*>(&sun), sizeof(sun)), opts);
  }
  AddrInfoPtr res = Resolve(a, /*passive=*/false);
  std::optional<Error> last;
  for (addrinfo* ai = res.get(); ai; ai = ai->ai_next) {
    try {
      return std::make_unique<SocketChannel>(try_one(ai->ai_family, ai->ai_addr, ai->ai_addrlen),
                                             opts);
    } catch (const Error& e) {
      if (opts.zero_copy == ZeroCopyMode::kRequire && e.code() != ECONNREFUSED &&
          e.code() != ETIMEDOUT) {
        throw;  // a policy error, not a reachability one
      }
      last = e;
    }
  }
  throw last.value_or(Error(EHOSTUNREACH, "no address for " + address));
}

unsigned SocketChannel::features() const {
  return kFeatureShutdown | (zero_copy_ ? kFeatureZeroCopyWrite : 0u);
}

std::string SocketChannel::describe() const {
  std::string s = (family_ == AF_UNIX ? "unix " : "tcp ") + peer_;
  if (uring_ && !uring_fallback_) {
    s += std::string(", io_uring SEND_ZC on (writes >= ") + std::to_string(threshold_) + " bytes" +
         (uring_->has_region() ? ", image in registered buffers)" : ")");
  } else if (uring_fallback_) {
    s += ", plain send (" + backend_reason_ + ")";
  } else if (zero_copy_) {
    s += ", MSG_ZEROCOPY on (writes >= " + std::to_string(threshold_) + " bytes)";
  } else {
    s += ", copy (" + zero_copy_reason_ + ")";
  }
  return s;
}

void SocketChannel::CheckOpen(const char* op) const {
  if (!fd_) throw Error(EBADF, std::string(op) + " on a closed channel");
}

void SocketChannel::ThrowPending() {
  if (pending_error_) {
    Error e = *pending_error_;
    pending_error_.reset();
    throw e;
  }
}

void SocketChannel::ThrowIoError(int err, const char* op) const {
  std::string what = std::string(op) + " on " + peer_;
  if (err == EPIPE || err == ECONNRESET) {
    throw Error(err, what + " failed: the peer closed or reset the connection (" +
                         std::strerror(err) + ")");
  }
  ThrowErrno(err, what);
}

std::string SocketChannel::EnobufsMessage() const {
  rlimit rl{};
  getrlimit(RLIMIT_MEMLOCK, &rl);
  std::string memlock = rl.rlim_cur == RLIM_INFINITY
                            ? std::string("unlimited")
                            : std::to_string(rl.rlim_cur / 1024) + " KiB";
  return "MSG_ZEROCOPY send failed with ENOBUFS even after draining the completion queue and "
         "retrying: the kernel could not pin the pages or queue the notification. Limits now: "
         "`ulimit -l` (RLIMIT_MEMLOCK) = " + memlock +
         " (processes with CAP_IPC_LOCK are exempt), net.core.optmem_max = " +
         ReadProcValue("/proc/sys/net/core/optmem_max") +
         " bytes. Raise them (e.g. `ulimit -l unlimited`, `sysctl -w net.core.optmem_max=1048576`)"
         " or run with --zero-copy off";
}

WriteResult SocketChannel::writev(std::span<const iovec> iov, unsigned flags) {
  CheckOpen("write");
  ThrowPending();
  size_t total = 0;
  for (const auto& v : iov) total += v.iov_len;
  bool zc = (flags & kWriteZeroCopy) && zero_copy_;
  if (zc && total < threshold_) {
    zc = false;
    ++tracker_.mutable_counters().below_threshold;
  }
  if (zc && tracker_.counters().outstanding() >= reap_outstanding_) {
    DrainErrorQueue(/*block=*/false);
  }
  if (zc && uring_ && !uring_fallback_) {
    bool fell_back = false;
    WriteResult r = WriteViaUring(iov, &fell_back);
    if (!fell_back) return r;
    zc = false;  // this socket refused SEND_ZC: plain send from now on
  }
  if (uring_) zc = false;  // io_uring backend never mixes in MSG_ZEROCOPY
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  const int sflags = MSG_NOSIGNAL | (zc ? MSG_ZEROCOPY : 0);
  bool retried = false;
  for (;;) {
    ssize_t n = ::sendmsg(fd_.get(), &msg, sflags);
    if (n >= 0) {
      WriteResult r;
      r.bytes = static_cast<size_t>(n);
      if (zc && n > 0) {
        uint64_t id = tracker_.OnSend();
        r.zc = {id, id + 1};
      }
      return r;
    }
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      if (!blocking_) return WriteResult{0, true, {}};
      wait_io(/*for_write=*/true);
      continue;
    }
    if (e == ENOBUFS && zc) {
      if (retried) throw Error(ENOBUFS, EnobufsMessage());
      retried = true;
      ++tracker_.mutable_counters().enobufs_retries;
      // Blocking mode may wait for every completion: that also unpins the
      // pages of earlier sends, which is what RLIMIT_MEMLOCK counts.
      DrainErrorQueue(/*block=*/blocking_);
      continue;
    }
    ThrowIoError(e, "write");
  }
}

void SocketChannel::OnUringNotify(uint64_t id, bool copied) {
  const auto c = static_cast<uint32_t>(id);
  tracker_.OnCompletion(c, c, copied);
}

WriteResult SocketChannel::WriteViaUring(std::span<const iovec> iov, bool* fell_back) {
  const UringSender::NotifyFn notify = [this](uint64_t id, bool copied) { OnUringNotify(id, copied); };
  const std::function<uint64_t()> next_id = [this] { return tracker_.OnSend(); };
  bool retried = false;
  for (;;) {
    const uint64_t first = tracker_.next_id();
    uring_unnotified_.clear();
    // Blocking: MSG_WAITALL lets io_uring finish short sends itself (fewer ids).
    ssize_t n = uring_->Send(iov, blocking_ ? MSG_WAITALL : MSG_DONTWAIT, next_id, notify, uring_unnotified_);
    // Requests that ended without a notification pinned nothing.
    for (uint64_t id : uring_unnotified_) OnUringNotify(id, /*copied=*/true);
    const ZeroCopyIds ids{first, tracker_.next_id()};
    if (n >= 0) return WriteResult{static_cast<size_t>(n), false, ids};
    const int e = static_cast<int>(-n);
    if (e == EINTR) continue;
    if (e == EAGAIN) {
      if (!blocking_) return WriteResult{0, true, ids};
      wait_io(true);
      continue;
    }
    if (e == EOPNOTSUPP) {
      uring_fallback_ = true;
      *fell_back = true;
      backend_reason_ = std::string("io_uring SEND_ZC refused by this ") +
                        (family_ == AF_UNIX ? "UNIX" : "TCP") +
                        " socket (EOPNOTSUPP: no SOCK_SUPPORT_ZC, e.g. UNIX or kTLS); falling back to plain send";
      return {};
    }
    if ((e == ENOBUFS || e == ENOMEM) && !retried) {
      retried = true;
      ++tracker_.mutable_counters().enobufs_retries;
      DrainErrorQueue(/*block=*/blocking_);
      continue;
    }
    if (e == ENOBUFS || e == ENOMEM) throw Error(ENOBUFS, EnobufsMessage());
    ThrowIoError(e, "io_uring send");
  }
}

bool SocketChannel::register_region(const void* base, size_t len) {
  if (!uring_ || uring_fallback_) return false;
  uring_->RegisterRegion(base, len);
  return true;
}

ReadResult SocketChannel::readv(std::span<const iovec> iov) {
  CheckOpen("read");
  for (;;) {
    ssize_t n = ::readv(fd_.get(), iov.data(), static_cast<int>(iov.size()));
    if (n >= 0) return ReadResult{static_cast<size_t>(n), false};
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      if (!blocking_) return ReadResult{0, true};
      wait_io(false);
      continue;
    }
    ThrowIoError(e, "read");
  }
}

FlushResult SocketChannel::DrainErrorQueue(bool block) {
  FlushResult res;
  const uint64_t before = tracker_.counters().released;
  if (uring_) {
    // io_uring: releases arrive as notification CQEs on the ring.
    const UringSender::NotifyFn notify = [this](uint64_t id, bool copied) { OnUringNotify(id, copied); };
    uring_->Reap(/*block=*/false, notify);
    while (block && !tracker_.all_released()) uring_->Reap(/*block=*/true, notify);
    res.complete = tracker_.all_released();
    res.released = tracker_.counters().released - before;
    res.any_zero_copied = tracker_.TakeZeroCopiedSinceLast();
    ThrowPending();
    return res;
  }
  while (!tracker_.all_released()) {
    // One notification per recvmsg; the control buffer fits one
    // sock_extended_err plus the offender address the kernel may append.
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(sock_extended_err) + sizeof(sockaddr_in6))];
    msghdr msg{};
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t r = ::recvmsg(fd_.get(), &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
    if (r < 0) {
      const int e = errno;
      if (e == EINTR) continue;
      if (e != EAGAIN && e != EWOULDBLOCK) ThrowErrno(e, "recvmsg(MSG_ERRQUEUE)");
      if (!block) {
        res.complete = false;
        break;
      }
      // An error-queue entry raises POLLERR; events=0 waits for just that.
      // POLLHUP (peer gone) is level-triggered, so back off instead of
      // spinning while the kernel frees the remaining skbs.
      short ev = PollFd(fd_.get(), 0, 1000);
      if (ev & POLLHUP) {
        timespec ts{0, 1'000'000};
        nanosleep(&ts, nullptr);
      }
      continue;
    }
    if (msg.msg_flags & MSG_CTRUNC) {
      pending_error_ = Error(EPROTO, "truncated control message on the socket error queue");
      break;
    }
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      std::optional<Error> err = tracker_.OnControlMessage(cm);
      if (err && !pending_error_) pending_error_ = std::move(err);
    }
  }
  res.released = tracker_.counters().released - before;
  res.any_zero_copied = tracker_.TakeZeroCopiedSinceLast();
  ThrowPending();
  return res;
}

FlushResult SocketChannel::flush() {
  CheckOpen("flush");
  return DrainErrorQueue(/*block=*/true);
}

FlushResult SocketChannel::try_flush() {
  CheckOpen("flush");
  return DrainErrorQueue(/*block=*/false);
}

void SocketChannel::wait_released(ZeroCopyIds ids) {
  CheckOpen("wait");
  while (!tracker_.IsReleased(ids)) {
    FlushResult r = DrainErrorQueue(/*block=*/false);
    if (!r.complete && !tracker_.IsReleased(ids)) PollFd(fd_.get(), 0, 1000);
  }
}

void SocketChannel::set_release_callback(ReleaseCallback cb) {
  tracker_.set_release_callback(std::move(cb));
}

void SocketChannel::shutdown(ShutdownHow how) {
  CheckOpen("shutdown");
  int h = how == ShutdownHow::kRead ? SHUT_RD : how == ShutdownHow::kWrite ? SHUT_WR : SHUT_RDWR;
  if (::shutdown(fd_.get(), h) != 0 && errno != ENOTCONN) ThrowErrno(errno, "shutdown");
}

void SocketChannel::close() {
  if (uring_ && fd_ && !tracker_.all_released()) {
    // Nothing may be in flight when the ring goes away: give the kernel a
    // bounded time to release what it still holds.
    const UringSender::NotifyFn notify = [this](uint64_t id, bool copied) { OnUringNotify(id, copied); };
    for (int i = 0; i < 2000 && !tracker_.all_released(); ++i) {
      try {
        uring_->Reap(false, notify);
      } catch (const Error&) {
        break;
      }
      if (!tracker_.all_released()) usleep(1000);
    }
  }
  fd_.reset();
}

UniqueFd SocketChannel::release_fd() { return std::move(fd_); }

void SocketChannel::set_blocking(bool blocking) {
  CheckOpen("set_blocking");
  int fl = fcntl(fd_.get(), F_GETFL);
  if (fl < 0) ThrowErrno(errno, "fcntl(F_GETFL)");
  fl = blocking ? (fl & ~O_NONBLOCK) : (fl | O_NONBLOCK);
  if (fcntl(fd_.get(), F_SETFL, fl) != 0) ThrowErrno(errno, "fcntl(F_SETFL)");
  blocking_ = blocking;
}

void WaitFdReady(int fd, bool for_write) { PollFd(fd, for_write ? POLLOUT : POLLIN, -1); }

bool WaitFdReadable(int fd, std::chrono::milliseconds timeout) { return PollFd(fd, POLLIN, ToMs(timeout)) != 0; }

void SocketChannel::wait_io(bool for_write) {
  CheckOpen("wait");
  WaitFdReady(fd_.get(), for_write);
}

Listener Listener::Listen(const std::string& address, int backlog) {
  ParsedAddress a = ParseAddress(address);
  Listener l;
  if (a.is_unix) {
    struct stat st{};
    if (lstat(a.path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(a.path.c_str());
    l.fd_.reset(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!l.fd_) ThrowErrno(errno, "socket");
    sockaddr_un sun = UnixAddr(a.path);
    if (bind(l.fd_.get(), reinterpret_cast<sockaddr*>(&sun), sizeof(sun)) != 0) {
      ThrowErrno(errno, "bind " + address);
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
      setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      if (bind(fd.get(), ai->ai_addr, ai->ai_addrlen) != 0) { last_err = errno; continue; }
      l.fd_ = std::move(fd);
      l.family_ = ai->ai_family;
      break;
    }
    if (!l.fd_) {
      ThrowErrno(last_err, "bind " + address +
                               (last_err == EADDRINUSE ? " (another process holds the port)" : ""));
    }
  }
  if (::listen(l.fd_.get(), backlog) != 0) ThrowErrno(errno, "listen " + address);
  return l;
}

std::unique_ptr<SocketChannel> Listener::Accept(std::chrono::milliseconds timeout,
                                                const SocketOptions& opts) {
  if (PollFd(fd_.get(), POLLIN, ToMs(timeout)) == 0) {
    throw Error(ETIMEDOUT, "no connection on " + address() + " within " +
                               std::to_string(timeout.count()) + " ms");
  }
  for (;;) {
    int fd = ::accept4(fd_.get(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd >= 0) return std::make_unique<SocketChannel>(UniqueFd(fd), opts);
    if (errno == EINTR || errno == ECONNABORTED) continue;
    ThrowErrno(errno, "accept on " + address());
  }
}

std::string Listener::address() const { return SockName(fd_.get(), /*peer=*/false); }

uint16_t Listener::port() const {
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len);
  if (ss.ss_family == AF_INET) return ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  if (ss.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port);
  return 0;
}

}  // namespace ktm

#include "channel/socket_channel.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "base/fd_wait.h"
#include "base/proc.h"
#include "channel/zero_copy_sender.h"

namespace ktm {
namespace {

// How long one wait for completions may block before the loop re-checks.
constexpr std::chrono::milliseconds kReapSlice{1000};

}  // namespace

SocketChannel::SocketChannel(UniqueFd fd, const SocketOptions& opts)
    : fd_(std::move(fd)), threshold_(opts.zero_copy_threshold), reap_outstanding_(opts.reap_outstanding) {
  if (!fd_) throw Error(ErrorKind::kInternal, EBADF, "SocketChannel needs a connected socket");
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  if (getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&ss), &len) != 0) {
    ThrowErrno(ErrorKind::kInternal, errno, "getsockname");
  }
  family_ = ss.ss_family;
  peer_ = SockName(fd_.get(), /*peer=*/true);
  if (family_ == AF_INET || family_ == AF_INET6) {
    int one = 1;
    // Page packets are written whole; Nagle would only delay the tail.
    if (setsockopt(fd_.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) {
      ThrowErrno(ErrorKind::kInternal, errno, "setsockopt(TCP_NODELAY)");
    }
  }
  if (opts.zero_copy == ZeroCopyMode::kOff) {
    zero_copy_reason_ = "zero copy turned off by policy";
  } else if (opts.backend == SendBackend::kIoUring) {
    // io_uring's zero-copy sends need no SO_ZEROCOPY; whether this socket
    // supports them shows at the first send (EOPNOTSUPP -> plain send).
    try {
      sender_ = MakeUringZeroCopySender(fd_.get(), tracker_);
    } catch (const Error& e) {
      backend_reason_ = std::string("io_uring unavailable: ") + e.what();
      zero_copy_reason_ = backend_reason_;
      if (opts.zero_copy == ZeroCopyMode::kRequire) {
        throw Error(ErrorKind::kSecurity, e.code(),
                    "zero copy with the io_uring backend was required but " + backend_reason_,
                    Remedy::kSendmsgBackend);
      }
    }
  } else {
    sender_ = MakeMsgZeroCopySender(fd_.get(), tracker_, &zero_copy_reason_);
    if (!sender_ && opts.zero_copy == ZeroCopyMode::kRequire) {
      throw Error(ErrorKind::kSecurity, EOPNOTSUPP,
                  "zero copy was required but is not available: " + zero_copy_reason_ +
                      "; allow the copy fallback (zero-copy policy auto) or turn zero copy off",
                  Remedy::kZeroCopyNotRequired);
    }
  }
  zero_copy_ = sender_ != nullptr;
  set_blocking(opts.blocking);
}

SocketChannel::~SocketChannel() { close(); }

std::unique_ptr<SocketChannel> SocketChannel::Connect(const std::string& address,
                                                      std::chrono::milliseconds timeout,
                                                      const SocketOptions& opts) {
  return std::make_unique<SocketChannel>(ConnectStream(address, timeout), opts);
}

std::unique_ptr<SocketChannel> AcceptChannel(Listener& l, std::chrono::milliseconds timeout,
                                             const SocketOptions& opts) {
  return std::make_unique<SocketChannel>(l.AcceptFd(timeout), opts);
}

unsigned SocketChannel::features() const {
  return kFeatureShutdown | (zero_copy_ ? kFeatureZeroCopyWrite : 0u);
}

SendBackend SocketChannel::backend() const {
  return sender_ && !sender_refused_ ? sender_->backend() : SendBackend::kSendmsg;
}

std::string SocketChannel::describe() const {
  std::string s = (family_ == AF_UNIX ? "unix " : "tcp ") + peer_;
  if (sender_ && !sender_refused_) {
    s += ", " + sender_->describe(threshold_);
  } else if (sender_refused_) {
    s += ", plain send (" + backend_reason_ + ")";
  } else {
    s += ", copy (" + zero_copy_reason_ + ")";
  }
  return s;
}

ChannelStats SocketChannel::stats() const {
  ChannelStats st;
  st.has_zero_copy_counters = true;
  st.zc = tracker_.counters();
  st.backend = ToString(backend());
  st.fixed_sends = sender_ ? sender_->fixed_sends() : 0;
  st.max_in_flight = sender_ ? sender_->max_in_flight() : 0;
  return st;
}

void SocketChannel::CheckOpen(const char* op) const {
  if (!fd_) throw Error(ErrorKind::kInternal, EBADF, std::string(op) + " on a closed channel");
}

void SocketChannel::ThrowPending() {
  if (pending_error_) {
    Error e = *pending_error_;
    pending_error_.reset();
    throw e;
  }
}

void SocketChannel::set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) {
  CheckOpen("set_io_timeout");
  SetSocketTimeouts(fd_.get(), read, write);
  Channel::set_io_timeouts(read, write);
}

void SocketChannel::OnBlockingEagain(bool for_write) {
  if (io_timeout(for_write).count() >= 0) throw IoTimeoutError(for_write, io_timeout(for_write), peer_);
  wait_io(for_write);
}

void SocketChannel::ThrowIoError(int err, const char* op) const {
  std::string what = std::string(op) + " on " + peer_;
  if (err == EPIPE || err == ECONNRESET) {
    throw Error(ErrorKind::kPeer, err,
                what + " failed: the peer closed or reset the connection (" + std::strerror(err) + ")");
  }
  ThrowErrno(SocketErrorKind(err), err, what);
}

std::string SocketChannel::EnobufsMessage() const {
  rlimit rl{};
  std::string memlock = "unknown";
  if (getrlimit(RLIMIT_MEMLOCK, &rl) == 0) {
    memlock = rl.rlim_cur == RLIM_INFINITY ? std::string("unlimited") : std::to_string(rl.rlim_cur / 1024) + " KiB";
  }
  return std::string(ToString(backend())) +
         " zero-copy send failed with ENOBUFS even after reaping completions and retrying: the kernel could not "
         "pin the pages or queue the notification. Limits now: `ulimit -l` (RLIMIT_MEMLOCK) = " + memlock +
         " (processes with CAP_IPC_LOCK are exempt), net.core.optmem_max = " +
         ReadProcValue("/proc/sys/net/core/optmem_max") +
         " bytes. Raise them (e.g. `ulimit -l unlimited`, `sysctl -w net.core.optmem_max=1048576`) or turn zero "
         "copy off";
}

std::optional<WriteResult> SocketChannel::WriteZeroCopy(std::span<const iovec> iov) {
  bool retried = false;
  for (;;) {
    const uint64_t first = tracker_.next_id();
    const ssize_t n = sender_->Send(iov, blocking_, write_timeout_);
    if (auto e = sender_->TakeError(); e && !pending_error_) pending_error_ = std::move(e);
    const ZeroCopyIds ids{first, tracker_.next_id()};
    if (n >= 0) return WriteResult{static_cast<size_t>(n), false, ids};
    const int e = static_cast<int>(-n);
    if (e == EINTR) continue;
    if (e == EAGAIN) {
      if (!blocking_) return WriteResult{0, true, ids};
      OnBlockingEagain(/*for_write=*/true);
      continue;
    }
    if (e == ETIMEDOUT) throw IoTimeoutError(true, write_timeout_, peer_);
    if (e == EIO) ThrowPending();  // an earlier send failed; the sender said why
    if (e == EOPNOTSUPP && sender_->backend() == SendBackend::kIoUring) {
      sender_refused_ = true;
      backend_reason_ = std::string("io_uring SEND_ZC refused by this ") + (family_ == AF_UNIX ? "UNIX" : "TCP") +
                        " socket (EOPNOTSUPP: no SOCK_SUPPORT_ZC, e.g. UNIX or kTLS); falling back to plain send";
      return std::nullopt;
    }
    if (e == ENOBUFS || e == ENOMEM) {
      if (retried) throw Error(ErrorKind::kLocalIo, ENOBUFS, EnobufsMessage(), Remedy::kZeroCopyOff);
      retried = true;
      ++tracker_.mutable_counters().enobufs_retries;
      // Blocking mode may wait for every completion: that also unpins the
      // pages of earlier sends, which is what RLIMIT_MEMLOCK counts.
      Reap(/*block=*/blocking_);
      continue;
    }
    ThrowPending();  // a failure the sender found while it waited comes first
    ThrowIoError(e, "zero-copy write");
  }
}

WriteResult SocketChannel::writev(std::span<const iovec> iov, unsigned flags) {
  CheckOpen("write");
  ThrowPending();
  size_t total = 0;
  for (const auto& v : iov) total += v.iov_len;
  bool zc = (flags & kWriteZeroCopy) && sender_ && !sender_refused_;
  if (zc && total < threshold_) {
    zc = false;
    ++tracker_.mutable_counters().below_threshold;
  }
  if (zc && tracker_.counters().outstanding() >= reap_outstanding_) Reap(/*block=*/false);
  if (zc) {
    if (std::optional<WriteResult> r = WriteZeroCopy(iov)) return *r;
  }
  // Zero-copy sends still running (io_uring) go out first: a plain send
  // must not overtake their bytes.
  if (sender_ && !sender_refused_) {
    if (!FinishZeroCopySends(blocking_)) return WriteResult{0, true, {}};
  }
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  for (;;) {
    // MSG_DONTWAIT even in blocking mode: a blocking sendmsg that
    // SO_SNDTIMEO cuts short returns the bytes it queued *before* it
    // blocked, so the next call would wait the whole timeout again (a
    // stalled peer held us 2-3x the bound). Here the wait starts when the
    // socket has no room, and ends at the io timeout.
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return WriteResult{static_cast<size_t>(n), false, {}};
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EWOULDBLOCK) {
      if (!blocking_) return WriteResult{0, true, {}};
      WaitWritable();  // throws Error(kTimeout) after the write timeout
      continue;
    }
    ThrowIoError(e, "write");
  }
}

bool SocketChannel::register_region(const void* base, size_t len) {
  if (!sender_ || sender_refused_) return false;
  return sender_->RegisterRegion(base, len);
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
      OnBlockingEagain(/*for_write=*/false);
      continue;
    }
    ThrowIoError(e, "read");
  }
}

FlushResult SocketChannel::Reap(bool block) {
  FlushResult res;
  const uint64_t before = tracker_.counters().released;
  if (sender_) {
    sender_->Reap(/*wait=*/false, kReapSlice);
    // A flush waits for completions, and they stop when the peer stops
    // reading: bounded by the io timeout, counted from the last release.
    auto last_progress = std::chrono::steady_clock::now();
    uint64_t seen = tracker_.counters().released;
    while (block && !tracker_.all_released()) {
      sender_->Reap(/*wait=*/true, write_timeout_.count() >= 0 ? std::min(kReapSlice, write_timeout_) : kReapSlice);
      if (auto e = sender_->TakeError()) {
        if (!pending_error_) pending_error_ = std::move(e);
        break;
      }
      if (shut_down_.load(std::memory_order_relaxed)) {
        throw Error(ErrorKind::kPeer, ESHUTDOWN,
                    "zero-copy flush on " + peer_ + " abandoned: the channel was shut down (the migration is "
                    "failing elsewhere)");
      }
      const auto now = std::chrono::steady_clock::now();
      if (tracker_.counters().released != seen) {
        seen = tracker_.counters().released;
        last_progress = now;
      } else if (write_timeout_.count() >= 0 && now - last_progress >= write_timeout_) {
        throw Error(ErrorKind::kTimeout, ETIMEDOUT,
                    "zero-copy flush on " + peer_ + ": " + std::to_string(tracker_.counters().outstanding()) +
                        " sends still pinned after " + std::to_string(write_timeout_.count()) +
                        " ms without a completion (the peer stopped reading, or the path stopped forwarding)");
      }
    }
    if (auto e = sender_->TakeError(); e && !pending_error_) pending_error_ = std::move(e);
  }
  res.complete = tracker_.all_released();
  res.released = tracker_.counters().released - before;
  res.any_zero_copied = tracker_.TakeZeroCopiedSinceLast();
  ThrowPending();
  return res;
}

FlushResult SocketChannel::flush() {
  CheckOpen("flush");
  return Reap(/*block=*/true);
}

FlushResult SocketChannel::try_flush() {
  CheckOpen("flush");
  return Reap(/*block=*/false);
}

void SocketChannel::wait_released(ZeroCopyIds ids) {
  CheckOpen("wait");
  const auto start = std::chrono::steady_clock::now();
  while (!tracker_.IsReleased(ids)) {
    Reap(/*block=*/false);
    if (!tracker_.IsReleased(ids) && sender_) sender_->Reap(/*wait=*/true, kReapSlice);
    if (write_timeout_.count() >= 0 && std::chrono::steady_clock::now() - start >= write_timeout_ &&
        !tracker_.IsReleased(ids)) {
      throw Error(ErrorKind::kTimeout, ETIMEDOUT,
                  "zero-copy writes on " + peer_ + " not released after " + std::to_string(write_timeout_.count()) +
                      " ms");
    }
  }
}

void SocketChannel::set_release_callback(ReleaseCallback cb) { tracker_.set_release_callback(std::move(cb)); }

bool SocketChannel::FinishZeroCopySends(bool wait) {
  const ssize_t r = sender_->FinishPending(wait, write_timeout_);
  if (r == 0) return true;
  if (r == -EAGAIN) return false;
  if (auto e = sender_->TakeError(); e && !pending_error_) pending_error_ = std::move(e);
  if (r == -ETIMEDOUT) throw IoTimeoutError(true, write_timeout_, peer_);
  ThrowPending();
  ThrowIoError(static_cast<int>(-r), "zero-copy write");
}

void SocketChannel::shutdown(ShutdownHow how) {
  if (how != ShutdownHow::kWrite) {
    // Never throws (channel.h): stopping this end cannot fail in a way the
    // caller could act on; ENOTCONN (already reset) and a closed channel
    // leave nothing to do.
    if (!fd_) return;
    if (how == ShutdownHow::kBoth) shut_down_.store(true, std::memory_order_relaxed);
    (void)::shutdown(fd_.get(), how == ShutdownHow::kRead ? SHUT_RD : SHUT_RDWR);
    return;
  }
  CheckOpen("shutdown");
  if (write_shut_) return;
  // Half-close after the last zero-copy bytes, not before, also in
  // non-blocking mode: a FIN queued while a chain is still in flight would
  // end the stream before the chain's bytes (and fail them). Waiting is
  // bounded by the write timeout, as for a blocking close_notify.
  if (sender_ && !sender_refused_) FinishZeroCopySends(/*wait=*/true);
  shut_down_.store(true, std::memory_order_relaxed);
  ShutdownWriteOrThrow(fd_.get(), "the peer");
  write_shut_ = true;
}

void SocketChannel::close() noexcept {
  // The sender goes first: an io_uring sender waits (bounded) for the
  // kernel to let go of what it still holds before its ring disappears.
  sender_.reset();
  fd_.reset();
}

UniqueFd SocketChannel::release_fd() { return std::move(fd_); }

void SocketChannel::set_blocking(bool blocking) {
  CheckOpen("set_blocking");
  SetNonBlocking(fd_.get(), !blocking, "a socket channel");
  blocking_ = blocking;
}

bool SocketChannel::wait_readable(std::chrono::milliseconds timeout) {
  CheckOpen("wait");
  return WaitFdReadable(fd_.get(), timeout);
}

void SocketChannel::wait_io(bool for_write) {
  CheckOpen("wait");
  if (for_write) {
    WaitWritable();
    return;
  }
  WaitFdReadyOrThrow(fd_.get(), for_write, io_timeout(for_write), peer_);
}

void SocketChannel::WaitWritable() {
  using Clock = std::chrono::steady_clock;
  const bool bounded = write_timeout_.count() >= 0;
  const auto deadline = Clock::now() + (bounded ? write_timeout_ : std::chrono::milliseconds(0));
  for (;;) {
    std::chrono::milliseconds left(-1);
    if (bounded) {
      left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) throw IoTimeoutError(/*for_write=*/true, write_timeout_, peer_);
    }
    const short ev = PollFd(fd_.get(), POLLOUT, left);
    if (ev == 0) throw IoTimeoutError(/*for_write=*/true, write_timeout_, peer_);
    // Room, a hang-up or a socket error: the next send says which.
    if ((ev & (POLLOUT | POLLHUP)) || !sender_) return;
    // POLLERR alone: zero-copy notifications queued (or a socket error,
    // which the reap reports as pending and the next send throws).
    sender_->Reap(/*wait=*/false, std::chrono::milliseconds(0));
    if (auto e = sender_->TakeError()) {
      if (!pending_error_) pending_error_ = std::move(e);
      return;
    }
  }
}

}  // namespace ktm

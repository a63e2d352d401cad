// SocketChannel: a connected TCP (IPv4/IPv6) or UNIX stream socket.
//
// Zero copy: when the options allow it, the constructor enables SO_ZEROCOPY
// and remembers whether the kernel accepted it (zero_copy_available()).
// writev(kWriteZeroCopy) then uses sendmsg(MSG_ZEROCOPY) for writes of at
// least `zero_copy_threshold` bytes; smaller writes are copied, because
// pinning pages and queueing a notification costs more than copying them.
// Each zero-copy sendmsg gets one write id; its pages stay pinned until the
// kernel's completion for that id has been read from the error queue (see
// ZeroCopyTracker). flush() waits for all of them.
//
// ENOBUFS from a zero-copy send means the kernel could not pin the pages
// (RLIMIT_MEMLOCK) or could not allocate the notification (optmem). The
// channel then drains the error queue (blocking: waits for every completion;
// non-blocking: takes what is there) and retries once; a second ENOBUFS is
// an Error naming both limits and their current values.
//
// Errors the kernel reports on the error queue (ee_errno != 0) are kept and
// thrown by the next writev/flush, never dropped.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "channel/channel.h"
#include "channel/policy.h"
#include "channel/unique_fd.h"
#include "channel/uring_sender.h"
#include "channel/zerocopy_tracker.h"

namespace ktm {

// How zero-copy writes reach the kernel.
//   kSendmsg: sendmsg(MSG_ZEROCOPY); completions from the socket error queue.
//   kIoUring: IORING_OP_SENDMSG_ZC / SEND_ZC (fixed buffers once a region is
//             registered); completions are the ring's notification CQEs.
// Both feed the same ZeroCopyTracker, so ids, flush() and the release
// callback mean the same thing.
enum class SendBackend { kSendmsg, kIoUring };
SendBackend ParseSendBackend(const std::string& s);
const char* ToString(SendBackend b);

// Blocks until `fd` is readable (or writable), retrying on EINTR. What every
// channel's wait_io() does for the *_all helpers in non-blocking mode.
void WaitFdReady(int fd, bool for_write);
// Waits up to `timeout` for `fd` to be readable; true if it is.
bool WaitFdReadable(int fd, std::chrono::milliseconds timeout);

struct SocketOptions {
  ZeroCopyMode zero_copy = ZeroCopyMode::kAuto;
  SendBackend backend = SendBackend::kSendmsg;
  size_t zero_copy_threshold = 10 * 1024;
  bool blocking = true;
  // Non-blocking drain of the error queue once this many sends are
  // outstanding, so notifications do not pile up against optmem_max.
  uint64_t reap_outstanding = 256;
};

class SocketChannel : public Channel {
 public:
  // Takes a connected stream socket. Sets TCP_NODELAY on TCP sockets and
  // probes SO_ZEROCOPY as `opts.zero_copy` says. Throws Error if zero copy
  // is required but the socket cannot do it (the reason is in the message).
  explicit SocketChannel(UniqueFd fd, const SocketOptions& opts = {});
  ~SocketChannel() override;

  // Connects to "HOST:PORT", "[V6ADDR]:PORT" or "unix:PATH", trying every
  // resolved address, giving up after `timeout` per attempt.
  static std::unique_ptr<SocketChannel> Connect(const std::string& address,
                                                std::chrono::milliseconds timeout,
                                                const SocketOptions& opts = {});

  unsigned features() const override;
  std::string describe() const override;
  WriteResult writev(std::span<const iovec> iov, unsigned flags) override;
  ReadResult readv(std::span<const iovec> iov) override;
  FlushResult flush() override;
  FlushResult try_flush() override;
  bool is_released(ZeroCopyIds ids) const override { return tracker_.IsReleased(ids); }
  void set_release_callback(ReleaseCallback cb) override;
  // io_uring backend: registers the region as fixed buffers (see
  // UringSender::RegisterRegion). Returns false with the sendmsg backend.
  bool register_region(const void* base, size_t len) override;
  void shutdown(ShutdownHow how) override;
  void close() override;
  void set_blocking(bool blocking) override;
  bool blocking() const override { return blocking_; }
  bool wait_readable(std::chrono::milliseconds timeout) override { return WaitFdReadable(fd_.get(), timeout); }

  // Blocks until the given ids are released (or throws on error).
  void wait_released(ZeroCopyIds ids);

  bool zero_copy_available() const { return zero_copy_; }
  // Why zero copy is not in use ("" when it is).
  const std::string& zero_copy_reason() const { return zero_copy_reason_; }
  const ZeroCopyCounters& zero_copy_counters() const { return tracker_.counters(); }
  size_t zero_copy_threshold() const { return threshold_; }
  SendBackend backend() const { return uring_ && !uring_fallback_ ? SendBackend::kIoUring : SendBackend::kSendmsg; }
  // Why the requested backend is not the one in use ("" when it is).
  const std::string& backend_reason() const { return backend_reason_; }
  uint64_t uring_fixed_sends() const { return uring_ ? uring_->fixed_sends() : 0; }

  int fd() const { return fd_.get(); }
  int family() const { return family_; }
  // Hands the fd to another layer (e.g. TLS). The channel is closed after.
  UniqueFd release_fd();

 protected:
  void wait_io(bool for_write) override;

 private:
  // Reads the error queue. block=true waits until nothing is outstanding.
  FlushResult DrainErrorQueue(bool block);
  void ThrowPending();
  void CheckOpen(const char* op) const;
  [[noreturn]] void ThrowIoError(int err, const char* op) const;
  std::string EnobufsMessage() const;
  WriteResult WriteViaUring(std::span<const iovec> iov, bool* fell_back);
  void OnUringNotify(uint64_t id, bool copied);

  UniqueFd fd_;
  int family_ = 0;
  bool blocking_ = true;
  bool zero_copy_ = false;
  std::string zero_copy_reason_;
  size_t threshold_;
  uint64_t reap_outstanding_;
  ZeroCopyTracker tracker_;
  std::optional<Error> pending_error_;
  std::string peer_;
  std::unique_ptr<UringSender> uring_;
  bool uring_fallback_ = false;
  std::string backend_reason_;
  std::vector<uint64_t> uring_unnotified_;  // scratch, reserved once
};

// A listening socket. Accept() returns SocketChannels.
class Listener {
 public:
  // Listens on "HOST:PORT" (PORT 0 picks a free port), "[V6]:PORT" or
  // "unix:PATH" (a stale socket file at PATH is replaced).
  static Listener Listen(const std::string& address, int backlog = 64);

  // Waits up to `timeout` (negative: forever) for a connection. Throws
  // Error with ETIMEDOUT when none arrives in time.
  std::unique_ptr<SocketChannel> Accept(std::chrono::milliseconds timeout,
                                        const SocketOptions& opts = {});

  // The bound address in the same syntax Listen takes (port filled in).
  std::string address() const;
  uint16_t port() const;
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  int family_ = 0;
  std::string unix_path_;
};

// First word of a /proc or /sys file (e.g. a sysctl), or "unknown".
std::string ReadProcValue(const char* path);

// "HOST:PORT" of a socket's peer or local side, "unix:PATH" for AF_UNIX.
std::string SockName(int fd, bool peer);

}  // namespace ktm

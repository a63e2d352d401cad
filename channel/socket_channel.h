// SocketChannel: a connected TCP (IPv4/IPv6) or UNIX stream socket.
//
// Zero copy: when the options allow it, the constructor sets up a
// ZeroCopySender (MSG_ZEROCOPY or io_uring, see zero_copy_sender.h) and
// remembers whether the kernel accepted it (zero_copy_available()).
// writev(kWriteZeroCopy) then hands writes of at least `zero_copy_threshold`
// bytes to it; smaller writes are copied, because pinning pages and queueing
// a notification costs more than copying them. Each zero-copy kernel request
// gets one write id; its pages stay pinned until the kernel's completion for
// that id has been applied (see ZeroCopyTracker). flush() waits for all.
//
// ENOBUFS from a zero-copy send means the kernel could not pin the pages
// (RLIMIT_MEMLOCK) or could not allocate the notification (optmem). The
// channel then reaps completions (blocking: waits for every one;
// non-blocking: takes what is there) and retries once; a second ENOBUFS is
// an Error naming both limits and their current values.
//
// Errors the kernel reports for earlier sends (ee_errno != 0) are kept and
// thrown by the next writev/flush, never dropped.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include "base/error.h"
#include "base/policy.h"
#include "base/unique_fd.h"
#include "channel/address.h"
#include "channel/channel.h"
#include "channel/zerocopy_tracker.h"

namespace ktm {

class ZeroCopySender;

struct SocketOptions {
  ZeroCopyMode zero_copy = ZeroCopyMode::kAuto;
  SendBackend backend = SendBackend::kSendmsg;
  size_t zero_copy_threshold = 10 * 1024;
  bool blocking = true;
  // Non-blocking reap of completions once this many sends are outstanding,
  // so notifications do not pile up against optmem_max.
  uint64_t reap_outstanding = 256;
};

class SocketChannel : public Channel {
 public:
  // Takes a connected stream socket. Sets TCP_NODELAY on TCP sockets and
  // sets up zero copy as `opts.zero_copy` says. Throws Error(kSecurity) if
  // zero copy is required but the socket cannot do it (the reason is in the
  // message).
  explicit SocketChannel(UniqueFd fd, const SocketOptions& opts = {});
  ~SocketChannel() override;

  // ConnectStream (address.h) wrapped in a channel.
  static std::unique_ptr<SocketChannel> Connect(const std::string& address,
                                                std::chrono::milliseconds timeout,
                                                const SocketOptions& opts = {});

  unsigned features() const override;
  std::string describe() const override;
  ChannelStats stats() const override;
  int splice_fd() const override { return fd_.get(); }
  WriteResult writev(std::span<const iovec> iov, unsigned flags) override;
  ReadResult readv(std::span<const iovec> iov) override;
  FlushResult flush() override;
  FlushResult try_flush() override;
  bool is_released(ZeroCopyIds ids) const override { return tracker_.IsReleased(ids); }
  void set_release_callback(ReleaseCallback cb) override;
  // io_uring backend: registers the region as fixed buffers. Returns false
  // with the sendmsg backend.
  bool register_region(const void* base, size_t len) override;
  void shutdown(ShutdownHow how) override;
  void close() noexcept override;
  void set_blocking(bool blocking) override;
  bool blocking() const override { return blocking_; }
  bool wait_readable(std::chrono::milliseconds timeout) override;
  void set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) override;

  // Blocks until the given ids are released (or throws on error).
  void wait_released(ZeroCopyIds ids);

  bool zero_copy_available() const { return zero_copy_; }
  // Why zero copy is not in use ("" when it is).
  const std::string& zero_copy_reason() const { return zero_copy_reason_; }
  const ZeroCopyCounters& zero_copy_counters() const { return tracker_.counters(); }
  size_t zero_copy_threshold() const { return threshold_; }
  // The backend that issues zero-copy sends now (sendmsg after an io_uring
  // socket refused SEND_ZC).
  SendBackend backend() const;
  // Why the requested backend is not the one in use ("" when it is).
  const std::string& backend_reason() const { return backend_reason_; }

  int fd() const { return fd_.get(); }
  int family() const { return family_; }
  // Hands the fd to another layer (e.g. TLS). The channel is closed after.
  UniqueFd release_fd();

 protected:
  void wait_io(bool for_write) override;

 private:
  // Applies available completions; block=true waits until nothing is
  // outstanding.
  FlushResult Reap(bool block);
  void ThrowPending();
  void CheckOpen(const char* op) const;
  [[noreturn]] void ThrowIoError(int err, const char* op) const;
  // EAGAIN from a blocking call: the socket timeout expired (or, without
  // one, wait and retry).
  void OnBlockingEagain(bool for_write);
  // Waits for room to send, at most the write timeout from now (then
  // Error(kTimeout)). Zero-copy notifications on the error queue wake
  // poll with POLLERR: they are applied and the wait goes on, against the
  // same deadline (no spin, no restarted clock).
  void WaitWritable();
  std::string EnobufsMessage() const;
  // Zero-copy send through the sender; nullopt when the socket refused zero
  // copy (then the caller copies, now and from then on).
  std::optional<WriteResult> WriteZeroCopy(std::span<const iovec> iov);
  // Waits for zero-copy sends still running to put their bytes on the
  // socket; `wait` false: only checks. False: not waiting and not done
  // yet. Throws their failure (kTimeout after the write timeout).
  bool FinishZeroCopySends(bool wait);

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
  std::unique_ptr<ZeroCopySender> sender_;
  bool sender_refused_ = false;  // the socket refused the sender's sends (EOPNOTSUPP)
  // Set by shutdown() (possibly from another thread, to unblock a writer):
  // a flush then stops waiting for completions that may never come.
  std::atomic<bool> shut_down_{false};
  bool write_shut_ = false;  // shutdown(kWrite) succeeded (the writer's thread only)
  std::string backend_reason_;
};

// Accepts one connection on `l` as a SocketChannel (see Listener::AcceptFd).
std::unique_ptr<SocketChannel> AcceptChannel(Listener& l, std::chrono::milliseconds timeout,
                                             const SocketOptions& opts = {});

}  // namespace ktm

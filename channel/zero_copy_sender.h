// How a SocketChannel hands pages to the kernel without copying them.
//
// Two implementations, one contract:
//   - MSG_ZEROCOPY: sendmsg(MSG_ZEROCOPY); completions are read from the
//     socket error queue (ranges of 32-bit send numbers, see ZeroCopyTracker).
//   - io_uring: IORING_OP_SENDMSG_ZC, or SEND_ZC from registered buffers;
//     completions are the ring's notification CQEs.
// Both number their kernel requests with ZeroCopyTracker::OnSend() and feed
// the same tracker, so write ids, flush() and the release callback mean the
// same thing whichever backend runs. The socket, its blocking mode, the
// threshold and the ENOBUFS retry policy stay with SocketChannel.
//
// Not thread-safe: one sender per socket, used by the socket's writer.
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>

#include "base/error.h"
#include "base/policy.h"
#include "channel/zerocopy_tracker.h"

namespace ktm {

class ZeroCopySender {
 public:
  virtual ~ZeroCopySender() = default;

  // Sends `iov` with the pages handed to the kernel. Returns the bytes sent
  // (possibly short), or -errno: -EAGAIN (non-blocking and nothing sent),
  // -ENOBUFS/-ENOMEM (could not pin or notify: reap and retry), -EOPNOTSUPP
  // (this socket refuses zero copy: send by copy from now on), other errors.
  // Every kernel request that may pin pages got an id from the tracker.
  // Blocking sends give up after `timeout` without progress (-ETIMEDOUT or
  // -EAGAIN; negative: never). "Sent" may mean "handed to the kernel": the
  // io_uring backend returns with its requests still running (see
  // uring_sender.h); a failure of theirs is returned by a later call as
  // -EIO with TakeError() saying what failed.
  virtual ssize_t Send(std::span<const iovec> iov, bool blocking, std::chrono::milliseconds timeout) = 0;

  // Waits until no earlier send can still put bytes on the socket, so a
  // plain send or a shutdown that follows cannot overtake them (io_uring
  // keeps a chain in flight after Send returns; sendmsg has nothing to do).
  // 0, -EAGAIN (non-blocking, still running) or -errno (TakeError() may
  // say more).
  virtual ssize_t FinishPending(bool blocking, std::chrono::milliseconds timeout) {
    (void)blocking, (void)timeout;
    return 0;
  }

  // Applies completions that are already available. With `wait` it first
  // waits (up to `max_wait`) for at least one to arrive.
  virtual void Reap(bool wait, std::chrono::milliseconds max_wait) = 0;

  // A failure the kernel reported for an earlier send, if any (taken once).
  virtual std::optional<Error> TakeError() = 0;

  // Pins [base, base+len) once for many sends, where the backend can.
  // Returns false when it cannot (the sendmsg backend). Throws on refusal.
  virtual bool RegisterRegion(const void* base, size_t len) {
    (void)base, (void)len;
    return false;
  }

  virtual SendBackend backend() const = 0;
  // "MSG_ZEROCOPY on (writes >= N bytes)" and the like.
  virtual std::string describe(size_t threshold) const = 0;
  virtual uint64_t fixed_sends() const { return 0; }
  // Most zero-copy requests waiting for their result at once (io_uring).
  virtual uint64_t max_in_flight() const { return 0; }
};

// MSG_ZEROCOPY on `fd`. Enables SO_ZEROCOPY; returns nullptr with `why`
// set when the kernel refuses it (e.g. on UNIX sockets).
std::unique_ptr<ZeroCopySender> MakeMsgZeroCopySender(int fd, ZeroCopyTracker& tracker, std::string* why);

// io_uring zero-copy sends on `fd` (one ring). Throws Error(kLocalIo) with
// the reason when io_uring or SEND_ZC is unavailable.
std::unique_ptr<ZeroCopySender> MakeUringZeroCopySender(int fd, ZeroCopyTracker& tracker);

// Asks the kernel whether `fd` takes io_uring zero-copy sends, with a
// zero-length SEND_ZC (nothing reaches the wire). nullopt if it does, else
// the reason (kTLS and UNIX sockets answer EOPNOTSUPP).
std::optional<std::string> ProbeSendZc(int fd);

// Whether this kernel's io_uring has IORING_OP_SEND_ZC (nullopt) or why not.
std::optional<std::string> ProbeUringSendZcOpcode();

}  // namespace ktm

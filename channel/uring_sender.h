// io_uring zero-copy send for one socket: IORING_OP_SENDMSG_ZC, or
// IORING_OP_SEND_ZC from registered buffers for a fixed region (the image).
//
// The two-CQE protocol: the first CQE of a request says how many bytes were
// sent and, with IORING_CQE_F_MORE, that a notification will follow; the
// later CQE with IORING_CQE_F_NOTIF says the kernel has let go of the pages.
// With IORING_SEND_ZC_REPORT_USAGE the notification's res carries
// IORING_NOTIF_USAGE_ZC_COPIED when the kernel copied after all. Each
// request's user_data is its write id, so notifications feed the same
// ZeroCopyTracker (and release accounting) as MSG_ZEROCOPY completions.
// Result CQEs and notification CQEs are reaped as they arrive, in any
// order; a buffer is released only by its own notification.
//
// Several requests in flight, TCP byte order kept: a blocking Send() hands
// the kernel its bytes as one IOSQE_IO_LINK chain of up to kMaxChain
// requests and returns without waiting for them. The kernel runs a chain in
// order, and MSG_WAITALL makes io_uring finish a short stream send itself,
// so a request ends either complete or failed, and a failure cancels the
// rest of its chain. Chains are not ordered against each other (a chain
// waiting for socket space could be overtaken by the next one issued
// inline), so the next Send() first waits for the previous chain's result
// CQEs (not its notifications): at most one chain is on the socket at a
// time. A chain that ends early (ENOBUFS/ENOMEM while pinning, a short
// count) is resubmitted from the first unsent byte, in order, with new ids;
// any other failure is reported by the next Send()/Reap() (TakeError), the
// way MSG_ZEROCOPY reports errors of earlier sends.
//
// Until the socket has taken one send, and in non-blocking mode, Send() waits
// for its own result and returns the real count (short counts, -EAGAIN and
// -EOPNOTSUPP then reach the caller, who may fall back to plain send).
//
// Ring setup: default flags on purpose. IORING_SETUP_SINGLE_ISSUER (needed
// by DEFER_TASKRUN) binds the ring to one task, but a channel is written
// from a new thread each iteration (transport/source.cc) and the C API may
// poll from any thread. And with a chain left in flight when Send()
// returns, its retries (poll-driven task work) must run while the writer
// sleeps elsewhere, e.g. in read() for the peer's answer: DEFER_TASKRUN
// runs task work only inside io_uring_enter and COOP_TASKRUN does not wake
// a sleeping task, so either could stall the stream. The socket is a
// registered file (io_uring_register_files) where the kernel allows it,
// saving a file lookup per request.
//
// Private to channel/: the public face is UringZeroCopySender
// (zero_copy_sender.h), so no public header includes liburing.
//
// One ring per channel (a channel has one writer at a time). Not
// thread-safe.
#pragma once

#include <liburing.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <chrono>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "base/error.h"

namespace ktm {

// liburing 2.3's headers predate these (kernel 6.2 uapi).
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif

class UringSender {
 public:
  // Most requests in one chain (so in flight at once).
  static constexpr size_t kMaxChain = 32;
  // A write is split into requests of at least this many bytes (an iovec
  // run inside the registered region is always its own request).
  static constexpr size_t kMinRequestBytes = 128 << 10;

  // Sets up the ring. Throws Error (with the reason) if io_uring or
  // IORING_OP_SEND_ZC is unavailable.
  explicit UringSender(int fd, unsigned entries = 64);
  ~UringSender();
  UringSender(const UringSender&) = delete;
  UringSender& operator=(const UringSender&) = delete;

  // Registers [base, base+len) as fixed buffers (1 GiB per buffer, the
  // kernel's limit), pinned once for the life of the ring instead of per
  // send. Throws Error naming RLIMIT_MEMLOCK when the kernel refuses.
  void RegisterRegion(const void* base, size_t len);
  bool has_region() const { return !regions_.empty(); }

  // Called once per write id when the kernel lets go of its pages: from a
  // notification CQE, or at once for a request that ended without one.
  using NotifyFn = std::function<void(uint64_t id, bool copied)>;
  using NextIdFn = std::function<uint64_t()>;

  // Sends `iov` (see the file comment for when it waits). Every request
  // gets the next id from `next_id`, in order. The caller's iovec array may
  // go away on return; the bytes it points to stay the kernel's until
  // their ids are notified. Returns the bytes taken (pipelined: all of
  // them) or -errno: -EAGAIN (non-blocking, socket full, or the previous
  // chain still running), -EOPNOTSUPP (socket refuses SEND_ZC: nothing of
  // this call was sent), -ENOBUFS/-ENOMEM (synchronous mode only), -EIO
  // (an earlier chain failed: TakeError() has why), -ETIMEDOUT (no
  // progress within `timeout`, negative: none; the requests are cancelled).
  ssize_t Send(std::span<const iovec> iov, bool blocking, std::chrono::milliseconds timeout,
               const NextIdFn& next_id, const NotifyFn& notify);

  // Processes CQEs already there; first waits up to `wait` for one (0: no
  // wait, negative: forever). A chain that completes here is settled
  // (resubmitted if it ended early, else its failure kept for TakeError).
  void Reap(std::chrono::milliseconds wait, const NotifyFn& notify);

  // Waits until no chain is on the socket (its bytes all sent or failed),
  // so a plain send or a shutdown cannot overtake it. 0, -EAGAIN
  // (non-blocking and still running), -ETIMEDOUT, or -EIO (TakeError()).
  int Drain(bool blocking, std::chrono::milliseconds timeout, const NotifyFn& notify);

  // The failure of an earlier chain, if any (taken once).
  std::optional<Error> TakeError() { return std::exchange(error_, std::nullopt); }

  // No request waits for its result CQE (notifications may still be due).
  bool idle() const { return chain_.empty(); }
  uint64_t fixed_sends() const { return fixed_sends_; }
  // Most requests that were waiting for their result CQE at once.
  uint64_t max_in_flight() const { return max_in_flight_; }
  bool registered_fd() const { return fixed_file_; }

 private:
  // One SEND_ZC/SENDMSG_ZC request: a copy of its iovecs (the caller's
  // array may be gone before the kernel looks at a linked request) and its
  // outcome.
  struct Request {
    std::vector<iovec> iov;
    msghdr msg{};
    size_t len = 0;
    int fixed_index = -1;  // registered buffer, single iovec; -1: SENDMSG_ZC
    uint64_t id = 0;
    uint64_t user_data = 0;
    ssize_t res = 0;
    bool done = false;  // result CQE seen
  };

  int FixedIndex(const void* p, size_t len) const;
  // Splits `iov` into requests appended to chain_ (nothing submitted).
  void BuildChain(std::span<const iovec> iov, bool blocking);
  // Queues chain_ (linked when blocking) with fresh ids and submits it.
  // `next_id` null: a resubmission, the requests keep their ids.
  int SubmitChain(bool blocking, const NextIdFn* next_id);
  // Waits until every request of chain_ has its result (bounded by
  // `timeout` without progress; then cancels and returns -ETIMEDOUT).
  int WaitChain(std::chrono::milliseconds timeout, const NotifyFn& notify);
  void HandleCqe(const io_uring_cqe* cqe, const NotifyFn& notify);
  // In-order bytes sent by a finished chain, or -errno of its first
  // failure when nothing was sent.
  ssize_t ChainResult() const;
  // A finished pipelined chain: resubmits what it did not send (once per
  // failure kind that allows it) or records the failure. 0 or -EIO.
  int Settle(std::chrono::milliseconds timeout, const NotifyFn& notify);
  void Prep(io_uring_sqe* sqe, Request& r, int msg_flags);
  // Releases `id` once no request for it is open or awaits a notification.
  void MaybeRelease(uint64_t id, const NotifyFn& notify);
  void Close(uint64_t id, const NotifyFn& notify);

  // A write id is released when no request for it may still be
  // (re)submitted (`open`) and every request that carried it has finished:
  // result CQE seen and, if that announced one (F_MORE), its notification.
  struct Pin {
    int32_t live = 0;  // requests for this id not finished
    bool open = true;
    bool copied = false;
  };
  // One submitted request, by user_data (the id, plus kRetryTag for a
  // resubmission, so the two requests of one id stay apart).
  struct Attempt {
    bool result = false;
    bool more = false;   // the result announced a notification
    bool notif = false;  // the notification arrived (it may come first)
  };
  static constexpr uint64_t kRetryTag = 1ull << 62;
  void FinishAttempt(uint64_t user_data, const NotifyFn& notify);
  bool NotificationsDue() const;

  int fd_;
  io_uring ring_{};
  bool ring_ok_ = false;
  bool fixed_file_ = false;   // fd_ is registered file 0
  bool confirmed_ = false;    // the socket has taken a SEND_ZC
  std::vector<iovec> regions_;
  std::vector<Request> chain_;  // requests of the one chain on the socket
  size_t waiting_ = 0;          // of those, without a result CQE yet
  std::unordered_map<uint64_t, Pin> pins_;
  std::unordered_map<uint64_t, Attempt> attempts_;
  // Requests whose result announced no notification: one may come anyway
  // (6.18 notifies requests cancelled by a failed link) and is ignored.
  std::unordered_set<uint64_t> strays_;
  bool resubmitted_ = false;    // chain_ is already a resubmission
  std::chrono::milliseconds timeout_{-1};  // the last Send()'s, for Reap()'s settling
  std::optional<Error> error_;
  uint64_t fixed_sends_ = 0;
  uint64_t max_in_flight_ = 0;
};

}  // namespace ktm

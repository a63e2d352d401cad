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
//
// Private to channel/: the public face is UringZeroCopySender
// (zero_copy_sender.h), so no public header includes liburing.
//
// One ring per sending thread: a channel has one writer, so one ring per
// channel. Not thread-safe.
#pragma once

#include <liburing.h>
#include <sys/uio.h>

#include <chrono>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

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
  // Sets up the ring. Throws Error (with the reason) if io_uring or
  // IORING_OP_SEND_ZC is unavailable.
  UringSender(int fd, unsigned entries = 64);
  ~UringSender();
  UringSender(const UringSender&) = delete;
  UringSender& operator=(const UringSender&) = delete;

  // Registers [base, base+len) as fixed buffers (1 GiB per buffer, the
  // kernel's limit), pinned once for the life of the ring instead of per
  // send. Throws Error naming RLIMIT_MEMLOCK when the kernel refuses.
  void RegisterRegion(const void* base, size_t len);
  bool has_region() const { return !regions_.empty(); }

  // Called for every notification: (write id, copied).
  using NotifyFn = std::function<void(uint64_t id, bool copied)>;

  // Sends `iov`; every request gets the next id from `next_id` (called once
  // per request, in order). Waits for the requests' first CQEs, handling
  // notifications that arrive meanwhile through `notify`. Returns bytes sent
  // (possibly short) or -errno of the first failure. Runs of the iovec
  // inside the registered region go out as fixed-buffer SEND_ZC requests
  // (linked, so they stay in order; only with MSG_WAITALL, since a short
  // send would not break the link: without it one request is sent per
  // call); otherwise one SENDMSG_ZC.
  // `ids_without_notif` receives ids whose request ended without a
  // notification (nothing stayed pinned).
  // `timeout` (negative: none) bounds the wait for the requests' first
  // CQEs; past it the socket's requests are cancelled and -ETIMEDOUT
  // returned.
  ssize_t Send(std::span<const iovec> iov, int msg_flags, std::chrono::milliseconds timeout,
               const std::function<uint64_t()>& next_id, const NotifyFn& notify,
               std::vector<uint64_t>& ids_without_notif);

  // Processes notifications already in the CQ; first waits up to `wait`
  // for one (0: no wait, negative: forever).
  void Reap(std::chrono::milliseconds wait, const NotifyFn& notify);

  uint64_t fixed_sends() const { return fixed_sends_; }

 private:
  int FixedIndex(const void* p, size_t len) const;
  void Handle(io_uring_cqe* cqe, const NotifyFn& notify, unsigned* firsts,
              std::vector<uint64_t>& ids_without_notif);

  int fd_;
  io_uring ring_{};
  bool ring_ok_ = false;
  std::vector<iovec> regions_;
  uint64_t fixed_sends_ = 0;
  // Per Send(): bytes of each request by index, for in-order summing.
  std::vector<ssize_t> results_;
  std::vector<uint64_t> req_ids_;
  msghdr msg_{};
};

}  // namespace ktm

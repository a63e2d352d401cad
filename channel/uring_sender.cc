#include "channel/uring_sender.h"

#include <chrono>

#include "channel/zero_copy_sender.h"

#include <sys/resource.h>

#include <algorithm>
#include <cstring>

#include "base/error.h"

namespace ktm {
namespace {
constexpr size_t kMaxFixedBuffer = 1ull << 30;  // kernel limit per registered buffer
// user_data of our own cancel requests (write ids never get this large).
constexpr uint64_t kCancelUserData = ~0ull;
}

std::optional<std::string> ProbeSendZc(int fd) {
  io_uring ring;
  int rc = io_uring_queue_init(4, &ring, 0);
  if (rc < 0) return std::string("io_uring unavailable: ") + std::strerror(-rc);
  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  static char byte;
  io_uring_prep_send_zc(sqe, fd, &byte, 0, MSG_DONTWAIT | MSG_NOSIGNAL, 0);
  io_uring_submit(&ring);
  int res = 0;
  // First CQE, then the notification if one is announced.
  for (bool more = true; more;) {
    io_uring_cqe* cqe = nullptr;
    if (io_uring_wait_cqe(&ring, &cqe) < 0) break;
    if (!(cqe->flags & IORING_CQE_F_NOTIF)) res = cqe->res;
    more = (cqe->flags & IORING_CQE_F_MORE) != 0;
    io_uring_cqe_seen(&ring, cqe);
  }
  io_uring_queue_exit(&ring);
  if (res == -EOPNOTSUPP) {
    return std::string("io_uring SEND_ZC refused by this socket (EOPNOTSUPP: a ULP such as kTLS clears "
                       "SOCK_SUPPORT_ZC)");
  }
  if (res < 0 && res != -EAGAIN) return std::string("io_uring SEND_ZC probe failed: ") + std::strerror(-res);
  return std::nullopt;
}

UringSender::UringSender(int fd, unsigned entries) : fd_(fd) {
  io_uring_probe* probe = io_uring_get_probe();
  if (!probe) throw Error(ErrorKind::kLocalIo, ENOSYS, "io_uring is not available in this kernel (or is disabled by sysctl)");
  const bool zc = io_uring_opcode_supported(probe, IORING_OP_SEND_ZC) &&
                  io_uring_opcode_supported(probe, IORING_OP_SENDMSG_ZC);
  io_uring_free_probe(probe);
  if (!zc) throw Error(ErrorKind::kLocalIo, EOPNOTSUPP, "this kernel's io_uring has no SEND_ZC/SENDMSG_ZC (needs 6.0+)");
  int rc = io_uring_queue_init(entries, &ring_, 0);
  if (rc < 0) ThrowErrno(ErrorKind::kLocalIo, -rc, "io_uring_queue_init");
  ring_ok_ = true;
  results_.reserve(entries);
  req_ids_.reserve(entries);
}

UringSender::~UringSender() {
  if (ring_ok_) io_uring_queue_exit(&ring_);
}

void UringSender::RegisterRegion(const void* base, size_t len) {
  std::vector<iovec> v;
  const auto* p = static_cast<const uint8_t*>(base);
  for (size_t off = 0; off < len; off += kMaxFixedBuffer) {
    v.push_back({const_cast<uint8_t*>(p + off), std::min(kMaxFixedBuffer, len - off)});
  }
  int rc = io_uring_register_buffers(&ring_, v.data(), static_cast<unsigned>(v.size()));
  if (rc < 0) {
    rlimit rl{};
    getrlimit(RLIMIT_MEMLOCK, &rl);
    std::string lim = rl.rlim_cur == RLIM_INFINITY ? "unlimited" : std::to_string(rl.rlim_cur / 1024) + " KiB";
    throw Error(ErrorKind::kLocalIo, -rc, std::string("io_uring could not register the image as fixed buffers (") + std::strerror(-rc) +
                         "): registered buffers are locked memory; `ulimit -l` (RLIMIT_MEMLOCK) is " + lim +
                         " and the image needs " + std::to_string(len / 1024) +
                         " KiB. Raise it, or send with the sendmsg backend",
                Remedy::kSendmsgBackend);
  }
  regions_ = std::move(v);
}

int UringSender::FixedIndex(const void* p, size_t len) const {
  const auto* b = static_cast<const uint8_t*>(p);
  for (size_t i = 0; i < regions_.size(); ++i) {
    const auto* r = static_cast<const uint8_t*>(regions_[i].iov_base);
    if (b >= r && b + len <= r + regions_[i].iov_len) return static_cast<int>(i);
  }
  return -1;
}

void UringSender::Handle(io_uring_cqe* cqe, const NotifyFn& notify, unsigned* firsts,
                         std::vector<uint64_t>& ids_without_notif) {
  const uint64_t id = cqe->user_data;
  if (cqe->flags & IORING_CQE_F_NOTIF) {
    notify(id, (static_cast<uint32_t>(cqe->res) & IORING_NOTIF_USAGE_ZC_COPIED) != 0);
    return;
  }
  // A request's first CQE: find which request of the current Send().
  for (size_t i = 0; i < req_ids_.size(); ++i) {
    if (req_ids_[i] == id) {
      results_[i] = cqe->res;
      ++*firsts;
      if (!(cqe->flags & IORING_CQE_F_MORE)) ids_without_notif.push_back(id);
      return;
    }
  }
}

ssize_t UringSender::Send(std::span<const iovec> iov, int msg_flags, std::chrono::milliseconds timeout,
                          const std::function<uint64_t()>& next_id, const NotifyFn& notify,
                          std::vector<uint64_t>& ids_without_notif) {
  results_.clear();
  req_ids_.clear();
  const unsigned zc_flags = IORING_SEND_ZC_REPORT_USAGE;
  // Fixed-buffer path only if every run is inside the registered region or
  // small enough to send as its own request; otherwise one SENDMSG_ZC.
  bool fixed = !regions_.empty() && iov.size() <= 32;
  if (fixed) {
    // The first iovec (a packet header) may lie outside the region.
    for (size_t i = 1; i < iov.size(); ++i) {
      if (FixedIndex(iov[i].iov_base, iov[i].iov_len) < 0) fixed = false;
    }
  }
  if (fixed) {
    // A short send does not break an IOSQE_IO_LINK chain, so linked sends
    // are only safe when none can be short: blocking callers pass
    // MSG_WAITALL (io_uring then finishes short stream sends itself and a
    // real failure cancels the rest). Non-blocking: one request per call.
    const size_t nreq = (msg_flags & MSG_WAITALL) ? iov.size() : 1;
    for (size_t i = 0; i < nreq; ++i) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (!sqe) return -EBUSY;
      const int idx = FixedIndex(iov[i].iov_base, iov[i].iov_len);
      if (idx >= 0) {
        io_uring_prep_send_zc_fixed(sqe, fd_, iov[i].iov_base, iov[i].iov_len, msg_flags | MSG_NOSIGNAL,
                                    zc_flags, static_cast<unsigned>(idx));
        ++fixed_sends_;
      } else {
        io_uring_prep_send_zc(sqe, fd_, iov[i].iov_base, iov[i].iov_len, msg_flags | MSG_NOSIGNAL, zc_flags);
      }
      // Linked: the kernel runs them in order and cancels the rest if one
      // fails or comes up short.
      if (i + 1 < nreq) sqe->flags |= IOSQE_IO_LINK;
      const uint64_t id = next_id();
      io_uring_sqe_set_data64(sqe, id);
      req_ids_.push_back(id);
      results_.push_back(0);
    }
  } else {
    msg_ = {};
    msg_.msg_iov = const_cast<iovec*>(iov.data());
    msg_.msg_iovlen = iov.size();
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) return -EBUSY;
    io_uring_prep_sendmsg_zc(sqe, fd_, &msg_, msg_flags | MSG_NOSIGNAL);
    sqe->ioprio |= zc_flags;
    const uint64_t id = next_id();
    io_uring_sqe_set_data64(sqe, id);
    req_ids_.push_back(id);
    results_.push_back(0);
  }
  int rc = io_uring_submit(&ring_);
  if (rc < 0) return rc;
  unsigned firsts = 0;
  bool timed_out = false;
  while (firsts < req_ids_.size()) {
    io_uring_cqe* cqe = nullptr;
    if (timeout.count() >= 0 && !timed_out) {
      __kernel_timespec ts{};
      ts.tv_sec = timeout.count() / 1000;
      ts.tv_nsec = (timeout.count() % 1000) * 1000000;
      rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    } else {
      rc = io_uring_wait_cqe(&ring_, &cqe);
    }
    if (rc == -EINTR) continue;
    if (rc == -ETIME) {
      // No progress within the timeout (a stalled peer): cancel what is
      // still queued on the socket; the requests then complete with
      // -ECANCELED and their pages are handed back.
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (!sqe) return -EBUSY;
      io_uring_prep_cancel_fd(sqe, fd_, IORING_ASYNC_CANCEL_ALL);
      io_uring_sqe_set_data64(sqe, kCancelUserData);
      io_uring_submit(&ring_);
      timed_out = true;
      continue;
    }
    if (rc < 0) return rc;
    if (cqe->user_data != kCancelUserData) Handle(cqe, notify, &firsts, ids_without_notif);
    io_uring_cqe_seen(&ring_, cqe);
  }
  if (timed_out) return -ETIMEDOUT;
  // In-order sum up to the first failure or short send.
  ssize_t total = 0;
  for (size_t i = 0; i < results_.size(); ++i) {
    if (results_[i] < 0) {
      if (results_[i] == -ECANCELED && total > 0) break;  // a link after a short send
      return total > 0 ? total : results_[i];
    }
    total += results_[i];
    const size_t want = fixed ? iov[i].iov_len : SIZE_MAX;
    if (fixed && static_cast<size_t>(results_[i]) < want) break;
  }
  return total;
}

void UringSender::Reap(std::chrono::milliseconds wait, const NotifyFn& notify) {
  std::vector<uint64_t> none;
  unsigned firsts = 0;
  io_uring_cqe* cqe = nullptr;
  if (wait.count() != 0) {
    __kernel_timespec ts{};
    ts.tv_sec = wait.count() / 1000;
    ts.tv_nsec = (wait.count() % 1000) * 1000000;
    int rc;
    do {
      rc = wait.count() < 0 ? io_uring_wait_cqe(&ring_, &cqe) : io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    } while (rc == -EINTR);
    if (rc == -ETIME) return;
    if (rc < 0) ThrowErrno(ErrorKind::kInternal, -rc, "io_uring_wait_cqe");
    if (cqe->user_data != kCancelUserData) Handle(cqe, notify, &firsts, none);
    io_uring_cqe_seen(&ring_, cqe);
  }
  while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
    if (cqe->user_data != kCancelUserData) Handle(cqe, notify, &firsts, none);
    io_uring_cqe_seen(&ring_, cqe);
  }
}

namespace {

// The public face of UringSender: numbers requests with the tracker and
// turns notification CQEs into tracker releases.
class UringZeroCopySender final : public ZeroCopySender {
 public:
  UringZeroCopySender(int fd, ZeroCopyTracker& tracker) : ring_(fd), tracker_(tracker) {
    unnotified_.reserve(64);
  }

  ~UringZeroCopySender() override {
    // Nothing may be in flight when the ring goes away: give the kernel a
    // bounded time (2 s) to release what it still holds.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while (!tracker_.all_released() && std::chrono::steady_clock::now() < deadline) {
      try {
        ring_.Reap(std::chrono::milliseconds(10), notify_);
      } catch (const Error&) {
        break;
      }
    }
  }

  ssize_t Send(std::span<const iovec> iov, bool blocking, std::chrono::milliseconds timeout) override {
    unnotified_.clear();
    // Blocking: MSG_WAITALL lets io_uring finish short sends itself (fewer ids).
    ssize_t n = ring_.Send(iov, blocking ? MSG_WAITALL : MSG_DONTWAIT, timeout, next_id_, notify_, unnotified_);
    // Requests that ended without a notification pinned nothing.
    for (uint64_t id : unnotified_) Release(id, /*copied=*/true);
    return n;
  }

  void Reap(bool wait, std::chrono::milliseconds max_wait) override {
    ring_.Reap(std::chrono::milliseconds(0), notify_);
    if (wait && !tracker_.all_released()) ring_.Reap(max_wait, notify_);
  }

  std::optional<Error> TakeError() override { return std::nullopt; }

  bool RegisterRegion(const void* base, size_t len) override {
    ring_.RegisterRegion(base, len);
    return true;
  }

  SendBackend backend() const override { return SendBackend::kIoUring; }
  std::string describe(size_t threshold) const override {
    return "io_uring SEND_ZC on (writes >= " + std::to_string(threshold) + " bytes" +
           (ring_.has_region() ? ", image in registered buffers)" : ")");
  }
  uint64_t fixed_sends() const override { return ring_.fixed_sends(); }

 private:
  void Release(uint64_t id, bool copied) {
    const auto c = static_cast<uint32_t>(id);
    tracker_.OnCompletion(c, c, copied);
  }

  UringSender ring_;
  ZeroCopyTracker& tracker_;
  const UringSender::NotifyFn notify_ = [this](uint64_t id, bool copied) { Release(id, copied); };
  const std::function<uint64_t()> next_id_ = [this] { return tracker_.OnSend(); };
  std::vector<uint64_t> unnotified_;  // scratch, reserved once
};

}  // namespace

std::unique_ptr<ZeroCopySender> MakeUringZeroCopySender(int fd, ZeroCopyTracker& tracker) {
  return std::make_unique<UringZeroCopySender>(fd, tracker);
}

std::optional<std::string> ProbeUringSendZcOpcode() {
  io_uring_probe* pr = io_uring_get_probe();
  if (!pr) return std::string("io_uring unavailable");
  const bool ok = io_uring_opcode_supported(pr, IORING_OP_SEND_ZC);
  io_uring_free_probe(pr);
  if (!ok) return std::string("kernel lacks IORING_OP_SEND_ZC");
  return std::nullopt;
}

}  // namespace ktm

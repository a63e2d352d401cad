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
  // Default flags: see the header for why not SINGLE_ISSUER/DEFER_TASKRUN.
  int rc = io_uring_queue_init(std::max(entries, static_cast<unsigned>(2 * kMaxChain)), &ring_, 0);
  if (rc < 0) ThrowErrno(ErrorKind::kLocalIo, -rc, "io_uring_queue_init");
  ring_ok_ = true;
  // A registered socket skips the per-request file lookup; an older kernel
  // or a full file table only costs that lookup, so a refusal is not fatal.
  fixed_file_ = io_uring_register_files(&ring_, &fd_, 1) == 0;
  chain_.reserve(kMaxChain);
  pins_.reserve(4 * kMaxChain);
  attempts_.reserve(4 * kMaxChain);
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

void UringSender::BuildChain(std::span<const iovec> iov, bool blocking) {
  chain_.clear();
  // Registered-buffer path when every page run lies in the region (the
  // first iovec, a packet header, may not): one SEND_ZC per run.
  bool fixed = !regions_.empty() && iov.size() <= kMaxChain;
  for (size_t i = 1; fixed && i < iov.size(); ++i) {
    if (FixedIndex(iov[i].iov_base, iov[i].iov_len) < 0) fixed = false;
  }
  if (fixed) {
    // Non-blocking: one request per call, since a short send would not
    // stop the rest of a chain without MSG_WAITALL.
    const size_t n = blocking ? iov.size() : 1;
    for (size_t i = 0; i < n; ++i) {
      if (iov[i].iov_len == 0) continue;
      Request r;
      r.iov.assign(1, iov[i]);
      r.len = iov[i].iov_len;
      r.fixed_index = FixedIndex(iov[i].iov_base, iov[i].iov_len);
      chain_.push_back(std::move(r));
    }
    return;
  }
  size_t total = 0;
  for (const iovec& v : iov) total += v.iov_len;
  // Blocking: requests of about total / kMaxChain bytes (at least
  // kMinRequestBytes), cutting iovecs where needed, so a large write keeps
  // several requests in the ring. Non-blocking: one SENDMSG_ZC.
  const size_t target = blocking ? std::max(kMinRequestBytes, (total + kMaxChain - 1) / kMaxChain) : SIZE_MAX;
  Request cur;
  for (const iovec& v : iov) {
    size_t off = 0;
    while (off < v.iov_len) {
      // The last request the chain can hold takes whatever is left.
      const size_t limit = chain_.size() + 1 < kMaxChain ? target : SIZE_MAX;
      const size_t take = std::min(v.iov_len - off, limit - cur.len);
      cur.iov.push_back({static_cast<uint8_t*>(v.iov_base) + off, take});
      cur.len += take;
      off += take;
      if (cur.len == limit) {
        chain_.push_back(std::move(cur));
        cur = Request{};
      }
    }
  }
  if (cur.len) chain_.push_back(std::move(cur));
}

void UringSender::Prep(io_uring_sqe* sqe, Request& r, int msg_flags) {
  const int fd = fixed_file_ ? 0 : fd_;
  const unsigned zc_flags = IORING_SEND_ZC_REPORT_USAGE;
  if (r.fixed_index >= 0) {
    io_uring_prep_send_zc_fixed(sqe, fd, r.iov[0].iov_base, r.len, msg_flags, zc_flags,
                                static_cast<unsigned>(r.fixed_index));
    ++fixed_sends_;
  } else if (r.iov.size() == 1) {
    io_uring_prep_send_zc(sqe, fd, r.iov[0].iov_base, r.len, msg_flags, zc_flags);
  } else {
    r.msg = {};
    r.msg.msg_iov = r.iov.data();
    r.msg.msg_iovlen = r.iov.size();
    io_uring_prep_sendmsg_zc(sqe, fd, &r.msg, msg_flags);
    sqe->ioprio |= zc_flags;
  }
  if (fixed_file_) sqe->flags |= IOSQE_FIXED_FILE;
}

int UringSender::SubmitChain(bool blocking, const NextIdFn* next_id) {
  // Blocking: MSG_WAITALL, so io_uring itself finishes a short stream send
  // and a request ends complete or failed; linked, so the kernel runs them
  // in order and a failure cancels the rest.
  const int flags = (blocking ? MSG_WAITALL : MSG_DONTWAIT) | MSG_NOSIGNAL;
  for (size_t i = 0; i < chain_.size(); ++i) {
    Request& r = chain_[i];
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (!sqe) throw Error(ErrorKind::kInternal, EBUSY, "io_uring submission queue full");
    Prep(sqe, r, flags);
    if (blocking && i + 1 < chain_.size()) sqe->flags |= IOSQE_IO_LINK;
    if (next_id) r.id = (*next_id)();
    r.user_data = r.id | (next_id ? 0 : kRetryTag);
    r.res = 0;
    r.done = false;
    ++pins_[r.id].live;
    attempts_[r.user_data] = Attempt{};
    io_uring_sqe_set_data64(sqe, r.user_data);
  }
  waiting_ = chain_.size();
  max_in_flight_ = std::max<uint64_t>(max_in_flight_, waiting_);
  const int rc = io_uring_submit(&ring_);
  if (rc < 0) ThrowErrno(ErrorKind::kInternal, -rc, "io_uring_submit");
  return rc;
}

void UringSender::MaybeRelease(uint64_t id, const NotifyFn& notify) {
  auto it = pins_.find(id);
  if (it == pins_.end() || it->second.open || it->second.live != 0) return;
  const bool copied = it->second.copied;
  pins_.erase(it);
  notify(id, copied);
}

void UringSender::Close(uint64_t id, const NotifyFn& notify) {
  auto it = pins_.find(id);
  if (it == pins_.end()) return;
  it->second.open = false;
  MaybeRelease(id, notify);
}

void UringSender::FinishAttempt(uint64_t user_data, const NotifyFn& notify) {
  auto it = attempts_.find(user_data);
  const Attempt a = it->second;
  if (!a.result || (a.more && !a.notif)) return;
  // No notification announced: nothing stayed pinned (the documented
  // contract), though the kernel may still post one; ignore it then.
  if (!a.more && !a.notif) strays_.insert(user_data);
  attempts_.erase(it);
  const uint64_t id = user_data & ~kRetryTag;
  --pins_[id].live;
  MaybeRelease(id, notify);
}

bool UringSender::NotificationsDue() const {
  for (const auto& [u, a] : attempts_) {
    if (a.result && a.more && !a.notif) return true;
  }
  return false;
}

void UringSender::HandleCqe(const io_uring_cqe* cqe, const NotifyFn& notify) {
  const uint64_t u = cqe->user_data;
  if (u == kCancelUserData) return;
  auto it = attempts_.find(u);
  if (cqe->flags & IORING_CQE_F_NOTIF) {
    if (it == attempts_.end()) {
      if (strays_.erase(u)) return;
      throw Error(ErrorKind::kInternal, EPROTO,
                  "io_uring notification for write " + std::to_string(u & ~kRetryTag) + ", which is already released");
    }
    it->second.notif = true;
    if (static_cast<uint32_t>(cqe->res) & IORING_NOTIF_USAGE_ZC_COPIED) pins_[u & ~kRetryTag].copied = true;
    FinishAttempt(u, notify);
    return;
  }
  if (it == attempts_.end()) return;  // not ours
  for (Request& r : chain_) {
    if (r.user_data == u && !r.done) {
      r.res = cqe->res;
      r.done = true;
      --waiting_;
      break;
    }
  }
  it->second.result = true;
  it->second.more = (cqe->flags & IORING_CQE_F_MORE) != 0;
  FinishAttempt(u, notify);
}

int UringSender::WaitChain(std::chrono::milliseconds timeout, const NotifyFn& notify) {
  bool cancelled = false;
  while (waiting_ > 0) {
    io_uring_cqe* cqe = nullptr;
    int rc;
    if (timeout.count() >= 0 && !cancelled) {
      __kernel_timespec ts{};
      ts.tv_sec = timeout.count() / 1000;
      ts.tv_nsec = (timeout.count() % 1000) * 1000000;
      rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
    } else {
      rc = io_uring_wait_cqe(&ring_, &cqe);
    }
    if (rc == -EINTR) continue;
    if (rc == -ETIME) {
      // No completion of any kind within the timeout (a stalled peer):
      // cancel the chain; its requests then end with -ECANCELED (or the
      // bytes sent so far) and their pages are handed back.
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      if (!sqe) throw Error(ErrorKind::kInternal, EBUSY, "io_uring submission queue full");
      io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
      io_uring_sqe_set_data64(sqe, kCancelUserData);
      io_uring_submit(&ring_);
      cancelled = true;
      continue;
    }
    if (rc < 0) ThrowErrno(ErrorKind::kInternal, -rc, "io_uring_wait_cqe");
    HandleCqe(cqe, notify);
    io_uring_cqe_seen(&ring_, cqe);
    while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
      HandleCqe(cqe, notify);
      io_uring_cqe_seen(&ring_, cqe);
    }
  }
  return cancelled ? -ETIMEDOUT : 0;
}

ssize_t UringSender::ChainResult() const {
  ssize_t total = 0;
  for (const Request& r : chain_) {
    if (r.res < 0) return total > 0 ? total : r.res;  // -ECANCELED after a short send ends the sum too
    total += r.res;
    if (static_cast<size_t>(r.res) < r.len) break;
  }
  return total;
}

int UringSender::Settle(std::chrono::milliseconds timeout, const NotifyFn& notify) {
  size_t i = 0;
  while (i < chain_.size() && chain_[i].res >= 0 && static_cast<size_t>(chain_[i].res) == chain_[i].len) {
    Close(chain_[i].id, notify);
    ++i;
  }
  if (i == chain_.size()) {
    chain_.clear();
    resubmitted_ = false;
    return 0;
  }
  Request& bad = chain_[i];
  const int err = bad.res < 0 ? static_cast<int>(-bad.res) : 0;  // 0: short without an error
  const bool retry = !resubmitted_ && (err == 0 || err == ENOBUFS || err == ENOMEM);
  if (!retry) {
    size_t unsent = 0;
    for (size_t j = i; j < chain_.size(); ++j) unsent += chain_[j].len - (chain_[j].res > 0 ? chain_[j].res : 0);
    for (size_t j = i; j < chain_.size(); ++j) Close(chain_[j].id, notify);
    const int e = err ? err : EIO;
    error_ = Error(SocketErrorKind(e), e,
                   "io_uring zero-copy send failed after the write was handed to the kernel (" +
                       std::string(std::strerror(e)) + (err ? "" : ": short send twice") + "); " +
                       std::to_string(unsent) + " bytes were not sent");
    chain_.clear();
    resubmitted_ = false;
    return -EIO;
  }
  // Resend from the first unsent byte, in order, under the same ids (the
  // partial request's pages stay held until both of its notifications).
  if (err == ENOBUFS || err == ENOMEM) {
    // Could not pin: wait (bounded) for earlier sends to hand pages back.
    const auto deadline = std::chrono::steady_clock::now() + (timeout.count() >= 0 ? timeout : std::chrono::seconds(30));
    while (NotificationsDue() && std::chrono::steady_clock::now() < deadline) {
      io_uring_cqe* cqe = nullptr;
      __kernel_timespec ts{0, 10'000'000};
      if (io_uring_wait_cqe_timeout(&ring_, &cqe, &ts) == 0) {
        HandleCqe(cqe, notify);
        io_uring_cqe_seen(&ring_, cqe);
      }
    }
  }
  std::vector<Request> rest;
  for (size_t j = i; j < chain_.size(); ++j) {
    Request r = std::move(chain_[j]);
    size_t skip = r.res > 0 ? static_cast<size_t>(r.res) : 0;
    r.len -= skip;
    while (skip) {
      const size_t n = std::min(skip, r.iov.front().iov_len);
      r.iov.front().iov_base = static_cast<uint8_t*>(r.iov.front().iov_base) + n;
      r.iov.front().iov_len -= n;
      if (r.iov.front().iov_len == 0) r.iov.erase(r.iov.begin());
      skip -= n;
    }
    rest.push_back(std::move(r));
  }
  chain_ = std::move(rest);
  resubmitted_ = true;
  SubmitChain(/*blocking=*/true, nullptr);
  return 0;
}

int UringSender::Drain(bool blocking, std::chrono::milliseconds timeout, const NotifyFn& notify) {
  while (!chain_.empty()) {
    if (!blocking) {
      Reap(std::chrono::milliseconds(0), notify);
      if (!chain_.empty()) return -EAGAIN;
      break;
    }
    if (WaitChain(timeout, notify) < 0) {
      for (const Request& r : chain_) Close(r.id, notify);
      chain_.clear();
      resubmitted_ = false;
      return -ETIMEDOUT;
    }
    if (Settle(timeout, notify) < 0) return -EIO;
  }
  return error_ ? -EIO : 0;  // a chain that failed in Reap()
}

ssize_t UringSender::Send(std::span<const iovec> iov, bool blocking, std::chrono::milliseconds timeout,
                          const NextIdFn& next_id, const NotifyFn& notify) {
  timeout_ = timeout;
  // The previous chain first: nothing may overtake its bytes.
  if (const int rc = Drain(blocking, timeout, notify); rc < 0) return rc;
  BuildChain(iov, blocking);
  if (chain_.empty()) return 0;
  size_t total = 0;
  for (const Request& r : chain_) total += r.len;
  SubmitChain(blocking, &next_id);
  if (blocking && confirmed_) return static_cast<ssize_t>(total);  // pipelined: the kernel has it
  // Synchronous: non-blocking calls and the first send on the socket
  // (EOPNOTSUPP must reach the caller before any byte is reported sent).
  const int rc = WaitChain(timeout, notify);
  const ssize_t n = rc < 0 ? rc : ChainResult();
  for (const Request& r : chain_) Close(r.id, notify);
  chain_.clear();
  if (n > 0) confirmed_ = true;
  return n;
}

void UringSender::Reap(std::chrono::milliseconds wait, const NotifyFn& notify) {
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
    HandleCqe(cqe, notify);
    io_uring_cqe_seen(&ring_, cqe);
  }
  while (io_uring_peek_cqe(&ring_, &cqe) == 0) {
    HandleCqe(cqe, notify);
    io_uring_cqe_seen(&ring_, cqe);
  }
  // A chain that finished meanwhile is settled here, so its ids can be
  // released (or its failure kept) without waiting for the next Send().
  if (!chain_.empty() && waiting_ == 0) Settle(timeout_, notify);
}

namespace {

// The public face of UringSender: numbers requests with the tracker and
// turns notification CQEs into tracker releases.
class UringZeroCopySender final : public ZeroCopySender {
 public:
  UringZeroCopySender(int fd, ZeroCopyTracker& tracker) : ring_(fd), tracker_(tracker) {}

  ~UringZeroCopySender() override {
    // Nothing may be in flight when the ring goes away: give the kernel a
    // bounded time (2 s) to finish the chain on the socket and release
    // what it still holds.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(2);
    while ((!ring_.idle() || !tracker_.all_released()) && std::chrono::steady_clock::now() < deadline) {
      try {
        ring_.Reap(std::chrono::milliseconds(10), notify_);
      } catch (const Error&) {
        break;
      }
    }
  }

  ssize_t Send(std::span<const iovec> iov, bool blocking, std::chrono::milliseconds timeout) override {
    return ring_.Send(iov, blocking, timeout, next_id_, notify_);
  }

  ssize_t FinishPending(bool blocking, std::chrono::milliseconds timeout) override {
    return ring_.Drain(blocking, timeout, notify_);
  }

  void Reap(bool wait, std::chrono::milliseconds max_wait) override {
    ring_.Reap(std::chrono::milliseconds(0), notify_);
    if (wait && (!ring_.idle() || !tracker_.all_released())) ring_.Reap(max_wait, notify_);
  }

  std::optional<Error> TakeError() override { return ring_.TakeError(); }

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
  uint64_t max_in_flight() const override { return ring_.max_in_flight(); }

 private:
  void Release(uint64_t id, bool copied) {
    const auto c = static_cast<uint32_t>(id);
    tracker_.OnCompletion(c, c, copied);
  }

  UringSender ring_;
  ZeroCopyTracker& tracker_;
  const UringSender::NotifyFn notify_ = [this](uint64_t id, bool copied) { Release(id, copied); };
  const UringSender::NextIdFn next_id_ = [this] { return tracker_.OnSend(); };
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

// sendmsg(MSG_ZEROCOPY) with completions from the socket error queue.
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
// After <time.h>: it uses struct timespec.
#include <linux/errqueue.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <optional>
#include <utility>

#include "base/fd_wait.h"
#include "channel/zero_copy_sender.h"

namespace ktm {
namespace {

class MsgZeroCopySender final : public ZeroCopySender {
 public:
  MsgZeroCopySender(int fd, ZeroCopyTracker& tracker) : fd_(fd), tracker_(tracker) {}

  // Always MSG_DONTWAIT; blocking callers wait here for room, at most
  // `timeout` from the moment there is none (-ETIMEDOUT). Not a blocking
  // sendmsg bounded by SO_SNDTIMEO: cut short by the timer, that returns
  // the bytes it queued before it blocked, and the caller's next call would
  // wait the whole timeout again.
  ssize_t Send(std::span<const iovec> iov, bool blocking, std::chrono::milliseconds timeout) override {
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iov.data());
    msg.msg_iovlen = iov.size();
    using Clock = std::chrono::steady_clock;
    std::optional<Clock::time_point> deadline;  // set when we first find no room
    for (;;) {
      ssize_t n = ::sendmsg(fd_, &msg, MSG_ZEROCOPY | MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        tracker_.OnSend();  // the kernel numbered this send; its id is ours
        return n;
      }
      if (n == 0) return 0;
      const int e = errno;
      if (e == EINTR) continue;
      if (e != EAGAIN && e != EWOULDBLOCK) return -e;
      if (!blocking) return -EAGAIN;
      std::chrono::milliseconds left(-1);
      if (timeout.count() >= 0) {
        if (!deadline) deadline = Clock::now() + timeout;
        left = std::chrono::ceil<std::chrono::milliseconds>(*deadline - Clock::now());
        if (left.count() <= 0) return -ETIMEDOUT;
      }
      const short ev = PollFd(fd_, POLLOUT, left);
      if (ev == 0) return -ETIMEDOUT;
      // Our own completions on the error queue raise POLLERR: apply them
      // (they are due anyway) so the next poll sleeps instead of spinning.
      if ((ev & POLLERR) && !(ev & (POLLOUT | POLLHUP))) {
        Reap(/*wait=*/false, std::chrono::milliseconds(0));
        if (error_) return -EIO;  // reported through TakeError
      }
    }
  }

  void Reap(bool wait, std::chrono::milliseconds max_wait) override {
    bool waited = false;
    while (!tracker_.all_released()) {
      // One notification per recvmsg; the control buffer fits one
      // sock_extended_err plus the offender address the kernel may append.
      alignas(cmsghdr) char control[CMSG_SPACE(sizeof(sock_extended_err) + sizeof(sockaddr_in6))];
      msghdr msg{};
      msg.msg_control = control;
      msg.msg_controllen = sizeof(control);
      ssize_t r = ::recvmsg(fd_, &msg, MSG_ERRQUEUE | MSG_DONTWAIT);
      if (r < 0) {
        const int e = errno;
        if (e == EINTR) continue;
        if (e != EAGAIN && e != EWOULDBLOCK) {
          if (!error_) error_ = Error(ErrorKind::kInternal, e, std::string("recvmsg(MSG_ERRQUEUE): ") + std::strerror(e));
          return;
        }
        if (!wait || waited) return;
        waited = true;
        // An error-queue entry raises POLLERR; events=0 waits for just that.
        // POLLHUP (peer gone) is level-triggered, so back off instead of
        // spinning while the kernel frees the remaining skbs.
        short ev = PollFd(fd_, 0, max_wait);
        if (ev & POLLHUP) {
          timespec ts{0, 1'000'000};
          nanosleep(&ts, nullptr);
        }
        continue;
      }
      if (msg.msg_flags & MSG_CTRUNC) {
        if (!error_) error_ = Error(ErrorKind::kInternal, EPROTO, "truncated control message on the socket error queue");
        return;
      }
      for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
        std::optional<Error> err = tracker_.OnControlMessage(cm);
        if (err && !error_) error_ = std::move(err);
      }
    }
  }

  std::optional<Error> TakeError() override { return std::exchange(error_, std::nullopt); }
  SendBackend backend() const override { return SendBackend::kSendmsg; }
  std::string describe(size_t threshold) const override {
    return "MSG_ZEROCOPY on (writes >= " + std::to_string(threshold) + " bytes)";
  }

 private:
  int fd_;
  ZeroCopyTracker& tracker_;
  std::optional<Error> error_;
};

}  // namespace

std::unique_ptr<ZeroCopySender> MakeMsgZeroCopySender(int fd, ZeroCopyTracker& tracker, std::string* why) {
  int one = 1;
  if (setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one)) != 0) {
    const int e = errno;
    sockaddr_storage ss{};
    socklen_t len = sizeof(ss);
    const bool is_unix = getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len) == 0 && ss.ss_family == AF_UNIX;
    *why = std::string("the kernel refused SO_ZEROCOPY on this ") + (is_unix ? "UNIX" : "TCP") +
           " socket: " + std::strerror(e);
    if (is_unix) *why += " (MSG_ZEROCOPY exists for TCP/UDP/vsock only)";
    return nullptr;
  }
  return std::make_unique<MsgZeroCopySender>(fd, tracker);
}

}  // namespace ktm

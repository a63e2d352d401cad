#include "transport/busy_responder.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/error.h"
#include "transport/protocol.h"

namespace ktm {

BusyResponder::BusyResponder(Listener& listener, Options opts, std::string session)
    : listener_(listener), opts_(std::move(opts)), session_(std::move(session)) {
  stop_.reset(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_) ThrowErrno(ErrorKind::kInternal, errno, "eventfd");
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

BusyResponder::~BusyResponder() {
  const uint64_t one = 1;
  (void)!write(stop_.get(), &one, sizeof(one));
  acceptor_.join();
  ReapFinished(/*all=*/true);
}

void BusyResponder::ReapFinished(bool all) {
  std::lock_guard<std::mutex> g(mu_);
  if (all) {
    for (auto& w : workers_) {
      if (!w.done.load()) ::shutdown(w.abort.get(), SHUT_RDWR);
    }
  }
  for (auto it = workers_.begin(); it != workers_.end();) {
    if (all || it->done.load()) {
      it->thread.join();
      it = workers_.erase(it);
    } else {
      ++it;
    }
  }
}

void BusyResponder::AcceptLoop() {
  for (;;) {
    ReapFinished(/*all=*/false);
    bool full;
    {
      std::lock_guard<std::mutex> g(mu_);
      full = workers_.size() >= opts_.max_pending;
    }
    pollfd p[2] = {{stop_.get(), POLLIN, 0}, {listener_.fd(), static_cast<short>(full ? 0 : POLLIN), 0}};
    // With every slot taken, wake now and then to reap finished answers.
    const int n = poll(p, 2, full ? 50 : -1);
    if (n < 0 && errno != EINTR) return;  // nothing sensible left to do; the migration goes on
    if (p[0].revents) return;
    if (!(p[1].revents & POLLIN)) continue;
    const int fd = accept4(listener_.fd(), nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
      // Out of descriptors or memory: back off instead of spinning; the
      // connection waits in the backlog.
      if (errno != EINTR && errno != ECONNABORTED && errno != EAGAIN) {
        pollfd s{stop_.get(), POLLIN, 0};
        if (poll(&s, 1, 100) > 0) return;
      }
      continue;
    }
    UniqueFd conn(fd);
    std::lock_guard<std::mutex> g(mu_);
    Worker& w = workers_.emplace_back();
    w.abort.reset(fcntl(fd, F_DUPFD_CLOEXEC, 0));
    w.thread = std::thread([this, &w, c = std::move(conn)]() mutable {
      Answer(std::move(c));
      w.done = true;
    });
  }
}

// Authenticates the connection as the migration's own channels are (a busy
// answer is not given to anyone who asks), reads its hello, answers kBusy.
void BusyResponder::Answer(UniqueFd fd) {
  const std::string peer = SockName(fd.get(), /*peer=*/true);
  try {
    SecurityConfig sec = opts_.security;
    if (sec.tls) sec.tls_options.handshake_timeout = std::min(sec.tls_options.handshake_timeout, opts_.hello_timeout);
    OpenedChannel oc = OpenServerChannel(std::move(fd), sec);
    oc.channel->set_io_timeout(opts_.hello_timeout);
    if (!oc.channel->wait_readable(opts_.hello_timeout)) return;
    uint8_t hello[wire::kHelloSize];
    if (!oc.channel->read_all(hello, sizeof(hello))) return;
    wire::DecodeHello(hello);  // not a source: no answer
    uint8_t ack[wire::kAckSize];
    wire::EncodeU32Pair(wire::kAckMagic, wire::kBusy, ack);
    oc.channel->write_all(ack, sizeof(ack));
    oc.channel->shutdown(ShutdownHow::kWrite);
    if (opts_.log) opts_.log("told " + peer + " that a migration is running (session " + session_ + ")");
  } catch (const Error& e) {
    if (opts_.log) opts_.log("rejected connection from " + peer + " during the migration: " + e.what());
  }
}

}  // namespace ktm

#include "transport/busy_responder.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <iterator>
#include <system_error>

#include "base/error.h"
#include "transport/protocol.h"

namespace ktm {

namespace {
Acceptor::Options BusyAcceptorOptions(const BusyResponder::Options& o) {
  Acceptor::Options a;
  a.log = o.log;
  return a;
}
}  // namespace

BusyResponder::BusyResponder(Listener& listener, Options opts, std::string session)
    : listener_(listener),
      opts_(std::move(opts)),
      session_(std::move(session)),
      acceptor_(listener_, BusyAcceptorOptions(opts_)) {
  loop_ = std::thread([this] { AcceptLoop(); });
}

BusyResponder::~BusyResponder() {
  {
    std::lock_guard<std::mutex> g(mu_);
    stopping_ = true;
  }
  slot_freed_.notify_all();
  acceptor_.Wake();
  loop_.join();
  ReapFinished(/*all=*/true);
}

size_t BusyResponder::Running() const {
  size_t n = 0;
  for (const auto& w : workers_) n += !w.done.load();
  return n;
}

void BusyResponder::ReapFinished(bool all) {
  // Joined outside mu_: a finishing answer takes mu_ to say it is done.
  std::list<Worker> finished;
  {
    std::lock_guard<std::mutex> g(mu_);
    for (auto it = workers_.begin(); it != workers_.end();) {
      auto next = std::next(it);
      if (all && !it->done.load()) ::shutdown(it->abort.get(), SHUT_RDWR);
      if (all || it->done.load()) finished.splice(finished.end(), workers_, it);
      it = next;
    }
  }
  for (auto& w : finished) w.thread.join();
}

void BusyResponder::AcceptLoop() {
  for (;;) {
    ReapFinished(/*all=*/false);
    {
      // With every slot taken, later sources wait in the backlog until an
      // answer ends (it wakes us), never longer than its hello timeout.
      std::unique_lock<std::mutex> g(mu_);
      slot_freed_.wait(g, [this] { return stopping_ || Running() < opts_.max_pending; });
      if (stopping_) return;
    }
    std::optional<Acceptor::Accepted> a;
    try {
      a = acceptor_.Next(std::chrono::milliseconds(-1));
    } catch (const Error& e) {
      // A broken listener (a bug): later sources are not answered; the
      // migration itself goes on.
      if (opts_.log) opts_.log(std::string("stopped answering later sources: ") + e.what());
      return;
    }
    if (!a) continue;  // woken, backing off, or a connection that died in the backlog
    std::lock_guard<std::mutex> g(mu_);
    if (stopping_) return;
    UniqueFd abort(fcntl(a->fd.get(), F_DUPFD_CLOEXEC, 0));
    if (!abort) {
      acceptor_.ShortOf(errno, "cannot watch the connection from " + a->peer);
      continue;
    }
    Worker& w = workers_.emplace_back();
    w.abort = std::move(abort);
    try {
      w.thread = std::thread([this, &w, c = std::move(a->fd)]() mutable {
        Answer(std::move(c));
        {
          std::lock_guard<std::mutex> lg(mu_);
          w.done = true;
        }
        slot_freed_.notify_all();
        acceptor_.Wake();  // a slot and a descriptor came back
      });
    } catch (const std::system_error& e) {
      // No thread to answer with (RLIMIT_NPROC, memory): the connection is
      // closed unanswered and accepting backs off, as for a missing fd.
      workers_.pop_back();
      acceptor_.ShortOf(e.code().value() ? e.code().value() : EAGAIN, "cannot start an answer for " + a->peer);
    }
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
    if (opts_.log) opts_.log("told " + peer + " that a migration is running (session " + session_ + ")");
    try {
      oc.channel->shutdown(ShutdownHow::kWrite);
    } catch (const Error&) {
      // The source has its answer and may well have gone already (a reset
      // refuses our close_notify); nothing is left to tell it.
    }
  } catch (const Error& e) {
    if (opts_.log) opts_.log("rejected connection from " + peer + " during the migration: " + e.what());
  }
}

}  // namespace ktm

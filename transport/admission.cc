#include "transport/admission.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <system_error>

#include "base/fd_wait.h"

namespace ktm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

Acceptor::Options AcceptorOptions(const AdmissionOptions& a) {
  Acceptor::Options o;
  o.log = a.log;
  o.prefix = a.prefix;
  return o;
}

milliseconds Until(Clock::time_point t) {
  const auto d = std::chrono::ceil<milliseconds>(t - Clock::now());
  return std::max(d, milliseconds(0));
}

}  // namespace

size_t ChooseEviction(const std::vector<std::string>& sources) {
  std::map<std::string, size_t> count;
  size_t most = 0;
  for (const auto& s : sources) most = std::max(most, ++count[s]);
  // Oldest first: the first connection of a busiest source is the oldest
  // among them, and of the busiest sources the one whose oldest is oldest.
  for (size_t i = 0; i < sources.size(); ++i) {
    if (count[sources[i]] == most) return i;
  }
  return 0;  // unreachable for a non-empty list
}

struct Admission::Pending {
  std::string peer, source;
  UniqueFd abort_fd;  // a dup of the socket: shutdown() on it cuts the handshake short
  Clock::time_point deadline;
  std::thread thread;
  // Under Admission::mu_:
  bool evicted = false, expired = false;  // set by the owner thread
  bool done = false;                      // set by the connection's thread
  Admitted result;

  bool live() const { return !done && !evicted && !expired; }
};

Admission::Admission(Listener& listener, AdmissionOptions opts)
    : opts_(std::move(opts)), acceptor_(listener, AcceptorOptions(opts_)) {
  opts_.max_pending = std::max<size_t>(1, opts_.max_pending);
  if (opts_.intro_name.empty()) opts_.intro_name = "introduction";
}

Admission::~Admission() {
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto& p : pending_) ::shutdown(p->abort_fd.get(), SHUT_RDWR);
  }
  for (auto& p : pending_) p->thread.join();
}

void Admission::Log(const std::string& s) const {
  if (opts_.log) opts_.log(opts_.prefix + s);
}

void Admission::Poll(milliseconds timeout) {
  // Wake up for the nearest pending deadline: it is enforced here.
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& p : pending_) {
      if (!p->live()) continue;
      const milliseconds until = Until(p->deadline);
      if (timeout.count() < 0 || until < timeout) timeout = until;
    }
  }
  std::optional<Acceptor::Accepted> a = acceptor_.Next(timeout);
  ExpireOverdue();
  if (a) Start(std::move(*a));
}

void Admission::ExpireOverdue() {
  const auto now = Clock::now();
  std::lock_guard<std::mutex> l(mu_);
  for (auto& p : pending_) {
    if (p->live() && p->deadline <= now) {
      p->expired = true;
      ::shutdown(p->abort_fd.get(), SHUT_RDWR);
    }
  }
}

// Under mu_.
void Admission::EvictForRoom() {
  std::vector<Pending*> live;
  std::vector<std::string> sources;
  for (auto& p : pending_) {
    if (!p->live()) continue;
    live.push_back(p.get());
    sources.push_back(p->source);
  }
  if (live.size() < opts_.max_pending) return;
  Pending& victim = *live[ChooseEviction(sources)];
  const size_t from_source = static_cast<size_t>(std::count(sources.begin(), sources.end(), victim.source));
  victim.evicted = true;
  ::shutdown(victim.abort_fd.get(), SHUT_RDWR);
  Log("more than " + std::to_string(opts_.max_pending) +
      " connections pending authentication: dropping the oldest from the busiest source (" + victim.source + ", " +
      std::to_string(from_source) + " pending): " + victim.peer);
}

void Admission::Start(Acceptor::Accepted a) {
  auto p = std::make_unique<Pending>();
  p->abort_fd.reset(fcntl(a.fd.get(), F_DUPFD_CLOEXEC, 0));
  if (!p->abort_fd) {
    // Without the handle its deadline cannot be enforced: a connection
    // this process has no descriptor for is not taken on.
    const int err = errno;
    Log("closed connection from " + a.peer + ": no descriptor left to watch its handshake (" +
        std::strerror(err) + ")");
    if (IsAcceptResourceShortage(err)) acceptor_.ShortOf(err, "accept failed");
    return;
  }
  p->peer = a.peer;
  p->source = a.source;
  p->deadline = Clock::now() + 2 * opts_.timeout;
  std::lock_guard<std::mutex> l(mu_);
  EvictForRoom();
  Pending* raw = p.get();
  try {
    raw->thread = std::thread([this, raw, fd = std::move(a.fd)]() mutable { Run(*raw, std::move(fd)); });
  } catch (const std::system_error& e) {
    Log("closed connection from " + raw->peer + ": cannot start its handshake thread (" + e.what() + ")");
    acceptor_.ShortOf(EAGAIN, "starting a handshake thread failed");
    return;
  }
  pending_.push_back(std::move(p));
}

namespace {

// Reads `buf` fully by `deadline`: a peer that trickles its introduction
// byte by byte gets no more time than one that sends nothing.
void ReadIntro(Channel& ch, std::vector<uint8_t>& buf, Clock::time_point deadline, const std::string& name,
               milliseconds limit) {
  auto too_late = [&] {
    return Error(ErrorKind::kTimeout, ETIMEDOUT, "sent no complete " + name + " within " +
                                                     std::to_string(limit.count()) + " ms of connecting");
  };
  for (size_t got = 0; got < buf.size();) {
    const milliseconds left = Until(deadline);
    if (left.count() <= 0) throw too_late();
    ch.set_io_timeout(left);
    if (!ch.wait_readable(left)) throw too_late();
    iovec v{buf.data() + got, buf.size() - got};
    const ReadResult r = ch.readv(std::span<const iovec>(&v, 1));
    if (r.eof()) {
      throw Error(ErrorKind::kPeer, EPIPE, got ? "closed part-way through its " + name : "closed before its " + name);
    }
    got += r.bytes;
  }
  ch.set_io_timeout(milliseconds(-1));
}

}  // namespace

void Admission::Run(Pending& p, UniqueFd fd) {
  Admitted r;
  r.peer = p.peer;
  try {
    SecurityConfig sec = opts_.security;
    if (sec.tls) sec.tls_options.handshake_timeout = std::min(sec.tls_options.handshake_timeout, opts_.timeout);
    r.oc = OpenServerChannel(std::move(fd), sec);
    r.intro.resize(opts_.intro_size);
    ReadIntro(*r.oc.channel, r.intro, p.deadline, opts_.intro_name, 2 * opts_.timeout);
  } catch (const Error& e) {
    r.error = e;
  } catch (const std::exception& e) {
    r.error = Error(ErrorKind::kInternal, EIO, e.what());
  }
  OpenedChannel discard;  // closed after the lock is released
  {
    std::lock_guard<std::mutex> l(mu_);
    if (p.evicted || p.expired) {
      // Cut short from outside: that, not the symptom the cut caused, is
      // the reason.
      discard = std::move(r.oc);
      r.oc = OpenedChannel{};
      r.evicted = p.evicted;
      r.error = p.evicted ? Error(ErrorKind::kPeer, ECONNABORTED,
                                  "dropped: more than " + std::to_string(opts_.max_pending) +
                                      " connections were pending authentication (the oldest from the busiest "
                                      "source goes first)")
                          : Error(ErrorKind::kTimeout, ETIMEDOUT,
                                  "did not complete its " + std::string(opts_.security.tls ? "TLS handshake and " : "") +
                                      opts_.intro_name + " within " +
                                      std::to_string(2 * opts_.timeout.count()) + " ms of connecting");
    }
    p.result = std::move(r);
    p.done = true;
  }
  acceptor_.Wake();  // the owner takes the result; a descriptor may be free
}

std::vector<Admitted> Admission::TakeFinished() {
  std::vector<std::unique_ptr<Pending>> done;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (auto it = pending_.begin(); it != pending_.end();) {
      if ((*it)->done) {
        done.push_back(std::move(*it));
        it = pending_.erase(it);
      } else {
        ++it;
      }
    }
  }
  std::vector<Admitted> out;
  for (auto& p : done) {
    p->thread.join();  // it is at most returning
    out.push_back(std::move(p->result));
  }
  return out;
}

std::vector<std::string> Admission::PendingPeers() const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<std::string> out;
  for (const auto& p : pending_) {
    if (!p->done) out.push_back(p->peer);
  }
  return out;
}

}  // namespace ktm

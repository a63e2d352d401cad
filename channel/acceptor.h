// Acceptor: accept() with the one policy every listener of this project
// uses (recv and both tunnel ends through transport/admission.h, recv's
// "busy" answers through transport/busy_responder.h, one-shot
// accepts through Listener::AcceptFd).
//
// - The connection died in the backlog (ECONNABORTED, EPROTO, ENETDOWN and
//   the other network errors accept(2) passes on, EPERM from a firewall):
//   that connection is gone; the next one is tried at once.
// - The process or the system is short of a resource (EMFILE, ENFILE,
//   ENOBUFS, ENOMEM): the connection stays in the listen backlog, the
//   listener is not polled (it stays readable, so polling it would spin),
//   and accept() is retried after a back-off that doubles from 10 ms to 1 s,
//   or at once when the owner says a descriptor came back (Wake()). One log
//   line when such an episode starts ("accept failed on ADDR: Too many open
//   files; backing off ..."), one when accept() works again ("accepting
//   again on ADDR after ..."); service resumes by itself.
// - Anything else (EBADF, EINVAL, ENOTSOCK) is a bug: Error(kInternal).
//
// Threading: one owner thread calls Next(); Wake() may be called from any
// thread.
#pragma once

#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "base/unique_fd.h"
#include "channel/address.h"

namespace ktm {

// True for the accept() errors that mean "short of a resource, try later":
// EMFILE, ENFILE, ENOBUFS, ENOMEM.
bool IsAcceptResourceShortage(int err);

// The source of a peer address, the grouping key of the admission
// overflow rule (transport/admission.h): the IPv4 address, the /64 of an
// IPv6 address (v4-mapped ones as IPv4), "unix" for UNIX-socket peers.
std::string AdmissionSource(const sockaddr_storage& peer, socklen_t len);

// accept() on a listener with the one policy above. Owns the wake-up
// eventfd that ends a wait early (unless Options::wakeable is false).
// While it lives the listener is non-blocking (a connection reset between
// poll and accept must not block the loop); the previous mode is restored
// on destruction.
class Acceptor {
 public:
  struct Options {
    std::function<void(const std::string&)> log;  // may be empty
    std::string prefix;  // put before every log line ("tunnel: ")
    std::chrono::milliseconds min_backoff{10};
    std::chrono::milliseconds max_backoff{1000};
    // false: no wake-up eventfd (Wake() does nothing), so a one-shot
    // accept needs no descriptor of its own.
    bool wakeable = true;
  };
  struct Accepted {
    UniqueFd fd;  // blocking, close-on-exec
    std::string peer;
    std::string source;  // AdmissionSource of the peer
  };

  Acceptor(Listener& listener, Options opts);
  ~Acceptor();
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  // Waits up to `timeout` (negative: forever) for a connection or a Wake(),
  // and accepts at most one connection. Returns nullopt on timeout, wake,
  // a connection that died in the backlog, or while backing off. Never
  // busy: during a back-off only the wake-up fd is polled.
  std::optional<Accepted> Next(std::chrono::milliseconds timeout);

  // Ends the current wait (thread-safe, async-signal-unsafe). During a
  // back-off the next Next() retries accept() at once: call it whenever a
  // descriptor is released (a connection ended).
  void Wake();

  // Reports a shortage met right after an accept (the connection could
  // not be taken on: no descriptor to watch it, no thread): starts or
  // continues the back-off exactly as a failed accept() does. `what` starts
  // the episode's log line.
  void ShortOf(int err, const std::string& what);

  bool backing_off() const { return backoff_.count() > 0; }
  // The errno of the last resource shortage (0: none yet).
  int last_shortage() const { return last_shortage_; }

 private:
  std::optional<Accepted> TryAccept();
  void Log(const std::string& s) const;

  Listener& listener_;
  Options opts_;
  UniqueFd wake_;
  int saved_flags_ = -1;
  // Back-off state: 0 = accepting; else the current delay, the time of the
  // next retry, when the episode began and how many accepts failed in it.
  std::chrono::milliseconds backoff_{0};
  std::chrono::steady_clock::time_point retry_at_{}, episode_start_{};
  uint64_t episode_failures_ = 0;
  int last_shortage_ = 0;
};

}  // namespace ktm

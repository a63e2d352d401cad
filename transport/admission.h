// Admission: the one way every listener of this project (recv, both tunnel
// ends) takes connections in, from accept() to an authenticated peer that
// has introduced itself.
//
// Failing accept(): Acceptor's one policy (channel/acceptor.h): a
// connection that died in the backlog is skipped; a shortage of
// descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) backs off from
// 10 ms to 1 s, or until a descriptor comes back (Wake()), logged once per
// episode and once when accepting works again; nothing spins.
//
// Pending connections. Admission runs each accepted connection's TLS
// handshake and the read of its introduction (the migration hello, the
// tunnel header) on a thread of its own, so a silent or slow peer delays
// nobody, and gives each one a deadline it enforces itself: at the deadline
// the socket is shut down, whatever the handshake code is doing.
//
// The overflow rule (at most max_pending live handshakes): when a
// connection arrives and max_pending are pending, the oldest pending
// connection of the busiest source is evicted (its socket shut down, logged)
// and the new one is started. The source is the peer's IP address (an IPv6
// /64 counts as one source; every UNIX-socket peer is the same source);
// the busiest source is the one holding the most pending connections, and
// among equally busy sources the one with the oldest connection loses it.
// Why this rule, thinking as an attacker who opens idle connections to keep
// a real peer out:
// - Refusing the newest (a full set refuses arrivals) lets max_pending idle
//   connections, renewed once per deadline (32 every 20 s by default), lock
//   every real peer out: the cheapest attack there is.
// - Dropping the oldest overall gives every arrival a fresh handshake
//   window, but a flood that opens max_pending connections faster than a
//   real handshake completes (a few ms on a LAN, one RTT or two across a
//   WAN) still evicts the real peer.
// - Evicting from the busiest source keeps dropping-the-oldest's fresh
//   window and adds that a flood from one address (or a few) only ever
//   evicts its own connections: a real peer from another address is not
//   touched while any source holds two pending connections, so the
//   attacker needs max_pending - 1 addresses of its own, each flooding as
//   fast as above. Peers that share the attacker's address (NAT, loopback)
//   fall back to dropping the oldest among them.
// An evicted or expired connection's thread is woken by the shutdown and
// finishes as a failure; it no longer counts against max_pending.
//
// Threading: one owner thread calls Poll()/TakeFinished(); Wake() may be
// called from any thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/unique_fd.h"
#include "channel/acceptor.h"
#include "channel/address.h"
#include "transport/endpoint.h"

namespace ktm {

using AdmissionLog = std::function<void(const std::string&)>;

struct AdmissionOptions {
  SecurityConfig security;
  // Bytes the peer must send first, after the TLS handshake (the hello,
  // the tunnel header). 0: none.
  size_t intro_size = 0;
  std::string intro_name = "introduction";  // for messages: "channel hello"
  // The TLS handshake is bounded by this; handshake and introduction
  // together by twice this, from the accept.
  std::chrono::milliseconds timeout{10000};
  size_t max_pending = 32;
  AdmissionLog log;    // may be empty
  std::string prefix;  // put before every log line ("tunnel: ")
};

// A connection whose admission ended, one way or the other.
struct Admitted {
  std::string peer;
  OpenedChannel oc;            // open when error is empty (io timeout: unset)
  std::vector<uint8_t> intro;  // the first intro_size bytes
  std::optional<Error> error;  // why it was not admitted
  bool evicted = false;        // by the overflow rule (the channel is gone)
};

class Admission {
 public:
  Admission(Listener& listener, AdmissionOptions opts);
  // Cuts every pending connection short and joins its thread.
  ~Admission();
  Admission(const Admission&) = delete;
  Admission& operator=(const Admission&) = delete;

  // Waits up to `timeout` for a connection (started on its own thread, the
  // overflow rule applied), a finished admission or a Wake(); enforces the
  // pending deadlines. Blocking: at most `timeout` (or the next deadline).
  void Poll(std::chrono::milliseconds timeout);

  // The admissions that ended since the last call, oldest first.
  std::vector<Admitted> TakeFinished();

  // Peers still pending.
  std::vector<std::string> PendingPeers() const;

  // Thread-safe: ends the current Poll() and, during an accept back-off,
  // retries accept() at once (a descriptor came back).
  void Wake() { acceptor_.Wake(); }

 private:
  struct Pending;
  void Start(Acceptor::Accepted a);
  void EvictForRoom();
  void ExpireOverdue();
  void Run(Pending& p, UniqueFd fd);
  void Log(const std::string& s) const;

  AdmissionOptions opts_;
  Acceptor acceptor_;
  mutable std::mutex mu_;
  std::list<std::unique_ptr<Pending>> pending_;  // oldest first
};

// The overflow rule alone (for tests and for Admission): given the sources
// of the live pending connections, oldest first, the index of the one to
// evict. `sources` must not be empty.
size_t ChooseEviction(const std::vector<std::string>& sources);

}  // namespace ktm

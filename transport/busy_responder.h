// While a destination runs a migration, later sources are told at once that
// it is busy instead of waiting in the listen backlog until it ends (and
// then reading the closed listener as a refused certificate).
//
// Internal to transport/ (RunDestination).
#pragma once

#include <atomic>
#include <condition_variable>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <thread>

#include "base/unique_fd.h"
#include "channel/acceptor.h"
#include "channel/address.h"
#include "transport/endpoint.h"

namespace ktm {

class BusyResponder {
 public:
  struct Options {
    SecurityConfig security;  // the destination's: a busy answer is authenticated like any other
    std::chrono::milliseconds hello_timeout{10000};
    size_t max_pending = 32;  // connections being answered at once; more wait in the backlog
    std::function<void(const std::string&)> log;
  };

  // Starts answering connections on `listener` (which must outlive this;
  // no other Acceptor may be using it): accept() failures follow the one
  // policy of channel/acceptor.h (back-off on EMFILE and the like).
  // Each connection gets its TLS handshake (or none), its hello is read, and the
  // acknowledgement says kBusy; then it is closed. Never blocks the caller.
  BusyResponder(Listener& listener, Options opts, std::string session);
  // Stops accepting, aborts the answers still in progress (shutdown of
  // their sockets) and joins their threads.
  ~BusyResponder();
  BusyResponder(const BusyResponder&) = delete;
  BusyResponder& operator=(const BusyResponder&) = delete;

 private:
  void AcceptLoop();
  void Answer(UniqueFd fd);
  void ReapFinished(bool all);
  size_t Running() const;  // answers in progress; under mu_

  struct Worker {
    std::thread thread;
    std::atomic<bool> done{false};
    UniqueFd abort;  // a dup of its socket: shutdown() ends its waits at once
  };

  Listener& listener_;
  Options opts_;
  std::string session_;
  Acceptor acceptor_;  // its Wake() ends the loop's wait (stop, a slot freed)
  std::mutex mu_;
  std::condition_variable slot_freed_;
  bool stopping_ = false;  // under mu_
  std::list<Worker> workers_;
  std::thread loop_;
};

}  // namespace ktm

// Stream socket addresses: parsing, resolution, connecting and listening.
//
// Syntax everywhere: "HOST:PORT", "[V6ADDR]:PORT" or "unix:PATH". A new
// address family (vsock, say) is added here and nowhere else.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

#include "base/unique_fd.h"

namespace ktm {

struct ParsedAddress {
  bool is_unix = false;
  std::string host;  // TCP: name or literal ("" = any, for listening)
  std::string port;  // TCP: decimal 0-65535
  std::string path;  // UNIX: socket path
};

// Throws Error(kUsage) saying which form was expected.
ParsedAddress ParseAddress(const std::string& address);

// Connects a stream socket to `address`, trying every resolved address,
// giving up after `timeout` per attempt. Returns a blocking, connected fd
// (TCP: with TCP_NODELAY, Nagle off, whatever runs over it later).
// Throws Error: kPeer (refused, unreachable), kTimeout, kUsage (bad address).
UniqueFd ConnectStream(const std::string& address, std::chrono::milliseconds timeout);

class SocketChannel;
struct SocketOptions;

// A listening socket.
class Listener {
 public:
  // The kernel's own cap (net.core.somaxconn) applies when larger.
  static constexpr int kDefaultBacklog = 4096;

  // Listens on "HOST:PORT" (PORT 0 picks a free port), "[V6]:PORT" or
  // "unix:PATH" (a stale socket file at PATH is replaced). TCP listeners
  // get TCP_NODELAY, which Linux copies to every socket accept() returns
  // (here or in any other accept loop on fd()).
  static Listener Listen(const std::string& address, int backlog = kDefaultBacklog);

  // Waits up to `timeout` (negative: forever) for a connection and returns
  // its fd (blocking, close-on-exec). A failing accept() follows the one
  // policy of channel/acceptor.h: short of descriptors or memory, it backs
  // off and retries within `timeout`. Throws Error(kTimeout) when none
  // arrives in time, Error(kLocalIo) with the errno when accept() was still
  // failing for lack of resources at the end.
  UniqueFd AcceptFd(std::chrono::milliseconds timeout);

  // The bound address in the same syntax Listen takes (port filled in).
  std::string address() const;
  uint16_t port() const;
  int fd() const { return fd_.get(); }

 private:
  UniqueFd fd_;
  int family_ = 0;
  std::string unix_path_;
};

// "HOST:PORT" of a socket's peer or local side, "unix:PATH" for AF_UNIX.
std::string SockName(int fd, bool peer);

}  // namespace ktm

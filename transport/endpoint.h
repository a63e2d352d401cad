// Opening one migration channel: a connected socket, then TLS (with the
// kTLS/zero-copy policy) or, with TLS off, the plain socket channel with
// MSG_ZEROCOPY.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "base/policy.h"
#include "base/unique_fd.h"
#include "channel/channel.h"
#include "ktls/establish.h"
#include "tls/tls_types.h"

namespace ktm {

struct SecurityConfig {
  bool tls = true;         // false: plaintext (guest memory in the clear)
  TlsOptions tls_options;  // role, credentials, peer name, verification
  KtlsMode ktls = KtlsMode::kAuto;
  ZeroCopyMode zero_copy = ZeroCopyMode::kAuto;
  // Plaintext channels: how zero-copy writes are issued. TLS channels
  // always use sendmsg (kTLS sockets refuse io_uring SEND_ZC; the path says so).
  SendBackend backend = SendBackend::kSendmsg;
};

struct OpenedChannel {
  std::unique_ptr<Channel> channel;
  std::string path;        // one line: which path and why
  std::string peer;        // the peer's address, for messages
  bool ktls = false;
  bool zero_copy = false;
  // The socket under the channel (owned by the channel): for socket
  // options and TCP_INFO while the channel is open.
  int fd = -1;
};

// Connects to `address` and opens the channel as `sec` says. Throws Error.
OpenedChannel OpenClientChannel(const std::string& address, const SecurityConfig& sec,
                                std::chrono::milliseconds timeout);
// Opens the channel on an accepted socket (the server side of TLS).
OpenedChannel OpenServerChannel(UniqueFd accepted, const SecurityConfig& sec);
// Opens the channel on a socket the caller connected (the client side of
// TLS): for callers that set socket options before the handshake.
OpenedChannel OpenConnectedChannel(UniqueFd connected, const SecurityConfig& sec);

// The path line of a plaintext channel (it may change after the first
// writes, e.g. when a socket refuses io_uring SEND_ZC).
std::string PlaintextPath(const Channel& ch);

}  // namespace ktm

// Opening one migration channel: TCP, then TLS (with the kTLS/zero-copy
// policy) or, with --no-tls, the plain socket channel with MSG_ZEROCOPY.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "channel/channel.h"
#include "channel/socket_channel.h"
#include "ktls/establish.h"

namespace ktm {

struct SecurityConfig {
  bool tls = true;
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
  bool ktls = false;
  bool zero_copy = false;
  SocketChannel* socket = nullptr;  // set for plaintext channels (zero-copy counters)
};

OpenedChannel OpenClientChannel(const std::string& address, const SecurityConfig& sec,
                                std::chrono::milliseconds timeout);
OpenedChannel OpenServerChannel(std::unique_ptr<SocketChannel> accepted, const SecurityConfig& sec);

}  // namespace ktm

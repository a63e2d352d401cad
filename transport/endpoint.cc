#include "transport/endpoint.h"

#include "channel/uring_sender.h"
#include "ktls/ktls.h"

namespace ktm {
namespace {

OpenedChannel Finish(std::unique_ptr<SocketChannel> sock, const SecurityConfig& sec) {
  OpenedChannel o;
  if (!sec.tls) {
    o.zero_copy = sock->zero_copy_available();
    o.path = "plaintext (--no-tls), " + sock->describe();
    o.socket = sock.get();
    o.channel = std::move(sock);
    return o;
  }
  TlsPathReport report;
  o.channel = EstablishTls(sock->release_fd(), sec.tls_options, sec.ktls, sec.zero_copy, &report);
  o.path = report.Summary();
  o.ktls = report.kind != TlsPathKind::kUserspace;
  o.zero_copy = report.zero_copy;
  if (sec.backend == SendBackend::kIoUring) {
    if (auto* k = dynamic_cast<KtlsChannel*>(o.channel.get())) {
      std::optional<std::string> why = ProbeSendZc(k->fd());
      o.path += why ? "; --backend io_uring: " + *why + ", so sends use sendmsg (plain send)"
                    : "; --backend io_uring accepted by this kTLS socket, but sends use sendmsg";
    } else {
      o.path += "; --backend io_uring not used: userspace TLS cannot send zero copy";
    }
  }
  return o;
}

SocketOptions SocketOptionsFor(const SecurityConfig& sec) {
  SocketOptions so;
  // SO_ZEROCOPY only where MSG_ZEROCOPY will be used: plain sockets.
  so.zero_copy = sec.tls ? ZeroCopyMode::kOff : sec.zero_copy;
  so.backend = sec.backend;
  return so;
}

}  // namespace

OpenedChannel OpenClientChannel(const std::string& address, const SecurityConfig& sec,
                                std::chrono::milliseconds timeout) {
  return Finish(SocketChannel::Connect(address, timeout, SocketOptionsFor(sec)), sec);
}

OpenedChannel OpenServerChannel(std::unique_ptr<SocketChannel> accepted, const SecurityConfig& sec) {
  return Finish(std::move(accepted), sec);
}

}  // namespace ktm

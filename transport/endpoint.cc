#include "transport/endpoint.h"

#include "channel/address.h"
#include "channel/socket_channel.h"
#include "channel/zero_copy_sender.h"
#include "ktls/ktls.h"

namespace ktm {
namespace {

SocketOptions SocketOptionsFor(const SecurityConfig& sec) {
  SocketOptions so;
  // Zero copy set up only where MSG_ZEROCOPY/SEND_ZC will be used: plain sockets.
  so.zero_copy = sec.tls ? ZeroCopyMode::kOff : sec.zero_copy;
  so.backend = sec.backend;
  return so;
}

OpenedChannel Finish(UniqueFd fd, const SecurityConfig& sec) {
  OpenedChannel o;
  o.peer = SockName(fd.get(), /*peer=*/true);
  o.fd = fd.get();
  if (!sec.tls) {
    auto sock = std::make_unique<SocketChannel>(std::move(fd), SocketOptionsFor(sec));
    o.zero_copy = sock->zero_copy_available();
    o.path = PlaintextPath(*sock);
    o.channel = std::move(sock);
    return o;
  }
  const int raw_fd = fd.get();
  TlsPathReport report;
  o.channel = EstablishTls(std::move(fd), sec.tls_options, sec.ktls, sec.zero_copy, &report);
  o.path = report.Summary();
  o.ktls = report.kind != TlsPathKind::kUserspace;
  o.zero_copy = report.zero_copy;
  if (sec.backend == SendBackend::kIoUring) {
    if (o.ktls) {
      std::optional<std::string> why = ProbeSendZc(raw_fd);
      o.path += why ? "; io_uring backend: " + *why + ", so sends use sendmsg (plain send)"
                    : "; io_uring backend accepted by this kTLS socket, but sends use sendmsg";
    } else {
      o.path += "; io_uring backend not used: userspace TLS cannot send zero copy";
    }
  }
  return o;
}

}  // namespace

std::string PlaintextPath(const Channel& ch) { return "plaintext (TLS off), " + ch.describe(); }

OpenedChannel OpenClientChannel(const std::string& address, const SecurityConfig& sec,
                                std::chrono::milliseconds timeout) {
  return Finish(ConnectStream(address, timeout), sec);
}

OpenedChannel OpenServerChannel(UniqueFd accepted, const SecurityConfig& sec) { return Finish(std::move(accepted), sec); }

OpenedChannel OpenConnectedChannel(UniqueFd connected, const SecurityConfig& sec) {
  return Finish(std::move(connected), sec);
}

}  // namespace ktm

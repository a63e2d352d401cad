#include "tls/handshake.h"

#include "tls/gnutls/gnutls_session.h"

namespace ktm {
namespace {
[[noreturn]] void NoOpensslYet() {
  throw Error(ErrorKind::kUsage, EINVAL, "the OpenSSL backend is not built in yet");
}
}  // namespace

std::unique_ptr<TlsSession> HandshakeTls(UniqueFd fd, const TlsOptions& opts) {
  switch (opts.backend) {
    case TlsBackend::kGnutls:
      return GnutlsSession::Handshake(std::move(fd), opts);
    case TlsBackend::kOpenssl:
      NoOpensslYet();
  }
  throw Error(ErrorKind::kUsage, EINVAL, "unknown TLS backend");
}

void CheckTlsPolicy(TlsBackend backend, const TlsCryptoPolicy& policy) {
  switch (backend) {
    case TlsBackend::kGnutls:
      GnutlsSession::CheckPolicy(policy);
      return;
    case TlsBackend::kOpenssl:
      NoOpensslYet();
  }
  throw Error(ErrorKind::kUsage, EINVAL, "unknown TLS backend");
}

std::string TlsLibraryVersion(TlsBackend backend) {
  switch (backend) {
    case TlsBackend::kGnutls:
      return GnutlsSession::LibraryVersion();
    case TlsBackend::kOpenssl:
      return "OpenSSL (not built in yet)";
  }
  return "unknown";
}

std::string TlsLibraryKtlsAbility(TlsBackend backend) {
  switch (backend) {
    case TlsBackend::kGnutls:
      return GnutlsSession::KtlsAbility();
    case TlsBackend::kOpenssl:
      return "unknown (not built in yet)";
  }
  return "unknown";
}

}  // namespace ktm

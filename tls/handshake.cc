#include "tls/handshake.h"

#include "tls/gnutls/gnutls_session.h"
#include "tls/openssl/openssl_session.h"

namespace ktm {
std::unique_ptr<TlsSession> HandshakeTls(UniqueFd fd, const TlsOptions& opts) {
  switch (opts.backend) {
    case TlsBackend::kGnutls:
      return GnutlsSession::Handshake(std::move(fd), opts);
    case TlsBackend::kOpenssl:
      return OpensslSession::Handshake(std::move(fd), opts);
  }
  throw Error(ErrorKind::kUsage, EINVAL, "unknown TLS backend");
}

void CheckTlsPolicy(TlsBackend backend, const TlsCryptoPolicy& policy) {
  switch (backend) {
    case TlsBackend::kGnutls:
      GnutlsSession::CheckPolicy(policy);
      return;
    case TlsBackend::kOpenssl:
      OpensslSession::CheckPolicy(policy);
      return;
  }
  throw Error(ErrorKind::kUsage, EINVAL, "unknown TLS backend");
}

std::string TlsLibraryVersion(TlsBackend backend) {
  switch (backend) {
    case TlsBackend::kGnutls:
      return GnutlsSession::LibraryVersion();
    case TlsBackend::kOpenssl:
      return OpensslSession::LibraryVersion();
  }
  return "unknown";
}

std::string TlsLibraryKtlsAbility(TlsBackend backend) {
  switch (backend) {
    case TlsBackend::kGnutls:
      return GnutlsSession::KtlsAbility();
    case TlsBackend::kOpenssl:
      return OpensslSession::KtlsAbility();
  }
  return "unknown";
}

}  // namespace ktm

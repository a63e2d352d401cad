#include "tls/handshake.h"

#include "tls/gnutls/gnutls_session.h"

namespace ktm {

std::unique_ptr<TlsSession> HandshakeTls(UniqueFd fd, const TlsOptions& opts) {
  switch (opts.backend) {
    case TlsBackend::kGnutls:
      return GnutlsSession::Handshake(std::move(fd), opts);
  }
  throw Error(ErrorKind::kUsage, EINVAL, "unknown TLS backend");
}

void CheckTlsPriority(TlsBackend backend, const std::string& priority) {
  switch (backend) {
    case TlsBackend::kGnutls:
      GnutlsSession::CheckPriority(priority);
      return;
  }
  throw Error(ErrorKind::kUsage, EINVAL, "unknown TLS backend");
}

std::string TlsLibraryVersion(TlsBackend backend) {
  switch (backend) {
    case TlsBackend::kGnutls:
      return GnutlsSession::LibraryVersion();
  }
  return "unknown";
}

}  // namespace ktm

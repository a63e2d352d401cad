#include "tls/tls_session.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>

namespace ktm {
namespace {

bool IsIpLiteral(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

X509Crt PeerCert(gnutls_session_t s) {
  unsigned n = 0;
  const gnutls_datum_t* certs = gnutls_certificate_get_peers(s, &n);
  if (!certs || n == 0) return nullptr;
  X509Crt crt = NewCrt();
  if (gnutls_x509_crt_import(crt.get(), &certs[0], GNUTLS_X509_FMT_DER) < 0) return nullptr;
  return crt;
}

std::string VerifyFailureMessage(gnutls_session_t s, const TlsOptions& o) {
  unsigned status = gnutls_session_get_verify_cert_status(s);
  const char* who = o.role == TlsRole::kClient ? "server" : "client";
  OwnedDatum printed;
  gnutls_certificate_verification_status_print(status, GNUTLS_CRT_X509, &printed.d, 0);
  X509Crt peer = PeerCert(s);
  std::string cn = peer ? CrtCommonName(peer.get()) : "";
  std::string msg = std::string("the ") + who + "'s certificate" +
                    (cn.empty() ? "" : " '" + cn + "'") + " was rejected: ";
  if (status & GNUTLS_CERT_UNEXPECTED_OWNER) {
    msg += "expected the name '" + o.peer_name + "' but the certificate holds " +
           (peer ? CrtSubjectAltNames(peer.get()) : std::string("no names")) +
           "; connect using one of those names or pass --tls-hostname";
  } else if (status & GNUTLS_CERT_REVOKED) {
    msg += "it is revoked by the CRL (" + (o.creds ? o.creds->files().crl : std::string()) + ")";
  } else if (status & GNUTLS_CERT_EXPIRED) {
    msg += "it has expired" +
           (peer ? " (on " + FormatTime(gnutls_x509_crt_get_expiration_time(peer.get())) + ")" : "");
  } else if (status & GNUTLS_CERT_NOT_ACTIVATED) {
    msg += "it is not valid yet (check the clocks)";
  } else if (status & (GNUTLS_CERT_SIGNER_NOT_FOUND | GNUTLS_CERT_SIGNER_NOT_CA)) {
    msg += "it is not signed by a trusted CA (" + (o.creds ? o.creds->files().ca : std::string()) + ")";
  } else {
    msg += printed.str();
  }
  return msg;
}

std::string HandshakeFailureMessage(int rc, gnutls_session_t s, const TlsOptions& o) {
  const char* peer = o.role == TlsRole::kClient ? "server" : "client";
  switch (rc) {
    case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
    case GNUTLS_E_CERTIFICATE_ERROR:
      return "TLS handshake failed: " + VerifyFailureMessage(s, o);
    case GNUTLS_E_NO_CERTIFICATE_FOUND:
    case GNUTLS_E_CERTIFICATE_REQUIRED:
      return std::string("TLS handshake failed: the ") + peer +
             " presented no certificate, but one is required (give it its own "
             "certificate, e.g. client-cert.pem/client-key.pem in its --tls-creds dir)";
    case GNUTLS_E_FATAL_ALERT_RECEIVED: {
      const char* alert = gnutls_alert_get_name(gnutls_alert_get(s));
      return std::string("TLS handshake failed: the ") + peer + " refused it with alert '" +
             (alert ? alert : "?") + "' (see the " + peer + "'s log for why)";
    }
    case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
    case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
    case GNUTLS_E_UNEXPECTED_PACKET:
    case GNUTLS_E_DECRYPTION_FAILED:
      return std::string("TLS handshake failed: the ") + peer +
             " did not speak TLS (" + gnutls_strerror(rc) + "); is it running with --no-tls?";
    case GNUTLS_E_PREMATURE_TERMINATION:
    case GNUTLS_E_PUSH_ERROR:
    case GNUTLS_E_PULL_ERROR:
      return std::string("TLS handshake failed: the ") + peer +
             " closed the connection during the handshake (it probably rejected our certificate)";
    case GNUTLS_E_TIMEDOUT:
      return std::string("TLS handshake timed out: the ") + peer + " did not answer (is it speaking TLS?)";
    case GNUTLS_E_NO_PRIORITIES_WERE_SET:
    case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
    case GNUTLS_E_NO_CIPHER_SUITES:
    case GNUTLS_E_UNKNOWN_CIPHER_SUITE:
      return std::string("TLS handshake failed: no protocol version/cipher in common with the ") +
             peer + " (" + gnutls_strerror(rc) + "; priority '" + o.priority + "')";
    default:
      return std::string("TLS handshake failed: ") + gnutls_strerror(rc);
  }
}

}  // namespace

std::unique_ptr<TlsSession> TlsSession::Handshake(UniqueFd fd, const TlsOptions& o) {
  if (!o.creds) throw Error(EINVAL, "TLS needs credentials (--tls-creds, or --tls-ca/--tls-cert/--tls-key)");
  if (o.role == TlsRole::kClient && o.verify_peer && o.peer_name.empty()) {
    throw Error(EINVAL, "TLS client needs the server's name to verify (--tls-hostname)");
  }
  std::unique_ptr<TlsSession> t(new TlsSession());
  t->fd_ = std::move(fd);
  gnutls_session_t s;
  unsigned flags = o.role == TlsRole::kServer ? GNUTLS_SERVER : GNUTLS_CLIENT;
  CheckGnutls(gnutls_init(&s, flags), "gnutls_init");
  t->session_.reset(s);
  const char* err_pos = nullptr;
  int rc = gnutls_priority_set_direct(s, o.priority.c_str(), &err_pos);
  if (rc < 0) {
    throw Error(EINVAL, "bad TLS priority string '" + o.priority + "' near '" +
                            (err_pos ? err_pos : "") + "': " + gnutls_strerror(rc));
  }
  CheckGnutls(gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, o.creds->get()), "set credentials");
  if (o.role == TlsRole::kServer) {
    gnutls_certificate_server_set_request(
        s, o.require_client_cert ? GNUTLS_CERT_REQUIRE : GNUTLS_CERT_REQUEST);
    if (o.verify_peer) gnutls_session_set_verify_cert(s, nullptr, 0);
  } else {
    if (!o.peer_name.empty() && !IsIpLiteral(o.peer_name)) {
      gnutls_server_name_set(s, GNUTLS_NAME_DNS, o.peer_name.data(), o.peer_name.size());
    }
    // Chain, validity, revocation (CRL in the credentials) and the name,
    // checked during the handshake so nothing flows if any fails.
    if (o.verify_peer) gnutls_session_set_verify_cert(s, o.peer_name.c_str(), 0);
  }
  if (o.qemu_style) {
    // The way QEMU does it: GnuTLS never sees the fd, only callbacks.
    gnutls_transport_set_ptr(s, reinterpret_cast<gnutls_transport_ptr_t>(static_cast<intptr_t>(t->fd_.get())));
    gnutls_transport_set_push_function(s, [](gnutls_transport_ptr_t p, const void* d, size_t n) -> ssize_t {
      return ::send(static_cast<int>(reinterpret_cast<intptr_t>(p)), d, n, MSG_NOSIGNAL);
    });
    gnutls_transport_set_pull_function(s, [](gnutls_transport_ptr_t p, void* d, size_t n) -> ssize_t {
      return ::recv(static_cast<int>(reinterpret_cast<intptr_t>(p)), d, n, 0);
    });
    gnutls_transport_set_pull_timeout_function(s, [](gnutls_transport_ptr_t p, unsigned ms) -> int {
      pollfd pf{static_cast<int>(reinterpret_cast<intptr_t>(p)), POLLIN, 0};
      return ::poll(&pf, 1, ms == GNUTLS_INDEFINITE_TIMEOUT ? -1 : static_cast<int>(ms));
    });
  } else {
    gnutls_transport_set_int(s, t->fd_.get());
  }
  gnutls_handshake_set_timeout(s, static_cast<unsigned>(o.handshake_timeout.count()));
  do {
    rc = gnutls_handshake(s);
  } while (rc < 0 && gnutls_error_is_fatal(rc) == 0);
  if (rc < 0) throw Error(ECONNABORTED, HandshakeFailureMessage(rc, s, o));
  if (o.role == TlsRole::kServer && o.verify_peer && o.require_client_cert &&
      gnutls_certificate_get_peers(s, nullptr) == nullptr) {
    throw Error(ECONNABORTED, "TLS handshake failed: the client presented no certificate, but one is required");
  }
  return t;
}

gnutls_protocol_t TlsSession::version() const { return gnutls_protocol_get_version(session_.get()); }
gnutls_cipher_algorithm_t TlsSession::cipher() const { return gnutls_cipher_get(session_.get()); }
std::string TlsSession::version_name() const {
  const char* n = gnutls_protocol_get_name(version());
  return n ? n : "?";
}
std::string TlsSession::cipher_name() const {
  const char* n = gnutls_cipher_get_name(cipher());
  return n ? n : "?";
}
std::string TlsSession::peer_common_name() const {
  X509Crt c = PeerCert(session_.get());
  return c ? CrtCommonName(c.get()) : "";
}

}  // namespace ktm

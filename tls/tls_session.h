// A GnuTLS session that owns the socket fd.
//
// The fd is handed to GnuTLS with gnutls_transport_set_int(), never wrapped
// in push/pull callbacks: that is what allows the session to be moved into
// the kernel afterwards (ktls/), and what lets GnuTLS use kTLS itself where
// it was built with it.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "certs/credentials.h"
#include "certs/gnutls_util.h"
#include "channel/unique_fd.h"

namespace ktm {

// TLS 1.3 preferred, TLS 1.2 allowed, AEAD ciphers only (what kTLS can take).
inline constexpr const char* kDefaultPriority =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305";

struct TlsOptions {
  TlsRole role = TlsRole::kClient;
  std::shared_ptr<Credentials> creds;
  // Client: the name (DNS or IP literal) the server certificate must hold.
  std::string peer_name;
  // Verify the peer's chain (to the CA), name, validity and revocation.
  bool verify_peer = true;
  // Server: insist on a client certificate.
  bool require_client_cert = true;
  std::string priority = kDefaultPriority;
  std::chrono::milliseconds handshake_timeout{30000};
  // Benchmark anchor only: drive GnuTLS through push/pull callbacks and send
  // one record per 4 KiB page, as QEMU's TLS channel does today. Never kTLS.
  bool qemu_style = false;
};

class TlsSession {
 public:
  // Runs the handshake on `fd` (blocking). On any failure throws an Error
  // that says what was wrong (which name was expected and which the
  // certificate holds, revoked, expired, untrusted, no client certificate,
  // plaintext peer...); no application data has flowed by then.
  static std::unique_ptr<TlsSession> Handshake(UniqueFd fd, const TlsOptions& opts);

  gnutls_session_t get() const { return session_.get(); }
  int fd() const { return fd_.get(); }
  // Takes the fd away (the session must no longer be used for I/O).
  UniqueFd release_fd() { return std::move(fd_); }

  gnutls_protocol_t version() const;
  gnutls_cipher_algorithm_t cipher() const;
  std::string version_name() const;
  std::string cipher_name() const;
  // CN of the verified peer certificate ("" if none).
  std::string peer_common_name() const;

 private:
  TlsSession() = default;
  UniqueFd fd_;
  GnutlsSession session_;
};

}  // namespace ktm

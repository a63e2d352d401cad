// The TLS vocabulary of the library, independent of the TLS library that
// runs the handshake: protocol versions, ciphers, options, alerts.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "base/error.h"
#include "certs/credentials.h"

namespace ktm {

enum class TlsVersion { kTls12, kTls13, kOther };
enum class TlsCipher { kAes128Gcm, kAes256Gcm, kChacha20Poly1305, kAes128Ccm, kOther };

// "TLS1.2", "TLS1.3"; "AES-128-GCM", "CHACHA20-POLY1305" (IANA-like names).
const char* ToString(TlsVersion v);
const char* ToString(TlsCipher c);

// Which TLS library runs the handshake and userspace records.
enum class TlsBackend { kGnutls };

// TLS 1.3 preferred, TLS 1.2 allowed, AEAD ciphers only (what kTLS can take).
// In the GnuTLS backend's priority-string syntax.
inline constexpr const char* kDefaultPriority =
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:"
    "+CHACHA20-POLY1305";

struct TlsOptions {
  TlsBackend backend = TlsBackend::kGnutls;
  TlsRole role = TlsRole::kClient;
  std::shared_ptr<Credentials> creds;
  // Client: the name (DNS or IP literal) the server certificate must hold.
  std::string peer_name;
  // Verify the peer's chain (to the CA), name, validity and revocation.
  bool verify_peer = true;
  // Server: insist on a client certificate.
  bool require_client_cert = true;
  // Protocol versions and ciphers, in the backend's syntax.
  std::string priority = kDefaultPriority;
  std::chrono::milliseconds handshake_timeout{30000};
  // Change our send key (TLS 1.3 KeyUpdate) after this many bytes as well
  // as before the cipher's record limit; 0: at the record limit only. A
  // low value lets tests re-key hundreds of times in one transfer.
  uint64_t rekey_after_bytes = 0;
};

// TLS alert descriptions (RFC 8446 6.2) by number.
inline constexpr uint8_t kAlertCloseNotify = 0;
// "handshake_failure (40)" style name; "unknown (N)" for others.
std::string TlsAlertName(uint8_t description);

// The error for a fatal alert received after the handshake: an alert about
// certificates (bad/unknown/revoked/expired certificate, unknown CA, access
// denied, certificate required, handshake failure) means the peer refused
// our certificate: Error(kSecurity) saying so; unexpected_message,
// bad_record_mac, record_overflow and decode_error mean the peer refused our
// records as forged or corrupted: Error(kIntegrity); any other is
// Error(kPeer).
Error AlertReceivedError(uint8_t description, const std::string& during);

}  // namespace ktm

// The TLS vocabulary of the library, independent of the TLS library that
// runs the handshake: protocol versions, ciphers, options, alerts.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "base/error.h"
#include "certs/credentials.h"

namespace ktm {

enum class TlsVersion { kTls12, kTls13, kOther };
enum class TlsCipher { kAes128Gcm, kAes256Gcm, kChacha20Poly1305, kAes128Ccm, kOther };

// "TLS1.2", "TLS1.3"; "AES-128-GCM", "CHACHA20-POLY1305" (IANA-like names).
const char* ToString(TlsVersion v);
const char* ToString(TlsCipher c);

// Records one key may protect before it must change, with margin under the
// published limits: AES-GCM 2^24 (RFC 8446 5.5 gives 2^24.5 full records),
// AES-CCM 2^21 (the strictest published figure, RFC 9001 6.6's 2^21.5
// packets), ChaCha20-Poly1305 2^62 (no practical limit: its bound exceeds
// the sequence number space RFC 8446 leaves).
uint64_t RecordLimit(TlsCipher c);

// Spaces the TLS 1.3 KeyUpdates a sender starts for its own reasons (a
// byte limit): GnuTLS (3.6.14 on, Debian's 3.7.9 included) refuses more
// than 8 KeyUpdates from its peer within one second as a flood
// (GNUTLS_E_TOO_MANY_HANDSHAKE_PACKETS, "Too many handshake packets"), and
// the peer may be GnuTLS. So at most kPerWindow updates start within
// kWindow, which is longer than GnuTLS's 1 s by a margin for updates that
// wait longer in the socket than the first of their window did. A due
// update that must wait leaves the byte limit overrun for that long; the
// record limit (RecordLimit) is never overrun: that update goes anyway.
class KeyUpdatePace {
 public:
  using Clock = std::chrono::steady_clock;
  static constexpr int kPerWindow = 8;
  static constexpr std::chrono::milliseconds kWindow{1500};
  // Whether an update may start at `now`.
  bool may_send(Clock::time_point now) const { return count_ < kPerWindow || now - start_ > kWindow; }
  // An update left at `now` (any update, answers to the peer included).
  void sent(Clock::time_point now) {
    if (count_ == 0 || now - start_ > kWindow) {
      start_ = now;
      count_ = 0;
    }
    ++count_;
  }

 private:
  Clock::time_point start_{};
  int count_ = 0;
};

// What one direction's send key has protected, against its limits: the
// cipher's record limit and, optionally, a byte limit (--rekey-after).
// Shared by every TLS channel, kernel or userspace, so both count alike.
// Writer-thread state: not thread-safe.
class SendKeyUse {
 public:
  static constexpr uint64_t kMaxRecordPayload = 16384;  // TLS plaintext per record (2^14)

  void set_limits(uint64_t records, uint64_t bytes) {
    limit_records_ = records;
    limit_bytes_ = bytes;
  }
  uint64_t limit_records() const { return limit_records_; }
  uint64_t limit_bytes() const { return limit_bytes_; }
  uint64_t records() const { return records_; }
  uint64_t bytes() const { return bytes_; }

  // Bytes the key may still protect by its record limit alone, one record
  // kept back for the KeyUpdate itself (assumes full records).
  uint64_t RecordBytesLeft() const {
    const uint64_t r = records_ + 1 >= limit_records_ ? 0 : limit_records_ - records_ - 1;
    return r > UINT64_MAX / kMaxRecordPayload ? UINT64_MAX : r * kMaxRecordPayload;
  }
  // ...and also by the byte limit.
  uint64_t BytesLeft() const {
    const uint64_t left = RecordBytesLeft();
    if (limit_bytes_ == 0) return left;
    return std::min(left, bytes_ >= limit_bytes_ ? 0 : limit_bytes_ - bytes_);
  }
  // One write of n bytes: it ends its records, so ceil(n / 2^14) of them.
  void Count(uint64_t n) {
    bytes_ += n;
    records_ += (n + kMaxRecordPayload - 1) / kMaxRecordPayload;
  }
  // A new key.
  void Reset() { records_ = bytes_ = 0; }

 private:
  uint64_t limit_records_ = 0, limit_bytes_ = 0;
  uint64_t records_ = 0, bytes_ = 0;
};

// Which TLS library runs the handshake and userspace records.
enum class TlsBackend { kGnutls, kOpenssl };
inline constexpr TlsBackend kAllTlsBackends[] = {TlsBackend::kGnutls, TlsBackend::kOpenssl};
// "gnutls", "openssl" (the CLI's spelling); the library's own name
// ("GnuTLS", "OpenSSL") for reports.
const char* ToString(TlsBackend b);
const char* LibraryName(TlsBackend b);
// "gnutls" | "openssl"; throws Error(kUsage) naming `what` otherwise.
TlsBackend ParseTlsBackend(const std::string& s, const std::string& what = "--tls-backend");

// Which protocol versions and ciphers a session may use, in the library's
// vocabulary (both backends turn it into their own settings). The default
// is what the kernel cipher table can take: TLS 1.3 preferred, TLS 1.2
// allowed, AEAD ciphers only, AES-GCM first.
struct TlsCryptoPolicy {
  std::vector<TlsVersion> versions = {TlsVersion::kTls13, TlsVersion::kTls12};
  std::vector<TlsCipher> ciphers = {TlsCipher::kAes128Gcm, TlsCipher::kAes256Gcm,
                                    TlsCipher::kChacha20Poly1305};
  // The backend's own syntax, replacing versions and ciphers for that
  // backend only: a GnuTLS priority string ("NORMAL:-VERS-ALL:+VERS-TLS1.3")
  // or OpenSSL SSL_CONF commands ("MinProtocol=TLSv1.3,Ciphersuites=...").
  // For operators who must match a site policy the enums cannot express.
  std::string library_override;
};
// "1.3,1.2" (also "tls1.3", "TLS1.2"): the listed versions, at least one.
// Throws Error(kUsage) naming `what` and the bad item.
std::vector<TlsVersion> ParseTlsVersions(const std::string& s, const std::string& what = "--tls-versions");
// "aes-128-gcm,aes-256-gcm,chacha20-poly1305,aes-128-ccm" (case-insensitive).
std::vector<TlsCipher> ParseTlsCiphers(const std::string& s, const std::string& what = "--tls-ciphers");
// "TLS1.3,TLS1.2" / "AES-128-GCM,..." for reports.
std::string ToString(const TlsCryptoPolicy& p);

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
  // Server: when not empty, a verified client certificate must also match
  // one of these shell patterns (fnmatch(3), as QEMU's tls-authz list
  // does), against its subject DN in RFC 4514 form ("CN=host1,O=Example")
  // or its common name alone. A client that matches none is refused during
  // the handshake (access_denied); see ClientAllowListRefusal().
  std::vector<std::string> allowed_clients;
  TlsCryptoPolicy policy;
  // Let the TLS library move the session into the kernel itself, where it
  // can (OpenSSL's SSL_OP_ENABLE_KTLS). EstablishTls clears it for
  // --ktls off, so "off" means no kTLS by anyone.
  bool allow_library_ktls = true;
  std::chrono::milliseconds handshake_timeout{30000};
  // Change our send key (TLS 1.3 KeyUpdate) after this many bytes as well
  // as before the cipher's record limit; 0: at the record limit only. A
  // low value lets tests re-key hundreds of times in one transfer.
  uint64_t rekey_after_bytes = 0;
};

// The allow-list check both backends run on a verified client certificate:
// "" when `patterns` is empty or one matches `subject_dn` or `common_name`,
// else the sentence the server reports ("the client's certificate subject
// 'CN=x,O=y' is not on the allow-list (--tls-allow-client ...)").
std::string ClientAllowListRefusal(const std::vector<std::string>& patterns, const std::string& subject_dn,
                                   const std::string& common_name);

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

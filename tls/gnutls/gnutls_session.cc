#include "tls/gnutls/gnutls_session.h"

#include <arpa/inet.h>
#include <poll.h>
#include <sys/socket.h>
#include <gnutls/socket.h>


#include <string.h>

#include <cstring>

#include "base/error.h"
#include "base/fd_wait.h"
#include "tls/gnutls/gnutls_credentials.h"
#include "tls/gnutls/gnutls_record_channel.h"

namespace ktm {

// The peer certificate's verification status: GnuTLS's own (its automatic
// check, gnutls_session_set_verify_cert), or ours where the allow-list
// check replaced it (VerifyAllowedClient).
unsigned VerifyStatus(gnutls_session_t s) {
  const auto* me = static_cast<const GnutlsSession*>(gnutls_session_get_ptr(s));
  return me && me->own_verify_ran_ ? me->own_verify_status_ : gnutls_session_get_verify_cert_status(s);
}

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
  unsigned status = VerifyStatus(s);
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
           "; connect using one of those names or set the expected peer name to one of them";
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

Error HandshakeFailure(int rc, gnutls_session_t s, const TlsOptions& o, unsigned peer_messages) {
  const char* peer = o.role == TlsRole::kClient ? "server" : "client";
  const auto sec = [](std::string m, Remedy r = Remedy::kNone) {
    return Error(ErrorKind::kSecurity, ECONNABORTED, std::move(m), r);
  };
  switch (rc) {
    case GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR:
    case GNUTLS_E_CERTIFICATE_ERROR: {
      if (const auto* me = static_cast<const GnutlsSession*>(gnutls_session_get_ptr(s));
          me && !me->allow_list_refusal().empty()) {
        return Error(ErrorKind::kSecurity, EACCES, "TLS handshake failed: " + me->allow_list_refusal());
      }
      const bool name = (VerifyStatus(s) & GNUTLS_CERT_UNEXPECTED_OWNER) != 0;
      return sec("TLS handshake failed: " + VerifyFailureMessage(s, o), name ? Remedy::kPeerName : Remedy::kNone);
    }
    case GNUTLS_E_NO_CERTIFICATE_FOUND:
    case GNUTLS_E_CERTIFICATE_REQUIRED:
      return sec(std::string("TLS handshake failed: the ") + peer +
                 " presented no certificate, but one is required (give it its own certificate, e.g. "
                 "client-cert.pem/client-key.pem in its credentials directory)",
                 Remedy::kCredentials);
    case GNUTLS_E_FATAL_ALERT_RECEIVED: {
      const char* alert = gnutls_alert_get_name(gnutls_alert_get(s));
      if (gnutls_alert_get(s) == GNUTLS_A_BAD_RECORD_MAC) {
        return Error(ErrorKind::kIntegrity, EBADMSG,
                     std::string("TLS handshake failed: the ") + peer +
                         " could not authenticate our handshake records (alert '" + (alert ? alert : "?") +
                         "'): the handshake was corrupted or tampered with in transit");
      }
      return sec(std::string("TLS handshake failed: the ") + peer + " refused it with alert '" +
                 (alert ? alert : "?") + "'" +
                 (o.role == TlsRole::kClient ? " (the destination refused our certificate or our parameters; "
                                               "its log says which)"
                                             : " (see the client's log for why)"));
    }
    case GNUTLS_E_UNEXPECTED_PACKET_LENGTH:
    case GNUTLS_E_UNSUPPORTED_VERSION_PACKET:
    case GNUTLS_E_UNEXPECTED_PACKET:
    case GNUTLS_E_DECRYPTION_FAILED:
      if (peer_messages > 0) {
        // It spoke TLS (a handshake message arrived), then a record failed.
        return Error(ErrorKind::kIntegrity, EBADMSG,
                     std::string("TLS handshake failed: the ") + peer +
                         " speaks TLS, but a record of its handshake was corrupted or tampered with in transit (" +
                         gnutls_strerror(rc) + ")");
      }
      return sec(std::string("TLS handshake failed: the ") + peer + " did not speak TLS (" + gnutls_strerror(rc) +
                     "); is it running without TLS?",
                 Remedy::kPeerUsesPlaintext);
    case GNUTLS_E_PREMATURE_TERMINATION:
    case GNUTLS_E_PUSH_ERROR:
    case GNUTLS_E_PULL_ERROR:
      return sec(std::string("TLS handshake failed: the ") + peer +
                 " closed the connection during the handshake (it probably refused our certificate)");
    case GNUTLS_E_TIMEDOUT:
      return Error(ErrorKind::kTimeout, ETIMEDOUT,
                   std::string("TLS handshake timed out: the ") + peer + " did not answer (is it speaking TLS?)");
    case GNUTLS_E_NO_PRIORITIES_WERE_SET:
    case GNUTLS_E_INSUFFICIENT_CREDENTIALS:
    case GNUTLS_E_NO_CIPHER_SUITES:
    case GNUTLS_E_UNKNOWN_CIPHER_SUITE:
      return sec(std::string("TLS handshake failed: no protocol version/cipher in common with the ") + peer +
                 " (" + gnutls_strerror(rc) + "; policy " + ToString(o.policy) + ")");
    default:
      return sec(std::string("TLS handshake failed: ") + gnutls_strerror(rc));
  }
}

// After a failed handshake: send the peer the alert that says why (GnuTLS
// leaves that to the application), then close gently: stop writing and read
// what the peer still sends for a moment. Closing with unread input would
// make the kernel answer with RST, and an RST can destroy the alert before
// the peer reads it: the peer would see "reset" instead of "certificate
// refused".
void TellPeerAndLinger(gnutls_session_t s, int fd, int rc, bool access_denied) {
  // A client refused by the allow-list holds a valid certificate: the
  // alert for that is access_denied (RFC 8446 6.2), not bad_certificate.
  if (access_denied) {
    gnutls_alert_send(s, GNUTLS_AL_FATAL, GNUTLS_A_ACCESS_DENIED);
  } else {
    gnutls_alert_send_appropriate(s, rc);
  }
  ::shutdown(fd, SHUT_WR);
  char buf[4096];
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
  for (;;) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || PollFd(fd, POLLIN, left) == 0) break;
    if (::recv(fd, buf, sizeof(buf), MSG_DONTWAIT) <= 0) break;
  }
}

}  // namespace

// Counts the handshake messages the peer sent us (the hook runs as each
// arrives, before it is processed): once there is one, the peer speaks TLS,
// and a record that fails later was corrupted on the way, not plaintext.
// After the handshake it also counts TLS 1.3 KeyUpdates both ways (GnuTLS
// runs the hook for the ones it sends too) and notes a peer's request for
// ours: GnuTLS's own pending answer is lost when the channel corks again
// (gnutls_record_cork overwrites that state), so the channel answers.
int CountPeerHandshakeMessage(gnutls_session_t s, unsigned htype, unsigned /*when*/, unsigned incoming,
                              const gnutls_datum_t* msg) {
  auto* me = static_cast<GnutlsSession*>(gnutls_session_get_ptr(s));
  if (htype == GNUTLS_HANDSHAKE_KEY_UPDATE) {
    if (!incoming) {
      ++me->key_updates_sent_;
    } else {
      ++me->key_updates_received_;
      // The body is one byte: update_requested (1) or not (0).
      if (msg && msg->size > 0 && msg->data[msg->size - 1] == 1) me->key_update_requested_ = true;
    }
  }
  if (incoming) ++me->peer_handshake_messages_;
  return 0;
}

// GnuTLS reports each traffic secret as it installs it; the application
// level's are the ones the kernel path needs to follow and initiate TLS 1.3
// KeyUpdates after the session has moved into the kernel. A side may be
// NULL when only one direction changes.
int ReportSecrets(gnutls_session_t s, gnutls_record_encryption_level_t level, const void* secret_read,
                  const void* secret_write, size_t secret_size) {
  if (level != GNUTLS_ENCRYPTION_LEVEL_APPLICATION) return 0;
  auto* me = static_cast<GnutlsSession*>(gnutls_session_get_ptr(s));
  if (secret_size > me->secret_rx_.size()) return GNUTLS_E_INTERNAL_ERROR;
  me->secret_size_ = secret_size;
  if (secret_read) std::memcpy(me->secret_rx_.data(), secret_read, secret_size);
  if (secret_write) std::memcpy(me->secret_tx_.data(), secret_write, secret_size);
  return 0;
}

// A server's certificate check when it has an allow-list: GnuTLS's own
// check first (what gnutls_session_set_verify_cert's callback does: chain
// to the trust file, validity, the CRL), then the allow-list on the
// verified subject. Runs during the handshake, before the server's
// Finished (TLS 1.2) or before it accepts the client's (TLS 1.3), so a
// refused client never exchanges application data.
int VerifyAllowedClient(gnutls_session_t s) {
  auto* me = static_cast<GnutlsSession*>(gnutls_session_get_ptr(s));
  if (me->verify_peer_) {
    unsigned status = 0;
    const int rc = gnutls_certificate_verify_peers2(s, &status);
    // No certificate: say so (GnuTLS's own check would only say
    // "certificate error"); the allow-list needs one.
    if (rc == GNUTLS_E_NO_CERTIFICATE_FOUND) return rc;
    if (rc < 0) return GNUTLS_E_CERTIFICATE_ERROR;
    me->own_verify_ran_ = true;
    me->own_verify_status_ = status;
    if (status != 0) return GNUTLS_E_CERTIFICATE_VERIFICATION_ERROR;
  } else if (gnutls_certificate_get_peers(s, nullptr) == nullptr) {
    return GNUTLS_E_NO_CERTIFICATE_FOUND;
  }
  me->allow_list_refusal_ = ClientAllowListRefusal(me->allowed_clients_, me->peer_subject(), me->peer_common_name());
  return me->allow_list_refusal_.empty() ? 0 : GNUTLS_E_CERTIFICATE_ERROR;
}

GnutlsSession::~GnutlsSession() {
  explicit_bzero(secret_rx_.data(), secret_rx_.size());
  explicit_bzero(secret_tx_.data(), secret_tx_.size());
}

std::string GnutlsSession::PriorityString(const TlsCryptoPolicy& p) {
  if (!p.library_override.empty()) return p.library_override;
  std::string s = "NORMAL:-VERS-ALL";
  for (TlsVersion v : p.versions) {
    if (v == TlsVersion::kTls13) s += ":+VERS-TLS1.3";
    if (v == TlsVersion::kTls12) s += ":+VERS-TLS1.2";
  }
  s += ":-CIPHER-ALL";
  for (TlsCipher c : p.ciphers) {
    if (c != TlsCipher::kOther) s += std::string(":+") + ToString(c);  // GnuTLS spells them as we do
  }
  return s;
}

void GnutlsSession::CheckPolicy(const TlsCryptoPolicy& policy) {
  if (policy.library_override.empty() && (policy.versions.empty() || policy.ciphers.empty())) {
    throw Error(ErrorKind::kUsage, EINVAL, "the TLS policy allows no " +
                                               std::string(policy.versions.empty() ? "version" : "cipher"));
  }
  const std::string priority = PriorityString(policy);
  gnutls_priority_t cache = nullptr;
  const char* err_pos = nullptr;
  const int rc = gnutls_priority_init(&cache, priority.c_str(), &err_pos);
  if (rc < 0) {
    throw Error(ErrorKind::kUsage, EINVAL, "bad TLS priority string '" + priority + "' near '" +
                            (err_pos ? err_pos : "") + "': " + gnutls_strerror(rc));
  }
  gnutls_priority_deinit(cache);
}

std::string GnutlsSession::KtlsAbility() {
  // GnuTLS enables kTLS only when built with it and allowed by its system
  // configuration (ktls = true); Debian builds it without.
  return "none: this GnuTLS is built without kTLS (Debian's is), so our key install moves sessions into the "
         "kernel";
}

std::unique_ptr<GnutlsSession> GnutlsSession::Handshake(UniqueFd fd, const TlsOptions& o) {
  if (!o.creds) throw Error(ErrorKind::kUsage, EINVAL, "TLS needs credentials", Remedy::kCredentials);
  if (o.role == TlsRole::kClient && o.verify_peer && o.peer_name.empty()) {
    throw Error(ErrorKind::kUsage, EINVAL, "a TLS client needs the server's name to verify", Remedy::kPeerName);
  }
  std::unique_ptr<GnutlsSession> t(new GnutlsSession());
  t->fd_ = std::move(fd);
  t->rekey_after_bytes_ = o.rekey_after_bytes;
  gnutls_session_t s;
  // GNUTLS_NO_SIGNAL: GnuTLS sends with MSG_NOSIGNAL, so a vanished peer is
  // an error to report, never a SIGPIPE that kills the process.
  // GNUTLS_NO_AUTO_REKEY: GnuTLS would re-key a TLS 1.3 session by itself
  // after 2^24 records, even toward a peer that said (in the migration
  // hello) it cannot follow; GnutlsRecordChannel applies the same policy
  // as the kernel path instead (RecordLimit, rekey_after_bytes).
  unsigned flags =
      (o.role == TlsRole::kServer ? GNUTLS_SERVER : GNUTLS_CLIENT) | GNUTLS_NO_SIGNAL | GNUTLS_NO_AUTO_REKEY;
  CheckGnutls(gnutls_init(&s, flags), "gnutls_init");
  t->session_.reset(s);
  const char* err_pos = nullptr;
  const std::string priority = PriorityString(o.policy);
  int rc = gnutls_priority_set_direct(s, priority.c_str(), &err_pos);
  if (rc < 0) {
    throw Error(ErrorKind::kUsage, EINVAL, "bad TLS priority string '" + priority + "' near '" +
                            (err_pos ? err_pos : "") + "': " + gnutls_strerror(rc));
  }
  CheckGnutls(gnutls_credentials_set(s, GNUTLS_CRD_CERTIFICATE, GnutlsCredentials(*o.creds)), "set credentials");
  if (o.role == TlsRole::kServer) {
    const bool allow_list = !o.allowed_clients.empty();
    gnutls_certificate_server_set_request(
        s, o.require_client_cert || allow_list ? GNUTLS_CERT_REQUIRE : GNUTLS_CERT_REQUEST);
    if (allow_list) {
      t->allowed_clients_ = o.allowed_clients;
      t->verify_peer_ = o.verify_peer;
      gnutls_session_set_verify_function(s, VerifyAllowedClient);
    } else if (o.verify_peer) {
      gnutls_session_set_verify_cert(s, nullptr, 0);
    }
  } else {
    if (!o.peer_name.empty() && !IsIpLiteral(o.peer_name)) {
      gnutls_server_name_set(s, GNUTLS_NAME_DNS, o.peer_name.data(), o.peer_name.size());
    }
    // Chain, validity, revocation (CRL in the credentials) and the name,
    // checked during the handshake so nothing flows if any fails.
    if (o.verify_peer) gnutls_session_set_verify_cert(s, o.peer_name.c_str(), 0);
  }
  gnutls_session_set_ptr(s, t.get());
  gnutls_handshake_set_hook_function(s, GNUTLS_HANDSHAKE_ANY, GNUTLS_HOOK_PRE, CountPeerHandshakeMessage);
  gnutls_handshake_set_secret_function(s, ReportSecrets);
  gnutls_transport_set_int(s, t->fd_.get());
  gnutls_handshake_set_timeout(s, static_cast<unsigned>(o.handshake_timeout.count()));
  do {
    rc = gnutls_handshake(s);
  } while (rc < 0 && gnutls_error_is_fatal(rc) == 0);
  if (rc < 0) {
    const Error failure = HandshakeFailure(rc, s, o, t->peer_handshake_messages_);
    TellPeerAndLinger(s, t->fd_.get(), rc, !t->allow_list_refusal_.empty());
    throw failure;
  }
  if (o.role == TlsRole::kServer && o.verify_peer && o.require_client_cert &&
      gnutls_certificate_get_peers(s, nullptr) == nullptr) {
    throw Error(ErrorKind::kSecurity, ECONNABORTED,
                "TLS handshake failed: the client presented no certificate, but one is required");
  }
  return t;
}

std::string GnutlsSession::LibraryVersion() { return std::string("GnuTLS ") + gnutls_check_version(nullptr); }

TlsVersion GnutlsSession::version() const {
  switch (gnutls_protocol_get_version(session_.get())) {
    case GNUTLS_TLS1_2: return TlsVersion::kTls12;
    case GNUTLS_TLS1_3: return TlsVersion::kTls13;
    default: return TlsVersion::kOther;
  }
}

TlsCipher GnutlsSession::cipher() const {
  switch (gnutls_cipher_get(session_.get())) {
    case GNUTLS_CIPHER_AES_128_GCM: return TlsCipher::kAes128Gcm;
    case GNUTLS_CIPHER_AES_256_GCM: return TlsCipher::kAes256Gcm;
    case GNUTLS_CIPHER_CHACHA20_POLY1305: return TlsCipher::kChacha20Poly1305;
    case GNUTLS_CIPHER_AES_128_CCM: return TlsCipher::kAes128Ccm;
    default: return TlsCipher::kOther;
  }
}

std::string GnutlsSession::version_name() const {
  const char* n = gnutls_protocol_get_name(gnutls_protocol_get_version(session_.get()));
  return n ? n : "?";
}

std::string GnutlsSession::cipher_name() const {
  const char* n = gnutls_cipher_get_name(gnutls_cipher_get(session_.get()));
  return n ? n : "?";
}

std::string GnutlsSession::peer_common_name() const {
  X509Crt c = PeerCert(session_.get());
  return c ? CrtCommonName(c.get()) : "";
}

std::string GnutlsSession::peer_subject() const {
  X509Crt c = PeerCert(session_.get());
  if (!c) return "";
  OwnedDatum dn;
  if (gnutls_x509_crt_get_dn3(c.get(), &dn.d, 0) < 0) return "";
  return dn.str();
}

bool GnutlsSession::library_ktls(TlsDirection dir) const {
  const int on = gnutls_transport_is_ktls_enabled(session_.get());
  return (on & (dir == TlsDirection::kReceive ? GNUTLS_KTLS_RECV : GNUTLS_KTLS_SEND)) != 0;
}

size_t GnutlsSession::buffered_plaintext() const { return gnutls_record_check_pending(session_.get()); }

TrafficKeys GnutlsSession::ExportKernelKeys(TlsDirection dir) const {
  // gnutls_record_get_state() points into the session's own memory (valid
  // while the session lives, never freed by us): copy out.
  gnutls_datum_t mac{}, iv{}, key{};
  TrafficKeys k;
  CheckGnutls(gnutls_record_get_state(session_.get(), dir == TlsDirection::kReceive ? 1 : 0, &mac, &iv, &key,
                                      k.rec_seq.data()),
              "gnutls_record_get_state");
  k.set_key({key.data, key.size});
  k.set_iv({iv.data, iv.size});
  if (version() == TlsVersion::kTls13 && secret_size_ > 0) {
    const auto& secret = dir == TlsDirection::kReceive ? secret_rx_ : secret_tx_;
    k.set_secret({secret.data(), secret_size_});
  }
  return k;
}

std::unique_ptr<Channel> GnutlsSession::MakeRecordChannel(std::unique_ptr<TlsSession> self, std::string why) {
  std::unique_ptr<GnutlsSession> me(static_cast<GnutlsSession*>(self.release()));
  return std::make_unique<GnutlsRecordChannel>(std::move(me), std::move(why));
}

}  // namespace ktm

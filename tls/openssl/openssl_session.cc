#include "tls/openssl/openssl_session.h"

#include <arpa/inet.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>

#include "base/error.h"
#include "base/fd_wait.h"
#include "tls/openssl/openssl_context.h"
#include "tls/openssl/openssl_record_channel.h"
#include "util/hkdf.h"

namespace ktm {
namespace {

constexpr int kTimedOut = -1;  // RunHandshake's "error" for the deadline

bool IsIpLiteral(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

OpensslSession* SessionOf(const SSL* s) { return static_cast<OpensslSession*>(SSL_get_app_data(s)); }

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

size_t KeySize(TlsCipher c) {
  return c == TlsCipher::kAes256Gcm || c == TlsCipher::kChacha20Poly1305 ? 32 : 16;
}

// The record layer's refusals of bytes that are not TLS at all.
bool NotTlsReason(int r) {
  return r == SSL_R_WRONG_VERSION_NUMBER || r == SSL_R_HTTP_REQUEST || r == SSL_R_HTTPS_PROXY_REQUEST ||
         r == SSL_R_UNKNOWN_PROTOCOL || r == SSL_R_PACKET_LENGTH_TOO_LONG || r == SSL_R_RECORD_LENGTH_MISMATCH ||
         r == SSL_R_ENCRYPTED_LENGTH_TOO_LONG || r == SSL_R_WRONG_SSL_VERSION;
}

// Records or messages that are TLS but do not parse or authenticate.
bool CorruptReason(int r) {
  return r == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC || r == SSL_R_DECRYPTION_FAILED ||
         r == SSL_R_BAD_RECORD_TYPE || r == SSL_R_UNEXPECTED_MESSAGE || r == SSL_R_UNEXPECTED_RECORD ||
         r == SSL_R_LENGTH_MISMATCH || r == SSL_R_BAD_PACKET || r == SSL_R_DIGEST_CHECK_FAILED ||
         r == SSL_R_BAD_SIGNATURE || r == SSL_R_BAD_LENGTH || r == SSL_R_BAD_HANDSHAKE_LENGTH;
}

bool NoCommonReason(int r) {
  return r == SSL_R_NO_SHARED_CIPHER || r == SSL_R_UNSUPPORTED_PROTOCOL || r == SSL_R_NO_PROTOCOLS_AVAILABLE ||
         r == SSL_R_NO_CIPHERS_AVAILABLE || r == SSL_R_VERSION_TOO_LOW || r == SSL_R_VERSION_TOO_HIGH ||
         r == SSL_R_NO_SUITABLE_SIGNATURE_ALGORITHM || r == SSL_R_NO_SHARED_GROUPS;
}

// Alerts that say a handshake message or record arrived damaged: it did not
// parse (decode_error, record_overflow), held a value the sender's library
// would never put there (illegal_parameter), came out of order
// (unexpected_message) or did not authenticate (bad_record_mac,
// decrypt_error: a Finished over a transcript that differs). Between two
// TLS libraries that each build well-formed handshakes, that is damage in
// transit, not a refusal. (Refusals use the certificate alerts,
// handshake_failure, protocol_version or access_denied.)
bool DamageAlert(int alert) {
  return alert == 10 || alert == 20 || alert == 22 || alert == 47 || alert == 50 || alert == 51;
}

// After a failed handshake OpenSSL has sent its alert already (it does for
// every failure it detects itself). Close gently, as the GnuTLS backend
// does: stop writing and read what the peer still sends for a moment, so
// the kernel does not answer unread input with an RST that could destroy
// the alert before the peer reads it.
void LingerAfterFailure(int fd) {
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

// "CLIENT_TRAFFIC_SECRET_0 <client random> <secret>", hex: the TLS 1.3
// application traffic secrets, the only way OpenSSL 3.0 hands them out.
// Parsed straight into the session's wiped-on-destroy arrays.
void OpensslKeylog(const SSL* ssl, const char* line) {
  OpensslSession* me = SessionOf(ssl);
  constexpr size_t kLabel = sizeof("CLIENT_TRAFFIC_SECRET_0 ") - 1;
  const bool client = strncmp(line, "CLIENT_TRAFFIC_SECRET_0 ", kLabel) == 0;
  if (!me || (!client && strncmp(line, "SERVER_TRAFFIC_SECRET_0 ", kLabel) != 0)) return;
  const char* hex = strchr(line + kLabel, ' ');
  if (!hex) return;
  ++hex;
  const size_t n = strlen(hex) / 2;
  if (n == 0 || n > me->secret_rx_.size()) return;
  // Our send secret is the client's when we are the client.
  auto& out = client != (SSL_is_server(ssl) == 1) ? me->secret_tx_ : me->secret_rx_;
  for (size_t i = 0; i < n; ++i) {
    const int hi = HexDigit(hex[2 * i]), lo = HexDigit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  me->secret_size_ = n;
}

// Verifies the peer's chain (CA, validity, CRL, the name set in the
// session's X509_VERIFY_PARAM), remembers the first failure for the error
// sentence, and on the server applies the allow-list to a verified client.
// Refusing here fails the handshake with the fatal alert OpenSSL chooses
// for X509_V_ERR_APPLICATION_VERIFICATION (a certificate/handshake alert,
// which the peer reports as kSecurity); OpenSSL has no public way to send
// access_denied from here.
int OpensslCertVerify(X509_STORE_CTX* ctx, void* /*arg*/) {
  SSL* ssl = static_cast<SSL*>(X509_STORE_CTX_get_ex_data(ctx, SSL_get_ex_data_X509_STORE_CTX_idx()));
  OpensslSession* me = ssl ? SessionOf(ssl) : nullptr;
  if (!me) return X509_verify_cert(ctx);
  if (!me->verify_peer_) return 1;  // a server that only insists on a certificate
  const int ok = X509_verify_cert(ctx);
  X509* leaf = X509_STORE_CTX_get0_cert(ctx);
  if (ok <= 0) {
    if (me->verify_error_ == 0) {
      me->verify_error_ = X509_STORE_CTX_get_error(ctx);
      if (leaf && X509_up_ref(leaf) == 1) me->verify_cert_.reset(leaf);
    }
    return ok;
  }
  if (SSL_is_server(ssl) && !me->allowed_clients_.empty()) {
    me->allow_list_refusal_ = ClientAllowListRefusal(me->allowed_clients_, SubjectRfc4514(leaf), CommonName(leaf));
    if (!me->allow_list_refusal_.empty()) {
      X509_STORE_CTX_set_error(ctx, X509_V_ERR_APPLICATION_VERIFICATION);
      return 0;
    }
  }
  return 1;
}

// Counts handshake messages: any from the peer (it speaks TLS), and TLS 1.3
// KeyUpdates both ways. Notes the first alert we send (OpenSSL sends them
// itself; HandshakeFailure reads what it found wrong from it) and the
// peer's close_notify (see peer_sent_close_notify()).
void OpensslMessage(int write_p, int /*version*/, int content_type, const void* buf, size_t len, SSL* /*ssl*/,
                    void* arg) {
  if (len == 0 || !arg) return;
  auto* me = static_cast<OpensslSession*>(arg);
  if (content_type == SSL3_RT_ALERT && len >= 2) {
    const uint8_t desc = static_cast<const uint8_t*>(buf)[1];
    if (write_p && me->alert_sent_ < 0) me->alert_sent_ = desc;
    if (!write_p && desc == SSL3_AD_CLOSE_NOTIFY) me->peer_close_notify_.store(true);
    return;
  }
  if (content_type != SSL3_RT_HANDSHAKE) return;
  const bool key_update = static_cast<const uint8_t*>(buf)[0] == SSL3_MT_KEY_UPDATE;
  if (write_p) {
    if (key_update) ++me->key_updates_sent_;
    return;
  }
  ++me->peer_handshake_messages_;
  if (key_update) ++me->key_updates_received_;
}

OpensslSession::~OpensslSession() {
  explicit_bzero(secret_rx_.data(), secret_rx_.size());
  explicit_bzero(secret_tx_.data(), secret_tx_.size());
}

std::string OpensslSession::LibraryVersion() {
  // "OpenSSL 3.0.19 27 Jan 2026": the name and the version.
  const std::string v = OpenSSL_version(OPENSSL_VERSION);
  const size_t sp = v.find(' ');
  const size_t end = sp == std::string::npos ? sp : v.find(' ', sp + 1);
  return v.substr(0, end);
}

void OpensslSession::CheckPolicy(const TlsCryptoPolicy& policy) {
  std::unique_ptr<SSL_CTX, SslCtxFree> ctx(SSL_CTX_new(TLS_method()));
  if (!ctx) throw Error(ErrorKind::kInternal, ENOMEM, "OpenSSL could not make a TLS context");
  ApplyOpensslPolicy(ctx.get(), policy, SSL_CONF_FLAG_CLIENT | SSL_CONF_FLAG_SERVER);
}

std::string OpensslSession::KtlsAbility() {
  // OpenSSL 3.2 added TLS 1.3 receive offload; 3.0/3.1 decrypt TLS 1.3 in
  // userspace (FACTS.md, checked in the VM).
  if (OpenSSL_version_num() >= 0x30200000UL) {
    return "TLS 1.2 and TLS 1.3, send and receive (" + LibraryVersion() + ", SSL_OP_ENABLE_KTLS)";
  }
  return "TLS 1.2 send and receive, TLS 1.3 send (" + LibraryVersion() + " receives TLS 1.3 in userspace)";
}

void OpensslSession::Setup(const TlsOptions& o) {
  guard_sigpipe_ = !SigpipeIgnored();
  rekey_after_bytes_ = o.rekey_after_bytes;
  verify_peer_ = o.verify_peer;
  allowed_clients_ = o.allowed_clients;
  const std::shared_ptr<SSL_CTX> ctx = OpensslContext(o, {OpensslKeylog, OpensslCertVerify});
  ssl_.reset(SSL_new(ctx.get()));  // holds its own reference to ctx
  if (!ssl_) throw Error(ErrorKind::kInternal, ENOMEM, "OpenSSL could not make a TLS session");
  SSL* s = ssl_.get();
  SSL_set_app_data(s, this);
  SSL_set_msg_callback(s, OpensslMessage);
  SSL_set_msg_callback_arg(s, this);
  if (o.allow_library_ktls) SSL_set_options(s, SSL_OP_ENABLE_KTLS);
  if (o.role == TlsRole::kServer) {
    // Always ask for a certificate (GnuTLS's REQUEST); insist on one when
    // required. OpensslCertVerify decides what a presented one is worth.
    // A client without a certificate cannot be on an allow-list.
    const bool need_cert = o.require_client_cert || !o.allowed_clients.empty();
    SSL_set_verify(s, SSL_VERIFY_PEER | (need_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), nullptr);
    SSL_set_accept_state(s);
  } else {
    SSL_set_verify(s, o.verify_peer ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, nullptr);
    X509_VERIFY_PARAM* param = SSL_get0_param(s);
    if (!o.peer_name.empty() && IsIpLiteral(o.peer_name)) {
      X509_VERIFY_PARAM_set1_ip_asc(param, o.peer_name.c_str());
    } else if (!o.peer_name.empty()) {
      X509_VERIFY_PARAM_set1_host(param, o.peer_name.c_str(), o.peer_name.size());
      SSL_set_tlsext_host_name(s, o.peer_name.c_str());
    }
    SSL_set_connect_state(s);
  }
  if (SSL_set_fd(s, fd_.get()) != 1) throw Error(ErrorKind::kInternal, EBADF, "OpenSSL refused the socket");
}

std::pair<int, int> OpensslSession::RunHandshake(std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    ERR_clear_error();
    int rc;
    {
      SigpipeGuard guard(guard_sigpipe_);
      rc = SSL_do_handshake(ssl_.get());
    }
    if (rc == 1) return {1, SSL_ERROR_NONE};
    const int err = SSL_get_error(ssl_.get(), rc);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) return {rc, err};
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0 || PollFd(fd_.get(), err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, left) == 0) {
      return {rc, kTimedOut};
    }
  }
}

std::unique_ptr<OpensslSession> OpensslSession::Handshake(UniqueFd fd, const TlsOptions& o) {
  if (!o.creds) throw Error(ErrorKind::kUsage, EINVAL, "TLS needs credentials", Remedy::kCredentials);
  if (o.role == TlsRole::kClient && o.verify_peer && o.peer_name.empty()) {
    throw Error(ErrorKind::kUsage, EINVAL, "a TLS client needs the server's name to verify", Remedy::kPeerName);
  }
  std::unique_ptr<OpensslSession> t(new OpensslSession());
  t->fd_ = std::move(fd);
  t->Setup(o);
  const bool was_nonblocking = IsNonBlocking(t->fd_.get());
  SetNonBlocking(t->fd_.get(), true, "a TLS handshake");  // polled against the timeout
  const auto [rc, err] = t->RunHandshake(o.handshake_timeout);
  const int sys_errno = errno;
  if (rc != 1) {
    const Error failure = t->HandshakeFailure(err, sys_errno, o);
    if (t->peer_not_tls_ && t->alert_sent_ < 0) t->TellPlaintextPeer();
    LingerAfterFailure(t->fd_.get());
    throw failure;
  }
  SetNonBlocking(t->fd_.get(), was_nonblocking, "a TLS socket");
  return t;
}

// OpenSSL sends no alert when the very first record is not TLS at all
// (SSL_AD_NO_ALERT for a first record with a foreign version or an HTTP
// request), so a plaintext peer would see only the connection close and
// could not say "the other end needs TLS". GnuTLS sends one there; so do
// we, by hand: nothing was encrypted yet (the peer sent no handshake
// message), so the alert is a plaintext record, written straight to the
// socket. Best effort: the peer may be gone.
void OpensslSession::TellPlaintextPeer() {
  // level fatal (2), protocol_version (70): what GnuTLS answers here too.
  static constexpr uint8_t kAlert[] = {SSL3_RT_ALERT, 3, 1, 0, 2, SSL3_AL_FATAL, SSL_AD_PROTOCOL_VERSION};
  (void)::send(fd_.get(), kAlert, sizeof(kAlert), MSG_NOSIGNAL | MSG_DONTWAIT);
}

// A fatal alert from the peer. One that says our handshake arrived
// damaged (DamageAlert) is integrity (exit 4), as with GnuTLS: our library
// built it well-formed, so it changed on the way. Even before the peer's
// first handshake message: an alert is TLS, so the peer speaks it.
Error OpensslSession::AlertReceivedFailure(uint8_t alert, const std::string& peer, const TlsOptions& o) const {
  if (DamageAlert(alert)) {
    return Error(ErrorKind::kIntegrity, EBADMSG,
                 "TLS handshake failed: the " + peer + " could not parse or authenticate our handshake (alert '" +
                     TlsAlertName(alert) + "'): the handshake was corrupted or tampered with in transit");
  }
  return Error(ErrorKind::kSecurity, ECONNABORTED,
               "TLS handshake failed: the " + peer + " refused it with alert '" + TlsAlertName(alert) + "'" +
                   (o.role == TlsRole::kClient ? " (the destination refused our certificate or our parameters; "
                                                 "its log says which)"
                                               : " (see the client's log for why)"));
}

Error OpensslSession::VerifyFailure(const TlsOptions& o) const {
  X509* peer = verify_cert_.get();
  const std::string cn = peer ? CommonName(peer) : "";
  std::string msg = std::string("TLS handshake failed: the ") + (o.role == TlsRole::kClient ? "server" : "client") +
                    "'s certificate" + (cn.empty() ? "" : " '" + cn + "'") + " was rejected: ";
  const long e = verify_error_;
  const bool name = e == X509_V_ERR_HOSTNAME_MISMATCH || e == X509_V_ERR_IP_ADDRESS_MISMATCH;
  if (name) {
    msg += "expected the name '" + o.peer_name + "' but the certificate holds " +
           (peer ? SubjectAltNames(peer) : std::string("no names")) +
           "; connect using one of those names or set the expected peer name to one of them";
  } else if (e == X509_V_ERR_CERT_REVOKED) {
    msg += "it is revoked by the CRL (" + o.creds->files().crl + ")";
  } else if (e == X509_V_ERR_CERT_HAS_EXPIRED) {
    msg += "it has expired (on " + NotAfter(peer) + ")";
  } else if (e == X509_V_ERR_CERT_NOT_YET_VALID) {
    msg += "it is not valid yet (check the clocks)";
  } else if (e == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY || e == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
             e == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE || e == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
             e == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN || e == X509_V_ERR_CERT_SIGNATURE_FAILURE ||
             e == X509_V_ERR_INVALID_CA || e == X509_V_ERR_CERT_UNTRUSTED) {
    msg += "it is not signed by a trusted CA (" + o.creds->files().ca + ")";
  } else {
    msg += X509_verify_cert_error_string(e);
  }
  return Error(ErrorKind::kSecurity, ECONNABORTED, msg, name ? Remedy::kPeerName : Remedy::kNone);
}

Error OpensslSession::HandshakeFailure(int ssl_error, int sys_errno, const TlsOptions& o) {
  const std::string peer = o.role == TlsRole::kClient ? "server" : "client";
  const auto sec = [](std::string m, Remedy r = Remedy::kNone) {
    return Error(ErrorKind::kSecurity, ECONNABORTED, std::move(m), r);
  };
  const auto integrity = [](std::string m) { return Error(ErrorKind::kIntegrity, EBADMSG, std::move(m)); };
  std::string detail;
  const int reason = DrainOpensslErrors(ERR_LIB_SSL, &detail);
  if (ssl_error == kTimedOut) {
    return Error(ErrorKind::kTimeout, ETIMEDOUT,
                 "TLS handshake timed out: the " + peer + " did not answer (is it speaking TLS?)");
  }
  if (!allow_list_refusal_.empty()) return sec("TLS handshake failed: " + allow_list_refusal_);
  if (verify_error_ != 0) return VerifyFailure(o);
  if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    return sec("TLS handshake failed: the " + peer +
                   " presented no certificate, but one is required (give it its own certificate, e.g. "
                   "client-cert.pem/client-key.pem in its credentials directory)",
               Remedy::kCredentials);
  }
  if (reason > SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
    return AlertReceivedFailure(static_cast<uint8_t>(reason - SSL_AD_REASON_OFFSET), peer, o);
  }
  const std::string damaged = "TLS handshake failed: the " + peer +
                              " speaks TLS, but a record of its handshake was corrupted or tampered with in transit (" +
                              detail + ")";
  if (NotTlsReason(reason) || CorruptReason(reason)) {
    if (peer_handshake_messages_ > 0) return integrity(damaged);
    peer_not_tls_ = true;
    return sec("TLS handshake failed: the " + peer + " did not speak TLS (" + detail + "); is it running without TLS?",
               Remedy::kPeerUsesPlaintext);
  }
  if (ssl_error == SSL_ERROR_SYSCALL || ssl_error == SSL_ERROR_ZERO_RETURN ||
      reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
    return sec("TLS handshake failed: the " + peer + " closed the connection during the handshake (" +
               (sys_errno && ssl_error == SSL_ERROR_SYSCALL ? std::string(strerror(sys_errno)) : "end of stream") +
               "; it probably refused our certificate)");
  }
  if (NoCommonReason(reason)) {
    return sec("TLS handshake failed: no protocol version/cipher in common with the " + peer + " (" + detail +
               "; policy " + ToString(o.policy) + ")");
  }
  // OpenSSL found a message of the peer's malformed or out of place and
  // said so with a damage alert ("invalid session id": illegal_parameter).
  // The peer spoke TLS first, so the message changed on the way.
  if (peer_handshake_messages_ > 0 && DamageAlert(alert_sent_)) return integrity(damaged);
  return sec("TLS handshake failed: " + (detail.empty() ? std::string("OpenSSL gave no reason") : detail));
}

TlsVersion OpensslSession::version() const {
  switch (SSL_version(ssl_.get())) {
    case TLS1_2_VERSION: return TlsVersion::kTls12;
    case TLS1_3_VERSION: return TlsVersion::kTls13;
    default: return TlsVersion::kOther;
  }
}

TlsCipher OpensslSession::cipher() const {
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl_.get());
  switch (c ? SSL_CIPHER_get_cipher_nid(c) : NID_undef) {
    case NID_aes_128_gcm: return TlsCipher::kAes128Gcm;
    case NID_aes_256_gcm: return TlsCipher::kAes256Gcm;
    case NID_chacha20_poly1305: return TlsCipher::kChacha20Poly1305;
    case NID_aes_128_ccm: return TlsCipher::kAes128Ccm;
    default: return TlsCipher::kOther;
  }
}

std::string OpensslSession::version_name() const {
  if (version() != TlsVersion::kOther) return ToString(version());
  return SSL_get_version(ssl_.get());
}

std::string OpensslSession::cipher_name() const {
  if (cipher() != TlsCipher::kOther) return ToString(cipher());
  const SSL_CIPHER* c = SSL_get_current_cipher(ssl_.get());
  return c ? SSL_CIPHER_get_name(c) : "?";
}

std::string OpensslSession::peer_common_name() const { return CommonName(SSL_get0_peer_certificate(ssl_.get())); }

std::string OpensslSession::peer_subject() const {
  X509* c = SSL_get0_peer_certificate(ssl_.get());
  return c ? SubjectRfc4514(c) : "";
}

bool OpensslSession::library_ktls(TlsDirection dir) const {
  if (dir == TlsDirection::kTransmit) {
    BIO* b = SSL_get_wbio(ssl_.get());
    return b && BIO_get_ktls_send(b);
  }
  BIO* b = SSL_get_rbio(ssl_.get());
  return b && BIO_get_ktls_recv(b);
}

size_t OpensslSession::buffered_plaintext() const {
  const int n = SSL_pending(ssl_.get());
  return n > 0 ? static_cast<size_t>(n) : 0;
}

TrafficKeys OpensslSession::ExportKernelKeys(TlsDirection dir) const {
  switch (version()) {
    case TlsVersion::kTls13: return Tls13Keys(dir);
    case TlsVersion::kTls12: return Tls12Keys(dir);
    case TlsVersion::kOther: break;
  }
  throw Error(ErrorKind::kInternal, EPROTO, "OpenSSL session keys can be exported for TLS 1.2 and 1.3 only");
}

// TLS 1.3: key and IV from the traffic secret (RFC 8446 7.3), the secret
// kept for the kernel path's own re-keying. Sequence number 0: tickets are
// off, so no record was sent or read under these keys before the export.
TrafficKeys OpensslSession::Tls13Keys(TlsDirection dir) const {
  if (secret_size_ == 0) {
    throw Error(ErrorKind::kInternal, EPROTO, "OpenSSL did not report the TLS 1.3 traffic secrets");
  }
  const auto& secret = dir == TlsDirection::kReceive ? secret_rx_ : secret_tx_;
  const std::span<const uint8_t> s(secret.data(), secret_size_);
  const HkdfHash h = secret_size_ == 48 ? HkdfHash::kSha384 : HkdfHash::kSha256;
  const size_t key_size = KeySize(cipher());
  std::array<uint8_t, TrafficKeys::kMaxKey> key{};
  std::array<uint8_t, TrafficKeys::kMaxIv> iv{};
  HkdfExpandLabel(h, s, "key", {}, std::span<uint8_t>(key.data(), key_size));
  HkdfExpandLabel(h, s, "iv", {}, std::span<uint8_t>(iv.data(), iv.size()));
  TrafficKeys k;
  k.set_key({key.data(), key_size});
  k.set_iv({iv.data(), iv.size()});
  k.set_secret(s);
  explicit_bzero(key.data(), key.size());
  explicit_bzero(iv.data(), iv.size());
  return k;
}

}  // namespace ktm

namespace ktm {
std::unique_ptr<Channel> OpensslSession::MakeRecordChannel(std::unique_ptr<TlsSession> self, std::string why) {
  std::unique_ptr<OpensslSession> me(static_cast<OpensslSession*>(self.release()));
  return std::make_unique<OpensslRecordChannel>(std::move(me), std::move(why));
}
}  // namespace ktm

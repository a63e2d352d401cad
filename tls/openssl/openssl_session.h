// The OpenSSL backend's session: OpenSSL owns the fd (SSL_set_fd, its own
// socket BIO; no custom BIO, so OpenSSL can move a direction into the
// kernel itself when SSL_OP_ENABLE_KTLS allows it).
// OpenSSL-facing: only tls/ (the backend switch) and backend tests include it.
#pragma once

#include <openssl/ssl.h>

#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "tls/openssl/openssl_util.h"
#include "tls/tls_session.h"

namespace ktm {

class OpensslSession final : public TlsSession {
 public:
  ~OpensslSession() override;

  // See HandshakeTls(). The fd's blocking mode is as given when this
  // returns (the handshake runs it non-blocking, polled against
  // opts.handshake_timeout).
  static std::unique_ptr<OpensslSession> Handshake(UniqueFd fd, const TlsOptions& opts);

  // "OpenSSL 3.0.19".
  static std::string LibraryVersion();
  // See CheckTlsPolicy().
  static void CheckPolicy(const TlsCryptoPolicy& policy);
  // See TlsLibraryKtlsAbility().
  static std::string KtlsAbility();

  // The OpenSSL handle, for the record channel and backend tests.
  SSL* native() const { return ssl_.get(); }
  // Whether OpenSSL calls on this session need a SigpipeGuard (the process
  // did not ignore SIGPIPE when the handshake began).
  bool guard_sigpipe() const { return guard_sigpipe_; }

  TlsVersion version() const override;
  TlsCipher cipher() const override;
  // "TLS1.3" / "AES-128-GCM" as the GnuTLS backend names them (so reports
  // read the same with either library); OpenSSL's own names for others.
  std::string version_name() const override;
  std::string cipher_name() const override;
  std::string peer_common_name() const override;
  std::string peer_subject() const override;
  TlsBackend backend() const override { return TlsBackend::kOpenssl; }
  int fd() const override { return fd_.get(); }
  UniqueFd release_fd() override { return std::move(fd_); }
  bool library_ktls(TlsDirection dir) const override;
  size_t buffered_plaintext() const override;
  TrafficKeys ExportKernelKeys(TlsDirection dir) const override;

  // TLS 1.3 KeyUpdates sent and received, counted by a message callback
  // (OpenSSL answers a peer's request by itself; those count as sent).
  // Safe from any thread.
  uint64_t key_updates_sent() const { return key_updates_sent_.load(); }
  uint64_t key_updates_received() const { return key_updates_received_.load(); }
  uint64_t rekey_after_bytes() const { return rekey_after_bytes_; }
  // Whether the peer's close_notify has arrived (seen by the message
  // callback): the record channel reads with SSL_OP_IGNORE_UNEXPECTED_EOF,
  // so OpenSSL reports a bare EOF like close_notify, and this tells them
  // apart. Safe from any thread.
  bool peer_sent_close_notify() const { return peer_close_notify_.load(); }

 protected:
  std::unique_ptr<Channel> MakeRecordChannel(std::unique_ptr<TlsSession> self, std::string why) override;

 private:
  OpensslSession() = default;
  void Setup(const TlsOptions& o);
  // Runs SSL_do_handshake until done or the deadline; returns its last
  // result and SSL_get_error.
  std::pair<int, int> RunHandshake(std::chrono::milliseconds timeout);
  Error HandshakeFailure(int ssl_error, int sys_errno, const TlsOptions& o);
  Error VerifyFailure(const TlsOptions& o) const;
  Error AlertReceivedFailure(uint8_t alert, const std::string& peer, const TlsOptions& o) const;
  // For a peer that never spoke TLS: the plaintext alert OpenSSL does not
  // send (see Handshake).
  void TellPlaintextPeer();
  TrafficKeys Tls12Keys(TlsDirection dir) const;
  TrafficKeys Tls13Keys(TlsDirection dir) const;

  UniqueFd fd_;
  SslPtr ssl_;
  bool guard_sigpipe_ = true;
  uint64_t rekey_after_bytes_ = 0;
  // The server's allow-list (TlsOptions::allowed_clients) and its verdict.
  bool verify_peer_ = true;
  std::vector<std::string> allowed_clients_;
  std::string allow_list_refusal_;
  // The first certificate verification failure: X509_V_ERR_* and the
  // certificate it concerns (OpenSSL keeps no peer certificate after a
  // failed verification).
  long verify_error_ = 0;
  X509Ptr verify_cert_;
  // Handshake messages received (tells a plaintext peer from a corrupted
  // handshake, as the GnuTLS backend does).
  unsigned peer_handshake_messages_ = 0;
  // The first alert we sent (its description; -1: none): OpenSSL sends its
  // own alerts, and which one says what it found wrong with the peer's
  // handshake. Set during the handshake only.
  int alert_sent_ = -1;
  // The failed handshake's peer never spoke TLS: tell it with a plaintext
  // alert (TellPlaintextPeer).
  bool peer_not_tls_ = false;
  std::atomic<bool> peer_close_notify_{false};
  // TLS 1.3 application traffic secrets from the keylog callback; wiped by
  // the destructor.
  std::array<uint8_t, TrafficKeys::kMaxSecret> secret_rx_{}, secret_tx_{};
  size_t secret_size_ = 0;
  std::atomic<uint64_t> key_updates_sent_{0}, key_updates_received_{0};

  friend void OpensslKeylog(const SSL*, const char*);
  friend int OpensslCertVerify(X509_STORE_CTX*, void*);
  friend void OpensslMessage(int, int, int, const void*, size_t, SSL*, void*);
};

}  // namespace ktm

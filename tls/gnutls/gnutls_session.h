// The GnuTLS backend's session: GnuTLS owns the fd (gnutls_transport_set_int).
// GnuTLS-facing: only tls/ (the backend switch) and backend tests include it.
#pragma once

#include <gnutls/gnutls.h>

#include <array>
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "tls/gnutls/gnutls_util.h"
#include "tls/tls_session.h"

namespace ktm {

class GnutlsSession final : public TlsSession {
 public:
  ~GnutlsSession() override;

  // See HandshakeTls().
  static std::unique_ptr<GnutlsSession> Handshake(UniqueFd fd, const TlsOptions& opts);

  // "GnuTLS 3.7.9".
  static std::string LibraryVersion();

  // See CheckTlsPolicy().
  static void CheckPolicy(const TlsCryptoPolicy& policy);
  // The priority string for `policy` (its library_override when set).
  static std::string PriorityString(const TlsCryptoPolicy& policy);
  // See TlsLibraryKtlsAbility().
  static std::string KtlsAbility();

  // The GnuTLS handle, for the record channel and backend tests.
  gnutls_session_t native() const { return session_.get(); }

  TlsVersion version() const override;
  TlsCipher cipher() const override;
  std::string version_name() const override;
  std::string cipher_name() const override;
  std::string peer_common_name() const override;
  std::string peer_subject() const override;
  TlsBackend backend() const override { return TlsBackend::kGnutls; }
  int fd() const override { return fd_.get(); }
  UniqueFd release_fd() override { return std::move(fd_); }
  bool library_ktls(TlsDirection dir) const override;
  size_t buffered_plaintext() const override;
  TrafficKeys ExportKernelKeys(TlsDirection dir) const override;

  // TLS 1.3 key updates (RFC 8446 4.6.3) as GnuTLS sent and received them,
  // counted by a handshake hook. GnuTLS itself never starts one (the
  // session is made with GNUTLS_NO_AUTO_REKEY: the record channel decides
  // when, see GnutlsRecordChannel); it follows the peer's, and answers one
  // that asks for ours before our next data. Safe from any thread.
  uint64_t key_updates_sent() const { return key_updates_sent_.load(); }
  uint64_t key_updates_received() const { return key_updates_received_.load(); }
  // True once per KeyUpdate received with update_requested set.
  bool TakeKeyUpdateRequest() { return key_update_requested_.exchange(false); }
  // Why the allow-list refused the client ("" when it did not): the
  // sentence of ClientAllowListRefusal(), for the handshake's error.
  const std::string& allow_list_refusal() const { return allow_list_refusal_; }
  // TlsOptions::rekey_after_bytes of the handshake (0: the record limit only).
  uint64_t rekey_after_bytes() const { return rekey_after_bytes_; }

 protected:
  std::unique_ptr<Channel> MakeRecordChannel(std::unique_ptr<TlsSession> self, std::string why) override;

 private:
  GnutlsSession() = default;
  UniqueFd fd_;
  GnutlsSessionPtr session_;
  // Handshake messages received from the peer (a GnuTLS hook counts them):
  // tells a peer that never spoke TLS from a handshake corrupted in transit.
  unsigned peer_handshake_messages_ = 0;
  // TLS 1.3 application traffic secrets as GnuTLS reported them (its
  // secret callback): what ExportKernelKeys() hands on for re-keying. Wiped
  // by the destructor.
  std::array<uint8_t, TrafficKeys::kMaxSecret> secret_rx_{}, secret_tx_{};
  size_t secret_size_ = 0;
  uint64_t rekey_after_bytes_ = 0;
  // Outgoing KeyUpdates are counted on the writer's thread, incoming ones
  // on the reader's; stats() reads both from anywhere.
  std::atomic<uint64_t> key_updates_sent_{0}, key_updates_received_{0};
  std::atomic<bool> key_update_requested_{false};
  // Server with an allow-list (TlsOptions::allowed_clients): our own
  // certificate check replaces GnuTLS's automatic one (it would be one or
  // the other: both are the session's verify function), so it keeps the
  // verification status itself, and the refusal sentence when the verified
  // client matched no pattern.
  std::vector<std::string> allowed_clients_;
  bool verify_peer_ = true;
  bool own_verify_ran_ = false;
  unsigned own_verify_status_ = 0;
  std::string allow_list_refusal_;

  friend int ReportSecrets(gnutls_session_t, gnutls_record_encryption_level_t, const void*, const void*, size_t);
  friend int VerifyAllowedClient(gnutls_session_t);
  friend unsigned VerifyStatus(gnutls_session_t);
  friend int CountPeerHandshakeMessage(gnutls_session_t, unsigned, unsigned, unsigned, const gnutls_datum_t*);
};

}  // namespace ktm

// The GnuTLS backend's session: GnuTLS owns the fd (gnutls_transport_set_int).
// GnuTLS-facing: only tls/ (the backend switch) and backend tests include it.
#pragma once

#include <gnutls/gnutls.h>

#include <array>
#include <memory>
#include <string>

#include "certs/gnutls_util.h"
#include "tls/tls_session.h"

namespace ktm {

class GnutlsSession final : public TlsSession {
 public:
  ~GnutlsSession() override;

  // See HandshakeTls().
  static std::unique_ptr<GnutlsSession> Handshake(UniqueFd fd, const TlsOptions& opts);

  // "GnuTLS 3.7.9".
  static std::string LibraryVersion();

  // See CheckTlsPriority().
  static void CheckPriority(const std::string& priority);

  // The GnuTLS handle, for the record channel and backend tests.
  gnutls_session_t native() const { return session_.get(); }

  TlsVersion version() const override;
  TlsCipher cipher() const override;
  std::string version_name() const override;
  std::string cipher_name() const override;
  std::string peer_common_name() const override;
  int fd() const override { return fd_.get(); }
  UniqueFd release_fd() override { return std::move(fd_); }
  bool library_enabled_ktls() const override;
  size_t buffered_plaintext() const override;
  TrafficKeys ExportKernelKeys(TlsDirection dir) const override;

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

  friend int ReportSecrets(gnutls_session_t, gnutls_record_encryption_level_t, const void*, const void*, size_t);
  friend int CountPeerHandshakeMessage(gnutls_session_t, unsigned, unsigned, unsigned, const gnutls_datum_t*);
};

}  // namespace ktm

// x509 credentials for one end of a TLS session.
//
// Files follow QEMU's creds-dir convention (so an existing QEMU TLS setup
// works unchanged): ca-cert.pem, ca-crl.pem (optional), server-cert.pem,
// server-key.pem, client-cert.pem, client-key.pem. Explicit paths can be
// given instead. Load() checks the files the way an operator would want
// them checked before a migration starts, and every error names the file.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>


namespace ktm {

enum class TlsRole { kClient, kServer };

struct CredentialFiles {
  std::string ca;    // required: trust anchor for the peer
  std::string crl;   // optional: revocation list signed by the CA
  std::string cert;  // own certificate (required for servers; clients may omit)
  std::string key;   // own private key, with cert
};

// Resolves the QEMU file names inside `dir` for `role`. ca-cert.pem must
// exist; ca-crl.pem is used if present; the role's cert/key must exist for a
// server and are used by a client if present.
CredentialFiles CredsDirFiles(const std::string& dir, TlsRole role);

class Credentials {
 public:
  // Loads and checks: validity period of every certificate; CA has the CA
  // basic constraint and cert-signing usage; the leaf is not a CA and has
  // the key purpose for `role` (TLS WWW server/client); the key matches the
  // certificate; the leaf chains to the CA; the CRL is signed by the CA.
  // Throws Error(kSecurity) naming the file (kLocalIo for an unreadable
  // one). The checks use libcrypto's X509 API, whichever TLS backend then
  // reads the same files (files()) into its own objects (BackendState()).
  static std::shared_ptr<Credentials> Load(const CredentialFiles& files, TlsRole role);

  const CredentialFiles& files() const { return files_; }
  // What Load() accepted but an operator should fix, one sentence each:
  // a private key file that others may read or write (mode & 0007) or its
  // group may write (0020), naming the file and its mode, as ssh does. A
  // warning, not a refusal: a key still works, and a group-readable key
  // (Debian's ssl-cert group, 0640) is a deliberate setup.
  const std::vector<std::string>& warnings() const { return warnings_; }
  bool has_own_cert() const { return !files_.cert.empty(); }
  bool has_crl() const { return !files_.crl.empty(); }

  // A TLS backend's own objects for these credentials (an SSL_CTX, GnuTLS
  // certificate credentials), built by `build` at the first handshake that
  // asks for `key` and shared by later ones, so a tunnel's hundredth
  // connection does not re-read the files. Thread-safe; `build` may throw
  // (nothing is kept then). `key` names the backend and whatever else the
  // object depends on ("openssl server <policy>").
  std::shared_ptr<void> BackendState(const std::string& key,
                                     const std::function<std::shared_ptr<void>()>& build) const;

 private:
  CredentialFiles files_;
  std::vector<std::string> warnings_;
  mutable std::mutex backend_mu_;
  mutable std::map<std::string, std::shared_ptr<void>> backend_state_;
};


}  // namespace ktm

#include "tls/gnutls/gnutls_credentials.h"

#include <gnutls/x509.h>

#include "tls/gnutls/gnutls_util.h"

namespace ktm {
namespace {

std::shared_ptr<void> BuildCredentials(const CredentialFiles& files) {
  gnutls_certificate_credentials_t raw = nullptr;
  CheckGnutls(gnutls_certificate_allocate_credentials(&raw), "allocate credentials");
  // Owned from here on, so a refused file below frees it.
  std::shared_ptr<void> owned(raw, [](void* p) {
    gnutls_certificate_free_credentials(static_cast<gnutls_certificate_credentials_t>(p));
  });
  CheckGnutls(gnutls_certificate_set_x509_trust_file(raw, files.ca.c_str(), GNUTLS_X509_FMT_PEM),
              files.ca + ": cannot load as trust anchor");
  if (!files.crl.empty()) {
    CheckGnutls(gnutls_certificate_set_x509_crl_file(raw, files.crl.c_str(), GNUTLS_X509_FMT_PEM),
                files.crl + ": cannot load CRL");
  }
  if (!files.cert.empty()) {
    CheckGnutls(gnutls_certificate_set_x509_key_file(raw, files.cert.c_str(), files.key.c_str(), GNUTLS_X509_FMT_PEM),
                files.cert + " / " + files.key + ": cannot load");
  }
  return owned;
}

}  // namespace

gnutls_certificate_credentials_t GnutlsCredentials(const Credentials& c) {
  // One object serves every session of these Credentials: its role, trust,
  // CRL and key never differ between them (the allow-list is per session).
  std::shared_ptr<void> state = c.BackendState("gnutls", [&c] { return BuildCredentials(c.files()); });
  return static_cast<gnutls_certificate_credentials_t>(state.get());
}

}  // namespace ktm

// Small RAII helpers over GnuTLS handles, for the GnuTLS backend (tls/gnutls/)
// and tests that use GnuTLS directly. GnuTLS-facing: no neutral header
// includes it.
#pragma once

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include <memory>
#include <string>

#include "base/error.h"
#include "certs/files.h"  // ReadFile, WriteFile, FormatTime (were declared here)

namespace ktm {

struct GnutlsDeleter {
  void operator()(gnutls_x509_crt_t p) const { gnutls_x509_crt_deinit(p); }
  void operator()(gnutls_x509_privkey_t p) const { gnutls_x509_privkey_deinit(p); }
  void operator()(gnutls_x509_crl_t p) const { gnutls_x509_crl_deinit(p); }
  void operator()(gnutls_certificate_credentials_t p) const { gnutls_certificate_free_credentials(p); }
  void operator()(gnutls_session_t p) const { gnutls_deinit(p); }
};
using X509Crt = std::unique_ptr<std::remove_pointer_t<gnutls_x509_crt_t>, GnutlsDeleter>;
using X509Key = std::unique_ptr<std::remove_pointer_t<gnutls_x509_privkey_t>, GnutlsDeleter>;
using X509Crl = std::unique_ptr<std::remove_pointer_t<gnutls_x509_crl_t>, GnutlsDeleter>;
using CertCredentials =
    std::unique_ptr<std::remove_pointer_t<gnutls_certificate_credentials_t>, GnutlsDeleter>;
using GnutlsSessionPtr = std::unique_ptr<std::remove_pointer_t<gnutls_session_t>, GnutlsDeleter>;

// A gnutls_datum_t whose data GnuTLS allocated; freed with gnutls_free.
struct OwnedDatum {
  gnutls_datum_t d{nullptr, 0};
  OwnedDatum() = default;
  OwnedDatum(const OwnedDatum&) = delete;
  OwnedDatum& operator=(const OwnedDatum&) = delete;
  ~OwnedDatum() { gnutls_free(d.data); }
  std::string str() const { return std::string(reinterpret_cast<const char*>(d.data), d.size); }
};

// Throws Error(kSecurity, "<what>: <gnutls_strerror>") when rc < 0.
void CheckGnutls(int rc, const std::string& what);

X509Crt NewCrt();
X509Key NewKey();
X509Crl NewCrl();

// Subject CN, and "DNS:a, IP:b" list of the SANs, for error messages.
std::string CrtCommonName(gnutls_x509_crt_t crt);
std::string CrtSubjectAltNames(gnutls_x509_crt_t crt);

}  // namespace ktm

// Issuing single certificates, keys and CRLs with GnuTLS's x509 API: the
// building blocks of GenerateCredsDir (certs/generate.h, implemented in
// x509_issue.cc), and of tests that need unusual certificates (expired,
// wrong purpose, revoked). GnuTLS-facing by nature: it lives with the
// GnuTLS backend; certs/ itself stays free of any TLS library.
#pragma once

#include <ctime>
#include <string>
#include <vector>

#include "certs/credentials.h"
#include "certs/generate.h"
#include "tls/gnutls/gnutls_util.h"

namespace ktm {

struct CertSpec {
  std::string common_name;
  std::vector<std::string> dns_names;
  std::vector<std::string> ip_addresses;  // textual IPv4/IPv6
  time_t not_before = 0;                 // 0: now - 1 hour (clock skew)
  time_t not_after = 0;                  // 0: not_before + days
  int days = 365;
  bool is_ca = false;
  // Leaf key purpose; ignored for CAs.
  TlsRole role = TlsRole::kServer;
  bool omit_key_purpose = false;         // for tests of bad certificates
  bool ca_without_cert_sign = false;     // for tests of bad CAs
  unsigned serial = 1;
};

X509Key GenerateKey(KeyType type);

// Issues a certificate for `key`. With issuer == nullptr it is self-signed.
X509Crt IssueCert(const CertSpec& spec, gnutls_x509_privkey_t key, gnutls_x509_crt_t issuer,
                  gnutls_x509_privkey_t issuer_key);

// A CRL signed by the CA, revoking `revoked`.
X509Crl IssueCrl(gnutls_x509_crt_t ca, gnutls_x509_privkey_t ca_key,
                 const std::vector<gnutls_x509_crt_t>& revoked);

std::string ToPem(gnutls_x509_crt_t crt);
std::string ToPem(gnutls_x509_privkey_t key);
std::string ToPem(gnutls_x509_crl_t crl);

}  // namespace ktm

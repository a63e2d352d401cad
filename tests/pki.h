// A throwaway PKI generated with certs/ for the TLS tests: a CA, server and
// client certificates, and the bad ones the negative tests need.
#pragma once

#include <stdlib.h>
#include <unistd.h>

#include <string>

#include "certs/generate.h"
#include "tls/gnutls/x509_issue.h"

namespace ktm::testing {

struct Pki {
  std::string dir;  // creds dir in QEMU layout (ca-cert.pem, server-*.pem, client-*.pem)
  std::string other_ca_dir;   // a second, unrelated CA with its own server/client
  std::string expired_cert, expired_key;        // server cert, expired yesterday
  std::string revoked_cert, revoked_key;        // server cert revoked by crl
  std::string crl;                              // CRL revoking revoked_cert
  std::string no_purpose_cert, no_purpose_key;  // server cert with codeSigning purpose only
  std::string not_ca_cert;                      // a leaf used as a CA
  std::string no_certsign_ca;                   // CA lacking keyCertSign
  std::string future_cert, future_key;          // not valid until next year

  std::string ca() const { return dir + "/ca-cert.pem"; }
  std::string server_cert() const { return dir + "/server-cert.pem"; }
  std::string server_key() const { return dir + "/server-key.pem"; }
  std::string client_cert() const { return dir + "/client-cert.pem"; }
  std::string client_key() const { return dir + "/client-key.pem"; }

  static const Pki& Get() {
    static Pki* p = Make();
    return *p;
  }

 private:
  static std::string Write(const std::string& path, const std::string& data, unsigned mode = 0644) {
    WriteFile(path, data, mode);
    return path;
  }

  static Pki* Make() {
    auto* p = new Pki();
    char tmpl[] = "/tmp/ktm-pki-XXXXXX";
    p->dir = mkdtemp(tmpl);
    GenerateOptions o;
    o.out_dir = p->dir;
    o.hostname = "localhost";
    o.ips = {"127.0.0.1", "::1"};
    GenerateCredsDir(o);
    p->other_ca_dir = p->dir + "/other";
    o.out_dir = p->other_ca_dir;
    GenerateCredsDir(o);

    // Re-load our CA to sign the special certificates.
    std::string ca_pem = ReadFile(p->dir + "/ca-cert.pem");
    std::string ca_key_pem = ReadFile(p->dir + "/ca-key.pem");
    X509Crt ca = NewCrt();
    X509Key ca_key = NewKey();
    gnutls_datum_t d{reinterpret_cast<unsigned char*>(ca_pem.data()), (unsigned)ca_pem.size()};
    CheckGnutls(gnutls_x509_crt_import(ca.get(), &d, GNUTLS_X509_FMT_PEM), "ca");
    gnutls_datum_t k{reinterpret_cast<unsigned char*>(ca_key_pem.data()), (unsigned)ca_key_pem.size()};
    CheckGnutls(gnutls_x509_privkey_import(ca_key.get(), &k, GNUTLS_X509_FMT_PEM), "ca key");

    auto leaf = [&](const std::string& name, CertSpec spec, std::string& cert, std::string& key) {
      X509Key kk = GenerateKey(KeyType::kEcdsaP256);
      X509Crt c = IssueCert(spec, kk.get(), ca.get(), ca_key.get());
      cert = Write(p->dir + "/" + name + "-cert.pem", ToPem(c.get()));
      key = Write(p->dir + "/" + name + "-key.pem", ToPem(kk.get()), 0600);
      return c;
    };
    CertSpec s;
    s.common_name = "localhost";
    s.dns_names = {"localhost"};
    s.ip_addresses = {"127.0.0.1"};
    s.role = TlsRole::kServer;

    CertSpec expired = s;
    expired.serial = 10;
    expired.not_before = time(nullptr) - 10 * 86400;
    expired.not_after = time(nullptr) - 86400;
    leaf("expired", expired, p->expired_cert, p->expired_key);

    CertSpec revoked = s;
    revoked.serial = 11;
    X509Crt rc = leaf("revoked", revoked, p->revoked_cert, p->revoked_key);
    X509Crl crl = IssueCrl(ca.get(), ca_key.get(), {rc.get()});
    p->crl = Write(p->dir + "/revoking-crl.pem", ToPem(crl.get()));

    CertSpec nopurpose = s;
    nopurpose.serial = 12;
    nopurpose.omit_key_purpose = true;
    leaf("nopurpose", nopurpose, p->no_purpose_cert, p->no_purpose_key);

    CertSpec future = s;
    future.serial = 13;
    future.not_before = time(nullptr) + 365 * 86400;
    future.not_after = time(nullptr) + 2 * 365 * 86400;
    leaf("future", future, p->future_cert, p->future_key);

    p->not_ca_cert = p->server_cert();

    X509Key bad_ca_key = GenerateKey(KeyType::kEcdsaP256);
    CertSpec bad_ca;
    bad_ca.common_name = "CA without keyCertSign";
    bad_ca.is_ca = true;
    bad_ca.ca_without_cert_sign = true;
    X509Crt bc = IssueCert(bad_ca, bad_ca_key.get(), nullptr, nullptr);
    p->no_certsign_ca = Write(p->dir + "/nocertsign-ca.pem", ToPem(bc.get()));
    return p;
  }
};

}  // namespace ktm::testing

#include "tls/gnutls/x509_issue.h"

#include "certs/generate.h"

#include <arpa/inet.h>
#include <sys/stat.h>

#include <cstring>

namespace ktm {

X509Key GenerateKey(KeyType type) {
  X509Key key = NewKey();
  int rc = type == KeyType::kEcdsaP256
               ? gnutls_x509_privkey_generate(key.get(), GNUTLS_PK_ECDSA,
                                              GNUTLS_CURVE_TO_BITS(GNUTLS_ECC_CURVE_SECP256R1), 0)
               : gnutls_x509_privkey_generate(key.get(), GNUTLS_PK_RSA, 3072, 0);
  CheckGnutls(rc, "generate private key");
  return key;
}

X509Crt IssueCert(const CertSpec& spec, gnutls_x509_privkey_t key, gnutls_x509_crt_t issuer,
                  gnutls_x509_privkey_t issuer_key) {
  X509Crt crt = NewCrt();
  gnutls_x509_crt_t c = crt.get();
  CheckGnutls(gnutls_x509_crt_set_version(c, 3), "set version");
  unsigned char serial[4] = {static_cast<unsigned char>(spec.serial >> 24),
                             static_cast<unsigned char>(spec.serial >> 16),
                             static_cast<unsigned char>(spec.serial >> 8),
                             static_cast<unsigned char>(spec.serial)};
  CheckGnutls(gnutls_x509_crt_set_serial(c, serial, sizeof(serial)), "set serial");
  time_t nb = spec.not_before ? spec.not_before : time(nullptr) - 3600;
  time_t na = spec.not_after ? spec.not_after : nb + static_cast<time_t>(spec.days) * 86400;
  CheckGnutls(gnutls_x509_crt_set_activation_time(c, nb), "set activation");
  CheckGnutls(gnutls_x509_crt_set_expiration_time(c, na), "set expiration");
  CheckGnutls(gnutls_x509_crt_set_dn_by_oid(c, GNUTLS_OID_X520_COMMON_NAME, 0,
                                            spec.common_name.data(), spec.common_name.size()),
              "set CN");
  CheckGnutls(gnutls_x509_crt_set_key(c, key), "set key");
  CheckGnutls(gnutls_x509_crt_set_basic_constraints(c, spec.is_ca ? 1 : 0, -1), "basic constraints");
  if (spec.is_ca) {
    unsigned usage = GNUTLS_KEY_CRL_SIGN | (spec.ca_without_cert_sign ? GNUTLS_KEY_DIGITAL_SIGNATURE
                                                                      : GNUTLS_KEY_KEY_CERT_SIGN);
    CheckGnutls(gnutls_x509_crt_set_key_usage(c, usage), "key usage");
  } else {
    CheckGnutls(gnutls_x509_crt_set_key_usage(c, GNUTLS_KEY_DIGITAL_SIGNATURE | GNUTLS_KEY_KEY_ENCIPHERMENT),
                "key usage");
    if (!spec.omit_key_purpose) {
      const char* kp = spec.role == TlsRole::kServer ? GNUTLS_KP_TLS_WWW_SERVER : GNUTLS_KP_TLS_WWW_CLIENT;
      CheckGnutls(gnutls_x509_crt_set_key_purpose_oid(c, kp, 0), "key purpose");
    } else {
      // A purpose, but the wrong one, so the check has something to reject.
      CheckGnutls(gnutls_x509_crt_set_key_purpose_oid(c, GNUTLS_KP_CODE_SIGNING, 0), "key purpose");
    }
  }
  for (const auto& dns : spec.dns_names) {
    CheckGnutls(gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_DNSNAME, dns.data(), dns.size(),
                                                     GNUTLS_FSAN_APPEND),
                "DNS SAN " + dns);
  }
  for (const auto& ip : spec.ip_addresses) {
    unsigned char raw[16];
    size_t len;
    if (inet_pton(AF_INET, ip.c_str(), raw) == 1) {
      len = 4;
    } else if (inet_pton(AF_INET6, ip.c_str(), raw) == 1) {
      len = 16;
    } else {
      throw Error(ErrorKind::kUsage, EINVAL, "'" + ip + "' is not an IPv4 or IPv6 address");
    }
    CheckGnutls(gnutls_x509_crt_set_subject_alt_name(c, GNUTLS_SAN_IPADDRESS, raw, len, GNUTLS_FSAN_APPEND),
                "IP SAN " + ip);
  }
  unsigned char kid[64];
  size_t kid_len = sizeof(kid);
  CheckGnutls(gnutls_x509_crt_get_key_id(c, 0, kid, &kid_len), "key id");
  CheckGnutls(gnutls_x509_crt_set_subject_key_id(c, kid, kid_len), "subject key id");
  if (issuer) {
    unsigned char akid[64];
    size_t akid_len = sizeof(akid);
    CheckGnutls(gnutls_x509_crt_get_subject_key_id(issuer, akid, &akid_len, nullptr), "issuer key id");
    CheckGnutls(gnutls_x509_crt_set_authority_key_id(c, akid, akid_len), "authority key id");
    CheckGnutls(gnutls_x509_crt_sign2(c, issuer, issuer_key, GNUTLS_DIG_SHA256, 0), "sign");
  } else {
    CheckGnutls(gnutls_x509_crt_sign2(c, c, key, GNUTLS_DIG_SHA256, 0), "self-sign");
  }
  return crt;
}

X509Crl IssueCrl(gnutls_x509_crt_t ca, gnutls_x509_privkey_t ca_key,
                 const std::vector<gnutls_x509_crt_t>& revoked) {
  X509Crl crl = NewCrl();
  const time_t now = time(nullptr);
  CheckGnutls(gnutls_x509_crl_set_version(crl.get(), 2), "crl version");
  CheckGnutls(gnutls_x509_crl_set_this_update(crl.get(), now - 60), "crl this update");
  CheckGnutls(gnutls_x509_crl_set_next_update(crl.get(), now + 30 * 86400), "crl next update");
  for (auto* r : revoked) CheckGnutls(gnutls_x509_crl_set_crt(crl.get(), r, now - 60), "crl entry");
  CheckGnutls(gnutls_x509_crl_sign2(crl.get(), ca, ca_key, GNUTLS_DIG_SHA256, 0), "crl sign");
  return crl;
}

std::string ToPem(gnutls_x509_crt_t crt) {
  OwnedDatum d;
  CheckGnutls(gnutls_x509_crt_export2(crt, GNUTLS_X509_FMT_PEM, &d.d), "export certificate");
  return d.str();
}
std::string ToPem(gnutls_x509_privkey_t key) {
  OwnedDatum d;
  CheckGnutls(gnutls_x509_privkey_export2(key, GNUTLS_X509_FMT_PEM, &d.d), "export key");
  return d.str();
}
std::string ToPem(gnutls_x509_crl_t crl) {
  OwnedDatum d;
  CheckGnutls(gnutls_x509_crl_export2(crl, GNUTLS_X509_FMT_PEM, &d.d), "export CRL");
  return d.str();
}

void GenerateCredsDir(const GenerateOptions& o) {
  if (mkdir(o.out_dir.c_str(), 0700) != 0 && errno != EEXIST) ThrowErrno(ErrorKind::kLocalIo, errno, "mkdir " + o.out_dir);
  X509Key ca_key = GenerateKey(o.key_type);
  CertSpec ca_spec;
  ca_spec.common_name = "tls-migrate CA";
  ca_spec.is_ca = true;
  ca_spec.days = o.days;
  X509Crt ca = IssueCert(ca_spec, ca_key.get(), nullptr, nullptr);

  X509Key srv_key = GenerateKey(o.key_type);
  CertSpec srv;
  srv.common_name = o.hostname;
  srv.dns_names = {o.hostname};
  srv.ip_addresses = o.ips;
  srv.role = TlsRole::kServer;
  srv.days = o.days;
  srv.serial = 2;
  X509Crt srv_crt = IssueCert(srv, srv_key.get(), ca.get(), ca_key.get());

  X509Key cli_key = GenerateKey(o.key_type);
  CertSpec cli;
  cli.common_name = o.client_name;
  cli.role = TlsRole::kClient;
  cli.days = o.days;
  cli.serial = 3;
  X509Crt cli_crt = IssueCert(cli, cli_key.get(), ca.get(), ca_key.get());

  const std::string& d = o.out_dir;
  WriteFile(d + "/ca-cert.pem", ToPem(ca.get()), 0644);
  WriteFile(d + "/ca-key.pem", ToPem(ca_key.get()), 0600);
  WriteFile(d + "/server-cert.pem", ToPem(srv_crt.get()), 0644);
  WriteFile(d + "/server-key.pem", ToPem(srv_key.get()), 0600);
  WriteFile(d + "/client-cert.pem", ToPem(cli_crt.get()), 0644);
  WriteFile(d + "/client-key.pem", ToPem(cli_key.get()), 0600);
}

}  // namespace ktm

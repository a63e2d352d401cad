#include "tls/gnutls/gnutls_util.h"

#include <arpa/inet.h>

#include <cstring>
#include <ctime>

namespace ktm {

void CheckGnutls(int rc, const std::string& what) {
  if (rc < 0) throw Error(ErrorKind::kSecurity, EPROTO, what + ": " + gnutls_strerror(rc));
}

X509Crt NewCrt() {
  gnutls_x509_crt_t p;
  CheckGnutls(gnutls_x509_crt_init(&p), "gnutls_x509_crt_init");
  return X509Crt(p);
}
X509Key NewKey() {
  gnutls_x509_privkey_t p;
  CheckGnutls(gnutls_x509_privkey_init(&p), "gnutls_x509_privkey_init");
  return X509Key(p);
}
X509Crl NewCrl() {
  gnutls_x509_crl_t p;
  CheckGnutls(gnutls_x509_crl_init(&p), "gnutls_x509_crl_init");
  return X509Crl(p);
}

std::string CrtCommonName(gnutls_x509_crt_t crt) {
  char buf[256];
  size_t len = sizeof(buf);
  if (gnutls_x509_crt_get_dn_by_oid(crt, GNUTLS_OID_X520_COMMON_NAME, 0, 0, buf, &len) < 0) {
    return "";
  }
  return std::string(buf, len);
}

std::string CrtSubjectAltNames(gnutls_x509_crt_t crt) {
  std::string out;
  for (unsigned i = 0;; ++i) {
    char buf[256];
    size_t len = sizeof(buf);
    unsigned critical = 0;
    int type = gnutls_x509_crt_get_subject_alt_name(crt, i, buf, &len, &critical);
    if (type == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) break;
    if (type < 0) continue;
    std::string item;
    if (type == GNUTLS_SAN_DNSNAME) {
      item = "DNS:" + std::string(buf, len);
    } else if (type == GNUTLS_SAN_IPADDRESS) {
      char ip[INET6_ADDRSTRLEN] = {};
      inet_ntop(len == 4 ? AF_INET : AF_INET6, buf, ip, sizeof(ip));
      item = std::string("IP:") + ip;
    } else {
      continue;
    }
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out.empty() ? "no DNS/IP subject alternative names" : out;
}

}  // namespace ktm

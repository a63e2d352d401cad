#include "certs/gnutls_util.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <ctime>
#include <fstream>
#include <sstream>

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

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data, unsigned mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot create " + path);
  // open() honours the umask; a key must end up exactly `mode`.
  fchmod(fd, mode);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      ThrowErrno(ErrorKind::kLocalIo, e, "cannot write " + path);
    }
    off += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot write " + path);
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

std::string FormatTime(time_t t) {
  char buf[64];
  tm tmv{};
  gmtime_r(&t, &tmv);
  strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tmv);
  return buf;
}

}  // namespace ktm

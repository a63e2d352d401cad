#include "certs/credentials.h"

#include "certs/credentials_native.h"
#include "certs/gnutls_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <vector>

namespace ktm {
namespace {

bool Exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

std::vector<X509Crt> LoadCrtList(const std::string& file) {
  std::string pem = ReadFile(file);
  gnutls_datum_t d{reinterpret_cast<unsigned char*>(pem.data()), static_cast<unsigned>(pem.size())};
  gnutls_x509_crt_t* list = nullptr;
  unsigned n = 0;
  int rc = gnutls_x509_crt_list_import2(&list, &n, &d, GNUTLS_X509_FMT_PEM, 0);
  if (rc < 0 || n == 0) {
    throw Error(ErrorKind::kSecurity, EINVAL, file + ": not a PEM certificate" +
                            (rc < 0 ? std::string(" (") + gnutls_strerror(rc) + ")" : ""));
  }
  std::vector<X509Crt> out;
  for (unsigned i = 0; i < n; ++i) out.emplace_back(list[i]);
  gnutls_free(list);
  return out;
}

X509Key LoadKey(const std::string& file) {
  std::string pem = ReadFile(file);
  gnutls_datum_t d{reinterpret_cast<unsigned char*>(pem.data()), static_cast<unsigned>(pem.size())};
  X509Key key = NewKey();
  int rc = gnutls_x509_privkey_import2(key.get(), &d, GNUTLS_X509_FMT_PEM, nullptr, 0);
  if (rc < 0) throw Error(ErrorKind::kSecurity, EINVAL, file + ": not a usable PEM private key (" + gnutls_strerror(rc) + ")");
  return key;
}

std::string KeyId(gnutls_x509_crt_t crt) {
  unsigned char buf[64];
  size_t len = sizeof(buf);
  if (gnutls_x509_crt_get_key_id(crt, 0, buf, &len) < 0) return "";
  return std::string(reinterpret_cast<char*>(buf), len);
}

std::string KeyId(gnutls_x509_privkey_t key) {
  unsigned char buf[64];
  size_t len = sizeof(buf);
  if (gnutls_x509_privkey_get_key_id(key, 0, buf, &len) < 0) return "";
  return std::string(reinterpret_cast<char*>(buf), len);
}

const char* RoleName(TlsRole r) { return r == TlsRole::kServer ? "server" : "client"; }

}  // namespace

CredentialFiles CredsDirFiles(const std::string& dir, TlsRole role) {
  CredentialFiles f;
  f.ca = dir + "/ca-cert.pem";
  if (!Exists(f.ca)) {
    throw Error(ErrorKind::kSecurity, ENOENT, "creds dir " + dir + " has no ca-cert.pem (expected QEMU's layout: "
                        "ca-cert.pem, [ca-crl.pem], server-cert.pem, server-key.pem, "
                        "client-cert.pem, client-key.pem; `tls-migrate certs generate` makes one)");
  }
  if (Exists(dir + "/ca-crl.pem")) f.crl = dir + "/ca-crl.pem";
  std::string base = dir + "/" + RoleName(role);
  if (Exists(base + "-cert.pem") || role == TlsRole::kServer) {
    f.cert = base + "-cert.pem";
    f.key = base + "-key.pem";
    if (!Exists(f.cert)) throw Error(ErrorKind::kSecurity, ENOENT, "creds dir " + dir + " has no " + RoleName(role) + "-cert.pem");
    if (!Exists(f.key)) throw Error(ErrorKind::kSecurity, ENOENT, "creds dir " + dir + " has no " + RoleName(role) + "-key.pem");
  }
  return f;
}

namespace {

void CheckValidity(gnutls_x509_crt_t crt, const std::string& file) {
  const time_t now = time(nullptr);
  time_t nb = gnutls_x509_crt_get_activation_time(crt);
  time_t na = gnutls_x509_crt_get_expiration_time(crt);
  if (nb != (time_t)-1 && now < nb) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": certificate '" + CrtCommonName(crt) + "' is not valid until " +
                                  FormatTime(nb) + " (check the clocks, or reissue it)");
  }
  if (na != (time_t)-1 && now > na) {
    throw Error(ErrorKind::kSecurity, EKEYEXPIRED, file + ": certificate '" + CrtCommonName(crt) + "' expired on " +
                                 FormatTime(na) + "; issue a new one");
  }
}

void CheckCaCert(gnutls_x509_crt_t crt, const std::string& file) {
  unsigned critical = 0;
  int ca = gnutls_x509_crt_get_basic_constraints(crt, &critical, nullptr, nullptr);
  if (ca <= 0) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": '" + CrtCommonName(crt) +
                                  "' is not a CA certificate (basic constraints CA:TRUE missing)");
  }
  unsigned usage = 0;
  int rc = gnutls_x509_crt_get_key_usage(crt, &usage, &critical);
  if (rc >= 0 && !(usage & GNUTLS_KEY_KEY_CERT_SIGN)) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": CA certificate '" + CrtCommonName(crt) +
                                  "' lacks the certificate-signing key usage (keyCertSign)");
  }
}

void CheckLeafCert(gnutls_x509_crt_t crt, TlsRole role, const std::string& file) {
  unsigned critical = 0;
  if (gnutls_x509_crt_get_basic_constraints(crt, &critical, nullptr, nullptr) > 0) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": '" + CrtCommonName(crt) +
                                  "' is a CA certificate; a " + RoleName(role) +
                                  " needs a leaf certificate");
  }
  unsigned usage = 0;
  if (gnutls_x509_crt_get_key_usage(crt, &usage, &critical) >= 0 &&
      !(usage & GNUTLS_KEY_DIGITAL_SIGNATURE) && !(usage & GNUTLS_KEY_KEY_ENCIPHERMENT)) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": key usage allows neither digitalSignature nor "
                                     "keyEncipherment, so it cannot be used for TLS");
  }
  const char* want = role == TlsRole::kServer ? GNUTLS_KP_TLS_WWW_SERVER : GNUTLS_KP_TLS_WWW_CLIENT;
  bool has_ext = false, has_purpose = false;
  for (unsigned i = 0;; ++i) {
    char oid[128];
    size_t len = sizeof(oid);
    int rc = gnutls_x509_crt_get_key_purpose_oid(crt, i, oid, &len, &critical);
    if (rc == GNUTLS_E_REQUESTED_DATA_NOT_AVAILABLE) break;
    if (rc < 0) break;
    has_ext = true;
    if (std::string(oid) == want || std::string(oid) == GNUTLS_KP_ANY) has_purpose = true;
  }
  if (has_ext && !has_purpose) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": certificate '" + CrtCommonName(crt) +
                                  "' lacks the TLS " + RoleName(role) +
                                  " key purpose (extendedKeyUsage " +
                                  (role == TlsRole::kServer ? "serverAuth" : "clientAuth") + ")");
  }
}

// The private key's permissions, as ssh checks them ("UNPROTECTED PRIVATE
// KEY FILE"): "" when only its owner (and at most its group, to read) may
// touch it.
std::string KeyModeWarning(const std::string& file) {
  struct stat st{};
  if (stat(file.c_str(), &st) != 0) return "";  // loading it has already succeeded or will say why
  const mode_t perm = st.st_mode & 07777;
  if ((perm & (S_IRWXO | S_IWGRP)) == 0) return "";
  char mode[8];
  std::snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(perm));
  return std::string("private key ") + file + " has mode " + mode + ": " +
         ((perm & S_IROTH)   ? "any user of this host can read it"
          : (perm & S_IRWXO) ? "other users of this host can access it"
                             : "its group can change it") +
         "; restrict it (chmod 600 " + file + ")";
}

}  // namespace

const CredentialsNative& NativeOf(const Credentials& c) { return *c.native_; }

std::shared_ptr<void> Credentials::BackendState(const std::string& key,
                                                const std::function<std::shared_ptr<void>()>& build) const {
  std::lock_guard<std::mutex> lock(backend_mu_);
  auto it = backend_state_.find(key);
  if (it != backend_state_.end()) return it->second;
  std::shared_ptr<void> made = build();
  backend_state_.emplace(key, made);
  return made;
}

std::shared_ptr<Credentials> Credentials::Load(const CredentialFiles& files, TlsRole role) {
  auto c = std::shared_ptr<Credentials>(new Credentials());
  c->files_ = files;
  c->native_ = std::make_shared<CredentialsNative>();
  gnutls_certificate_credentials_t raw;
  CheckGnutls(gnutls_certificate_allocate_credentials(&raw), "allocate credentials");
  c->native_->creds.reset(raw);

  if (files.ca.empty()) throw Error(ErrorKind::kSecurity, EINVAL, "no CA certificate given", Remedy::kCredentials);
  std::vector<X509Crt> cas = LoadCrtList(files.ca);
  for (auto& ca : cas) {
    CheckValidity(ca.get(), files.ca);
    CheckCaCert(ca.get(), files.ca);
  }
  int rc = gnutls_certificate_set_x509_trust_file(raw, files.ca.c_str(), GNUTLS_X509_FMT_PEM);
  CheckGnutls(rc, files.ca + ": cannot load as trust anchor");

  if (!files.crl.empty()) {
    std::string pem = ReadFile(files.crl);
    X509Crl crl = NewCrl();
    gnutls_datum_t d{reinterpret_cast<unsigned char*>(pem.data()), static_cast<unsigned>(pem.size())};
    CheckGnutls(gnutls_x509_crl_import(crl.get(), &d, GNUTLS_X509_FMT_PEM), files.crl + ": not a PEM CRL");
    bool signed_by_ca = false;
    for (auto& ca : cas) {
      unsigned verify = 0;
      gnutls_x509_crt_t ca_raw = ca.get();
      if (gnutls_x509_crl_verify(crl.get(), &ca_raw, 1, 0, &verify) >= 0 && verify == 0) {
        signed_by_ca = true;
      }
    }
    if (!signed_by_ca) throw Error(ErrorKind::kSecurity, EKEYREJECTED, files.crl + ": CRL is not signed by the CA in " + files.ca);
    CheckGnutls(gnutls_certificate_set_x509_crl_file(raw, files.crl.c_str(), GNUTLS_X509_FMT_PEM),
                files.crl + ": cannot load CRL");
  }

  if (!files.cert.empty()) {
    if (files.key.empty()) throw Error(ErrorKind::kSecurity, EINVAL, files.cert + ": certificate given without its key", Remedy::kCredentials);
    std::vector<X509Crt> chain = LoadCrtList(files.cert);
    for (auto& crt : chain) CheckValidity(crt.get(), files.cert);
    CheckLeafCert(chain[0].get(), role, files.cert);
    X509Key key = LoadKey(files.key);
    if (std::string w = KeyModeWarning(files.key); !w.empty()) c->warnings_.push_back(std::move(w));
    if (KeyId(chain[0].get()) != KeyId(key.get())) {
      throw Error(ErrorKind::kSecurity, EKEYREJECTED, files.key + ": private key does not match the certificate in " + files.cert);
    }
    // The leaf (plus any intermediates in the same file) must chain to the CA.
    std::vector<gnutls_x509_crt_t> chain_raw, ca_raw;
    for (auto& x : chain) chain_raw.push_back(x.get());
    for (auto& x : cas) ca_raw.push_back(x.get());
    unsigned verify = 0;
    rc = gnutls_x509_crt_list_verify(chain_raw.data(), chain_raw.size(), ca_raw.data(), ca_raw.size(),
                                     nullptr, 0, 0, &verify);
    if (rc < 0 || verify != 0) {
      OwnedDatum out;
      gnutls_certificate_verification_status_print(verify, GNUTLS_CRT_X509, &out.d, 0);
      throw Error(ErrorKind::kSecurity, EKEYREJECTED, files.cert + ": certificate does not chain to the CA in " + files.ca +
                                    " (" + out.str() + ")");
    }
    rc = gnutls_certificate_set_x509_key_file(raw, files.cert.c_str(), files.key.c_str(), GNUTLS_X509_FMT_PEM);
    CheckGnutls(rc, files.cert + " / " + files.key + ": cannot load");
  } else if (role == TlsRole::kServer) {
    throw Error(ErrorKind::kSecurity, EINVAL, "a server needs its own certificate and key", Remedy::kCredentials);
  }
  return c;
}

}  // namespace ktm

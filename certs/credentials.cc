#include "certs/credentials.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <ctime>
#include <vector>

#include "base/error.h"
#include "certs/files.h"

// The load-time checks, with libcrypto's X509 API: libcrypto is not a TLS
// backend, so certs/ stays neutral and both backends get the same checks
// and the same sentences.
namespace ktm {
namespace {

struct CryptoDeleter {
  void operator()(X509* p) const { X509_free(p); }
  void operator()(X509_CRL* p) const { X509_CRL_free(p); }
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
  void operator()(BIO* p) const { BIO_free(p); }
  void operator()(X509_STORE* p) const { X509_STORE_free(p); }
  void operator()(X509_STORE_CTX* p) const { X509_STORE_CTX_free(p); }
};
using X509Ptr = std::unique_ptr<X509, CryptoDeleter>;
using CrlPtr = std::unique_ptr<X509_CRL, CryptoDeleter>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, CryptoDeleter>;
using BioPtr = std::unique_ptr<BIO, CryptoDeleter>;

bool Exists(const std::string& p) { return access(p.c_str(), F_OK) == 0; }

const char* RoleName(TlsRole r) { return r == TlsRole::kServer ? "server" : "client"; }

// libcrypto's reason for the last failure (and its queue emptied, so the
// next check starts clean).
std::string CryptoReason() {
  const unsigned long e = ERR_peek_last_error();
  const char* r = e ? ERR_reason_error_string(e) : nullptr;
  ERR_clear_error();
  return r ? r : "unknown error";
}

// A memory BIO over the file's bytes; `pem` must outlive it.
BioPtr MemBio(const std::string& pem) { return BioPtr(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()))); }

// Never prompts for an encrypted key's passphrase (libcrypto would read
// the terminal): such a key is refused as unusable.
int NoPassphrase(char*, int, int, void*) { return 0; }

std::vector<X509Ptr> LoadCrtList(const std::string& file) {
  const std::string pem = ReadFile(file);
  BioPtr bio = MemBio(pem);
  std::vector<X509Ptr> out;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) out.emplace_back(x);
  // The loop ends at the first block that is not a certificate: at the end
  // of the file that is "no start line", which is not an error.
  const unsigned long last = ERR_peek_last_error();
  const bool clean_end = ERR_GET_REASON(last) == PEM_R_NO_START_LINE;
  const std::string reason = CryptoReason();
  if (out.empty()) {
    throw Error(ErrorKind::kSecurity, EINVAL,
                file + ": not a PEM certificate" + (clean_end ? std::string() : " (" + reason + ")"));
  }
  return out;
}

PkeyPtr LoadKey(const std::string& file) {
  std::string pem = ReadFile(file);
  BioPtr bio = MemBio(pem);
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  explicit_bzero(pem.data(), pem.size());  // the key's PEM text: gone as soon as parsed
  if (!key) throw Error(ErrorKind::kSecurity, EINVAL, file + ": not a usable PEM private key (" + CryptoReason() + ")");
  return key;
}

CrlPtr LoadCrl(const std::string& file) {
  const std::string pem = ReadFile(file);
  BioPtr bio = MemBio(pem);
  CrlPtr crl(PEM_read_bio_X509_CRL(bio.get(), nullptr, NoPassphrase, nullptr));
  if (!crl) throw Error(ErrorKind::kSecurity, EPROTO, file + ": not a PEM CRL: " + CryptoReason());
  return crl;
}

std::string CommonName(X509* crt) {
  X509_NAME* name = X509_get_subject_name(crt);
  const int i = name ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
  if (i < 0) return "";
  unsigned char* utf8 = nullptr;
  const int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
  if (n < 0) return "";
  std::string out(reinterpret_cast<char*>(utf8), static_cast<size_t>(n));
  OPENSSL_free(utf8);
  return out;
}

time_t ToTimeT(const ASN1_TIME* t) {
  tm tmv{};
  if (!t || ASN1_TIME_to_tm(t, &tmv) != 1) return static_cast<time_t>(-1);
  return timegm(&tmv);
}

// Extension flags libcrypto derived from the certificate (basic
// constraints, key usage, extended key usage), computed on first use.
uint32_t Flags(X509* crt) { return X509_get_extension_flags(crt); }

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

void CheckValidity(X509* crt, const std::string& file) {
  const ASN1_TIME* nb = X509_get0_notBefore(crt);
  const ASN1_TIME* na = X509_get0_notAfter(crt);
  if (nb && X509_cmp_current_time(nb) > 0) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": certificate '" + CommonName(crt) + "' is not valid until " +
                                  FormatTime(ToTimeT(nb)) + " (check the clocks, or reissue it)");
  }
  if (na && X509_cmp_current_time(na) < 0) {
    throw Error(ErrorKind::kSecurity, EKEYEXPIRED, file + ": certificate '" + CommonName(crt) + "' expired on " +
                                 FormatTime(ToTimeT(na)) + "; issue a new one");
  }
}

void CheckCaCert(X509* crt, const std::string& file) {
  const uint32_t flags = Flags(crt);
  if (!(flags & EXFLAG_CA)) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": '" + CommonName(crt) +
                                  "' is not a CA certificate (basic constraints CA:TRUE missing)");
  }
  // No key usage extension at all means any usage (RFC 5280 4.2.1.3).
  if ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(crt) & KU_KEY_CERT_SIGN)) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": CA certificate '" + CommonName(crt) +
                                  "' lacks the certificate-signing key usage (keyCertSign)");
  }
}

void CheckLeafCert(X509* crt, TlsRole role, const std::string& file) {
  const uint32_t flags = Flags(crt);
  if (flags & EXFLAG_CA) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": '" + CommonName(crt) +
                                  "' is a CA certificate; a " + RoleName(role) +
                                  " needs a leaf certificate");
  }
  if ((flags & EXFLAG_KUSAGE) && !(X509_get_key_usage(crt) & (KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT))) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": key usage allows neither digitalSignature nor "
                                     "keyEncipherment, so it cannot be used for TLS");
  }
  const uint32_t want = role == TlsRole::kServer ? XKU_SSL_SERVER : XKU_SSL_CLIENT;
  if ((flags & EXFLAG_XKUSAGE) && !(X509_get_extended_key_usage(crt) & (want | XKU_ANYEKU))) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, file + ": certificate '" + CommonName(crt) +
                                  "' lacks the TLS " + RoleName(role) +
                                  " key purpose (extendedKeyUsage " +
                                  (role == TlsRole::kServer ? "serverAuth" : "clientAuth") + ")");
  }
}

// The leaf (plus any intermediates in the same file) must chain to one of
// the CA file's certificates, each of which is a trust anchor (as GnuTLS's
// trust file makes them: PARTIAL_CHAIN, an intermediate CA may anchor).
// Validity was checked before, with better sentences; revocation is the
// handshake's business.
void CheckChain(const std::vector<X509Ptr>& chain, const std::vector<X509Ptr>& cas, const CredentialFiles& files) {
  std::unique_ptr<X509_STORE, CryptoDeleter> store(X509_STORE_new());
  std::unique_ptr<X509_STORE_CTX, CryptoDeleter> ctx(X509_STORE_CTX_new());
  STACK_OF(X509)* untrusted = sk_X509_new_null();
  if (!store || !ctx || !untrusted) {
    sk_X509_free(untrusted);
    throw Error(ErrorKind::kInternal, ENOMEM, "cannot allocate a certificate store");
  }
  for (const auto& ca : cas) X509_STORE_add_cert(store.get(), ca.get());
  X509_STORE_set_flags(store.get(), X509_V_FLAG_PARTIAL_CHAIN);
  for (size_t i = 1; i < chain.size(); ++i) sk_X509_push(untrusted, chain[i].get());
  int ok = X509_STORE_CTX_init(ctx.get(), store.get(), chain[0].get(), untrusted);
  if (ok == 1) ok = X509_verify_cert(ctx.get());
  const int err = X509_STORE_CTX_get_error(ctx.get());
  sk_X509_free(untrusted);  // the certificates stay owned by `chain`
  ERR_clear_error();
  if (ok != 1) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, files.cert + ": certificate does not chain to the CA in " +
                                  files.ca + " (" + X509_verify_cert_error_string(err) + ")");
  }
}

void CheckCrl(const CredentialFiles& files, const std::vector<X509Ptr>& cas) {
  CrlPtr crl = LoadCrl(files.crl);
  bool signed_by_ca = false;
  for (const auto& ca : cas) {
    EVP_PKEY* pub = X509_get0_pubkey(ca.get());
    if (pub && X509_CRL_verify(crl.get(), pub) == 1) signed_by_ca = true;
  }
  ERR_clear_error();
  if (!signed_by_ca) throw Error(ErrorKind::kSecurity, EKEYREJECTED, files.crl + ": CRL is not signed by the CA in " + files.ca);
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

// The own certificate and key: validity, role, key match, chain to the CA.
// Returns the key-mode warning ("" for none).
std::string CheckOwnCert(const CredentialFiles& files, const std::vector<X509Ptr>& cas, TlsRole role) {
  if (files.key.empty()) throw Error(ErrorKind::kSecurity, EINVAL, files.cert + ": certificate given without its key", Remedy::kCredentials);
  std::vector<X509Ptr> chain = LoadCrtList(files.cert);
  for (auto& crt : chain) CheckValidity(crt.get(), files.cert);
  CheckLeafCert(chain[0].get(), role, files.cert);
  PkeyPtr key = LoadKey(files.key);
  std::string warning = KeyModeWarning(files.key);
  const EVP_PKEY* pub = X509_get0_pubkey(chain[0].get());
  const bool match = pub && EVP_PKEY_eq(pub, key.get()) == 1;
  ERR_clear_error();
  if (!match) {
    throw Error(ErrorKind::kSecurity, EKEYREJECTED, files.key + ": private key does not match the certificate in " + files.cert);
  }
  CheckChain(chain, cas, files);
  return warning;
}

}  // namespace

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
  if (files.ca.empty()) throw Error(ErrorKind::kSecurity, EINVAL, "no CA certificate given", Remedy::kCredentials);
  std::vector<X509Ptr> cas = LoadCrtList(files.ca);
  for (auto& ca : cas) {
    CheckValidity(ca.get(), files.ca);
    CheckCaCert(ca.get(), files.ca);
  }
  if (!files.crl.empty()) CheckCrl(files, cas);
  if (!files.cert.empty()) {
    if (std::string w = CheckOwnCert(files, cas, role); !w.empty()) c->warnings_.push_back(std::move(w));
  } else if (role == TlsRole::kServer) {
    throw Error(ErrorKind::kSecurity, EINVAL, "a server needs its own certificate and key", Remedy::kCredentials);
  }
  return c;
}

}  // namespace ktm

#include "tls/openssl/openssl_context.h"

#include <openssl/err.h>
#include <openssl/x509_vfy.h>

#include <cctype>

#include "base/error.h"
#include "tls/openssl/openssl_util.h"

namespace ktm {
namespace {

[[noreturn]] void Refused(const std::string& what) {
  std::string detail;
  DrainOpensslErrors(ERR_LIB_SSL, &detail);
  throw Error(ErrorKind::kUsage, EINVAL, what + (detail.empty() ? "" : " (" + detail + ")"));
}

int ProtoVersion(TlsVersion v) { return v == TlsVersion::kTls13 ? TLS1_3_VERSION : TLS1_2_VERSION; }

// TLS 1.3 suite names; the hash comes with the cipher there.
const char* Suite13(TlsCipher c) {
  switch (c) {
    case TlsCipher::kAes128Gcm: return "TLS_AES_128_GCM_SHA256";
    case TlsCipher::kAes256Gcm: return "TLS_AES_256_GCM_SHA384";
    case TlsCipher::kChacha20Poly1305: return "TLS_CHACHA20_POLY1305_SHA256";
    case TlsCipher::kAes128Ccm: return "TLS_AES_128_CCM_SHA256";
    case TlsCipher::kOther: break;
  }
  return nullptr;
}

// TLS 1.2: forward-secret (ECDHE) AEAD suites only, for ECDSA and RSA
// certificates alike (what GnuTLS's NORMAL with the cipher allows).
const char* Suites12(TlsCipher c) {
  switch (c) {
    case TlsCipher::kAes128Gcm: return "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256";
    case TlsCipher::kAes256Gcm: return "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384";
    case TlsCipher::kChacha20Poly1305: return "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
    case TlsCipher::kAes128Ccm: return "ECDHE-ECDSA-AES128-CCM";
    case TlsCipher::kOther: break;
  }
  return nullptr;
}

void ApplyEnums(SSL_CTX* ctx, const TlsCryptoPolicy& p) {
  if (p.versions.empty() || p.ciphers.empty()) {
    throw Error(ErrorKind::kUsage, EINVAL,
                "the TLS policy allows no " + std::string(p.versions.empty() ? "version" : "cipher"));
  }
  int lo = TLS1_3_VERSION, hi = TLS1_2_VERSION;
  for (TlsVersion v : p.versions) {
    if (v == TlsVersion::kOther) continue;
    lo = std::min(lo, ProtoVersion(v));
    hi = std::max(hi, ProtoVersion(v));
  }
  if (SSL_CTX_set_min_proto_version(ctx, lo) != 1 || SSL_CTX_set_max_proto_version(ctx, hi) != 1) {
    Refused("OpenSSL refused the TLS versions " + ToString(p));
  }
  std::string s13, s12;
  for (TlsCipher c : p.ciphers) {
    if (const char* s = Suite13(c)) s13 += (s13.empty() ? "" : ":") + std::string(s);
    if (const char* s = Suites12(c)) s12 += (s12.empty() ? "" : ":") + std::string(s);
  }
  if (SSL_CTX_set_ciphersuites(ctx, s13.c_str()) != 1) Refused("OpenSSL refused the TLS 1.3 suites '" + s13 + "'");
  if (SSL_CTX_set_cipher_list(ctx, s12.c_str()) != 1) Refused("OpenSSL refused the TLS 1.2 suites '" + s12 + "'");
}

void ApplyConfCommands(SSL_CTX* ctx, const std::string& cmds, unsigned flags) {
  std::unique_ptr<SSL_CONF_CTX, decltype(&SSL_CONF_CTX_free)> cc(SSL_CONF_CTX_new(), SSL_CONF_CTX_free);
  if (!cc) Refused("out of memory for SSL_CONF");
  SSL_CONF_CTX_set_flags(cc.get(), SSL_CONF_FLAG_FILE | flags);
  SSL_CONF_CTX_set_ssl_ctx(cc.get(), ctx);
  size_t i = 0;
  while (i < cmds.size()) {
    if (cmds[i] == ',' || isspace(static_cast<unsigned char>(cmds[i]))) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < cmds.size() && cmds[end] != ',' && !isspace(static_cast<unsigned char>(cmds[end]))) ++end;
    const std::string item = cmds.substr(i, end - i);
    i = end;
    const size_t eq = item.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw Error(ErrorKind::kUsage, EINVAL,
                  "bad OpenSSL setting '" + item + "' in the TLS library override: expected Name=Value");
    }
    const std::string name = item.substr(0, eq), value = item.substr(eq + 1);
    const int rc = SSL_CONF_cmd(cc.get(), name.c_str(), value.c_str());
    if (rc == -2) Refused("unknown OpenSSL setting '" + name + "' in the TLS library override");
    if (rc <= 0) Refused("OpenSSL refused the setting '" + item + "' in the TLS library override");
  }
  if (SSL_CONF_CTX_finish(cc.get()) != 1) Refused("OpenSSL refused the TLS library override '" + cmds + "'");
}

[[noreturn]] void BadFile(const std::string& what, const std::string& file) {
  std::string detail;
  DrainOpensslErrors(0, &detail);
  throw Error(ErrorKind::kSecurity, EINVAL, "OpenSSL cannot load the " + what + " '" + file + "'" +
                                                (detail.empty() ? "" : ": " + detail),
              Remedy::kCredentials);
}

void LoadCredentials(SSL_CTX* ctx, const CredentialFiles& f) {
  if (SSL_CTX_load_verify_locations(ctx, f.ca.c_str(), nullptr) != 1) BadFile("CA certificate", f.ca);
  if (!f.crl.empty()) {
    X509_STORE* store = SSL_CTX_get_cert_store(ctx);
    X509_LOOKUP* lookup = X509_STORE_add_lookup(store, X509_LOOKUP_file());
    if (!lookup || X509_load_crl_file(lookup, f.crl.c_str(), X509_FILETYPE_PEM) <= 0) BadFile("CRL", f.crl);
    // The leaf is checked against it, as GnuTLS does with its CRL.
    X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK);
  }
  if (f.cert.empty()) return;
  if (SSL_CTX_use_certificate_chain_file(ctx, f.cert.c_str()) != 1) BadFile("certificate", f.cert);
  if (SSL_CTX_use_PrivateKey_file(ctx, f.key.c_str(), SSL_FILETYPE_PEM) != 1) BadFile("private key", f.key);
  if (SSL_CTX_check_private_key(ctx) != 1) BadFile("private key (it does not match the certificate)", f.key);
}

std::shared_ptr<SSL_CTX> BuildContext(const TlsOptions& o, const OpensslCtxHooks& hooks) {
  const bool server = o.role == TlsRole::kServer;
  std::shared_ptr<SSL_CTX> ctx(SSL_CTX_new(server ? TLS_server_method() : TLS_client_method()), SSL_CTX_free);
  if (!ctx) Refused("OpenSSL could not make a TLS context");
  ApplyOpensslPolicy(ctx.get(), o.policy, server ? SSL_CONF_FLAG_SERVER : SSL_CONF_FLAG_CLIENT);
  LoadCredentials(ctx.get(), o.creds->files());
  // No session tickets, no resumption: a ticket after the handshake would
  // use up send sequence numbers (and be a record the kernel path must
  // skip) before the keys are exported.
  SSL_CTX_set_num_tickets(ctx.get(), 0);
  SSL_CTX_set_options(ctx.get(), SSL_OP_NO_TICKET | SSL_OP_NO_RENEGOTIATION);
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  // One record per SSL_write (see OpensslRecordChannel), and a retried
  // write may come from a copy of the same bytes.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_keylog_callback(ctx.get(), hooks.keylog);
  SSL_CTX_set_cert_verify_callback(ctx.get(), hooks.cert_verify, nullptr);
  return ctx;
}

}  // namespace

void ApplyOpensslPolicy(SSL_CTX* ctx, const TlsCryptoPolicy& p, unsigned conf_flags) {
  if (p.library_override.empty()) {
    ApplyEnums(ctx, p);
  } else {
    ApplyConfCommands(ctx, p.library_override, conf_flags);
  }
}

// One SSL_CTX per handshake, not one shared by every handshake of these
// credentials (as GnuTLS's credentials are): two concurrent handshakes on
// one OpenSSL 3.0 SSL_CTX drew a ThreadSanitizer data race inside libssl
// (an ASN1_STRING its verification caches in the shared store, written by
// one handshake while the other compared it), in a tunnel source opening
// four connections at once. A context of its own per connection shares
// nothing mutable; the price is reading the PEM files per connection.
std::shared_ptr<SSL_CTX> OpensslContext(const TlsOptions& o, const OpensslCtxHooks& hooks) {
  return BuildContext(o, hooks);
}

}  // namespace ktm

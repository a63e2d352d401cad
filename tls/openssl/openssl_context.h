// The SSL_CTX behind OpenSSL sessions: the crypto policy, the credentials
// (CA, CRL, own chain and key) and the callbacks every session shares.
// OpenSSL-facing: only tls/openssl/ includes it.
#pragma once

#include <openssl/ssl.h>

#include <memory>

#include "tls/tls_types.h"

namespace ktm {

// Context-wide callbacks (they find their session through SSL app data).
struct OpensslCtxHooks {
  SSL_CTX_keylog_cb_func keylog = nullptr;
  int (*cert_verify)(X509_STORE_CTX*, void*) = nullptr;
};

// The SSL_CTX for `o`'s role and policy over o.creds, built once per
// credentials object and kept in its BackendState cache, so a tunnel's
// hundredth connection does not re-read the files. SSL_CTX is safe to share
// between threads once built (sessions only SSL_new() from it). Throws
// Error(kUsage) for a policy OpenSSL refuses, Error(kSecurity) naming a
// credentials file it cannot load.
std::shared_ptr<SSL_CTX> OpensslContext(const TlsOptions& o, const OpensslCtxHooks& hooks);

// Turns `p` into `ctx`'s protocol range and cipher lists, or applies its
// library_override as SSL_CONF commands ("Name=Value", separated by ',' or
// whitespace; so a value cannot hold a ',', use ':' where OpenSSL allows
// it). `conf_flags`: SSL_CONF_FLAG_CLIENT and/or SSL_CONF_FLAG_SERVER.
// Throws Error(kUsage) naming what OpenSSL refused.
void ApplyOpensslPolicy(SSL_CTX* ctx, const TlsCryptoPolicy& p, unsigned conf_flags);

}  // namespace ktm

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

// A new SSL_CTX for `o`'s role and policy over o.creds, for one handshake
// (not shared between concurrent handshakes: see the definition). Throws
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

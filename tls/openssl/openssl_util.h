// Small OpenSSL helpers for the OpenSSL backend (tls/openssl/): owning
// pointers, SIGPIPE suppression, the error queue, certificate fields.
// OpenSSL-facing: only tls/openssl/ and backend tests include it.
#pragma once

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <signal.h>

#include <memory>
#include <string>

namespace ktm {

struct SslCtxFree {
  void operator()(SSL_CTX* c) const { SSL_CTX_free(c); }
};
struct SslFree {
  void operator()(SSL* s) const { SSL_free(s); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;

// OpenSSL's socket BIO writes with write(2), not send(MSG_NOSIGNAL): a peer
// that vanished would raise SIGPIPE, whose default action kills the
// process. While a guard lives SIGPIPE is blocked for this thread; one
// that our write raised meanwhile is taken off the pending set before the
// old mask comes back, so it is never delivered. The write itself then
// fails with EPIPE, which the callers report. errno survives the guard
// (SSL_get_error reads it after the call). `needed` false (the process
// ignores SIGPIPE anyway, as the CLI does) makes the guard free.
class SigpipeGuard {
 public:
  explicit SigpipeGuard(bool needed);
  ~SigpipeGuard();
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  bool active_;
  bool was_pending_ = false;
  sigset_t old_{};
};
// Whether SIGPIPE's disposition is SIG_IGN now (then no guard is needed).
bool SigpipeIgnored();

// The first error in this thread's OpenSSL error queue from library `lib`
// (ERR_LIB_SSL...), as its reason code, 0 if none; `text` gets every
// queued error's string ("; "-separated). Empties the queue.
int DrainOpensslErrors(int lib, std::string* text);

// Subject DN in RFC 4514 form ("CN=host1,O=Example"), as GnuTLS's
// gnutls_x509_crt_get_dn3 prints it: most specific first, comma-separated,
// RFC 4514 escapes, UTF-8 left as is.
std::string SubjectRfc4514(X509* crt);
// The subject's common name ("" if none).
std::string CommonName(X509* crt);
// "DNS:localhost, IP:127.0.0.1, IP:::1" (as certs/ prints them for GnuTLS),
// or "no DNS/IP subject alternative names".
std::string SubjectAltNames(X509* crt);
// notAfter as "2025-01-31 12:00:00 UTC".
std::string NotAfter(X509* crt);

}  // namespace ktm

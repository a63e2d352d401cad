// The one entry to a TLS session: runs the handshake with the backend the
// options name. Callers then decide the channel (ktls/EstablishTls).
#pragma once

#include <memory>
#include <string>

#include "base/unique_fd.h"
#include "tls/tls_session.h"
#include "tls/tls_types.h"

namespace ktm {

// Runs the handshake on `fd` (blocking, bounded by opts.handshake_timeout)
// with the backend opts.backend names. On any failure throws an Error that
// says what was wrong (kSecurity: which name was expected and which the
// certificate holds, revoked, expired, untrusted, no client certificate,
// plaintext peer; kTimeout: no answer; kUsage: bad options); no application
// data has flowed by then.
std::unique_ptr<TlsSession> HandshakeTls(UniqueFd fd, const TlsOptions& opts);

// Turns `policy` into the backend's settings as it would at every
// handshake, so a bad policy (or library_override) is refused at startup,
// not after a peer connected: throws Error(kUsage) naming the setting and
// why the library refused it.
void CheckTlsPolicy(TlsBackend backend, const TlsCryptoPolicy& policy);

// "GnuTLS 3.7.9" for the backend, for reports and `tls-migrate probe`.
std::string TlsLibraryVersion(TlsBackend backend);

// What kTLS the backend's library, as built and linked here, can enable by
// itself, one sentence: "none: Debian builds GnuTLS without kTLS" or
// "TLS 1.2 send and receive, TLS 1.3 send (OpenSSL 3.0 receives TLS 1.3
// in userspace)". Says nothing of the kernel (ktls/ probes that).
std::string TlsLibraryKtlsAbility(TlsBackend backend);

}  // namespace ktm

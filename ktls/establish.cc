#include "ktls/establish.h"

#include "base/error.h"
#include "ktls/ktls.h"
#include "tls/handshake.h"

namespace ktm {

const char* ToString(TlsPathKind k) {
  switch (k) {
    case TlsPathKind::kKtlsByLibrary: return "kTLS (enabled by the TLS library)";
    case TlsPathKind::kKtlsKeyInstall: return "kTLS (keys installed into the kernel)";
    case TlsPathKind::kUserspace: return "userspace TLS";
  }
  return "?";
}

std::string TlsPathReport::Summary() const {
  return version + " " + cipher + ", " + ToString(kind) + " (" + reason + "); zero copy " +
         (zero_copy ? "on" : "off") + (zero_copy_reason.empty() ? "" : " (" + zero_copy_reason + ")");
}

std::unique_ptr<Channel> EstablishTls(UniqueFd fd, const TlsOptions& tls, KtlsMode ktls, ZeroCopyMode zero_copy,
                                      TlsPathReport* report) {
  TlsPathReport local;
  TlsPathReport& r = report ? *report : local;
  if (ktls == KtlsMode::kOff && zero_copy == ZeroCopyMode::kRequire) {
    throw Error(ErrorKind::kUsage, EINVAL,
                "zero copy cannot be required with kTLS off: userspace TLS encrypts into the TLS library's own "
                "buffer and reuses it, so the pages would be copied anyway; allow kTLS or relax the zero-copy "
                "policy",
                Remedy::kAllowKtls);
  }
  // Before the handshake, while the connection is surely ESTABLISHED: see
  // AttachKtlsUlpEarly (a peer's short stream may be complete by the time
  // our handshake returns).
  if (ktls != KtlsMode::kOff) AttachKtlsUlpEarly(fd.get());
  TlsOptions opts = tls;
  opts.allow_library_ktls = ktls != KtlsMode::kOff;
  std::unique_ptr<TlsSession> session = HandshakeTls(std::move(fd), opts);
  r.version = session->version_name();
  r.cipher = session->cipher_name();
  r.peer = session->peer_common_name();

  std::unique_ptr<Channel> ch;
  if (session->library_ktls(TlsDirection::kTransmit) && session->library_ktls(TlsDirection::kReceive)) {
    r.kind = TlsPathKind::kKtlsByLibrary;
    r.reason = "the TLS library enabled kTLS for both directions";
    ch = std::make_unique<KtlsChannel>(std::move(session), KtlsPath::kByLibrary, tls.rekey_after_bytes);
  } else if (ktls == KtlsMode::kOff) {
    r.kind = TlsPathKind::kUserspace;
    r.reason = "kTLS turned off by policy";
  } else {
    std::optional<std::string> why = InstallKtls(*session);
    if (!why) {
      r.kind = TlsPathKind::kKtlsKeyInstall;
      r.reason = "the TLS library in this build has no kTLS; its traffic keys were moved into the kernel";
      ch = std::make_unique<KtlsChannel>(std::move(session), KtlsPath::kKeyInstall, tls.rekey_after_bytes);
    } else if (ktls == KtlsMode::kRequire) {
      throw Error(ErrorKind::kSecurity, EOPNOTSUPP,
                  "kTLS was required but cannot be used: " + *why +
                      "; allow the userspace fallback (kTLS policy auto) or turn kTLS off",
                  Remedy::kKtlsNotRequired);
    } else {
      r.kind = TlsPathKind::kUserspace;
      r.reason = "kTLS unavailable: " + *why;
    }
  }
  if (ch) {
    r.zero_copy = zero_copy != ZeroCopyMode::kOff;
    r.zero_copy_reason = r.zero_copy ? "kernel encrypts from the caller's pages; MSG_ZEROCOPY not used on kTLS"
                                     : "turned off by policy";
    return ch;
  }
  if (zero_copy == ZeroCopyMode::kRequire) {
    throw Error(ErrorKind::kSecurity, EOPNOTSUPP,
                "zero copy was required but this connection runs userspace TLS (" + r.reason +
                    "): the TLS library encrypts into its own buffer and reuses it, so zero copy would send "
                    "garbage; relax the zero-copy policy to auto or off",
                Remedy::kZeroCopyNotRequired);
  }
  r.zero_copy = false;
  r.zero_copy_reason = zero_copy == ZeroCopyMode::kOff
                           ? "turned off by policy"
                           : "userspace TLS copies each record into the TLS library's reused ciphertext buffer";
  return TlsSession::UserspaceChannel(std::move(session), r.reason);
}

}  // namespace ktm

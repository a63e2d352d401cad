#include "ktls/establish.h"

#include <gnutls/socket.h>

#include "ktls/ktls.h"
#include "tls/tls_channel.h"

namespace ktm {

KtlsMode ParseKtlsMode(std::string_view s) {
  if (s == "off") return KtlsMode::kOff;
  if (s == "auto") return KtlsMode::kAuto;
  if (s == "require") return KtlsMode::kRequire;
  throw Error(EINVAL, "invalid kTLS mode '" + std::string(s) + "': use auto, require or off");
}

const char* ToString(KtlsMode m) {
  switch (m) {
    case KtlsMode::kOff: return "off";
    case KtlsMode::kAuto: return "auto";
    case KtlsMode::kRequire: return "require";
  }
  return "?";
}

const char* ToString(TlsPathKind k) {
  switch (k) {
    case TlsPathKind::kKtlsByGnutls: return "kTLS (enabled by GnuTLS)";
    case TlsPathKind::kKtlsKeyInstall: return "kTLS (keys installed into the kernel)";
    case TlsPathKind::kUserspace: return "userspace TLS";
  }
  return "?";
}

std::string TlsPathReport::Summary() const {
  return version + " " + cipher + ", " + ToString(kind) + " (" + reason + "); zero copy " +
         (zero_copy ? "on" : "off") + (zero_copy_reason.empty() ? "" : " (" + zero_copy_reason + ")");
}

std::unique_ptr<Channel> EstablishTls(UniqueFd fd, const TlsOptions& tls, KtlsMode ktls,
                                      ZeroCopyMode zero_copy, TlsPathReport* report) {
  TlsPathReport local;
  TlsPathReport& r = report ? *report : local;
  if (ktls == KtlsMode::kOff && zero_copy == ZeroCopyMode::kRequire) {
    throw Error(EINVAL, "--zero-copy require cannot be met with --ktls off: userspace TLS encrypts "
                        "into GnuTLS's own buffer and reuses it, so the pages would be copied anyway; "
                        "allow kTLS (--ktls auto) or use --zero-copy auto");
  }
  std::unique_ptr<TlsSession> session = TlsSession::Handshake(std::move(fd), tls);
  r.version = session->version_name();
  r.cipher = session->cipher_name();
  r.peer = session->peer_common_name();

  std::unique_ptr<Channel> ch;
  if (tls.qemu_style) {
    r.kind = TlsPathKind::kUserspace;
    r.reason = "QEMU-style anchor: push/pull callbacks, one record per 4 KiB page";
    r.zero_copy = false;
    r.zero_copy_reason = "userspace TLS";
    return std::make_unique<TlsChannel>(std::move(session), r.reason, /*per_page_records=*/true);
  }
  if (gnutls_transport_is_ktls_enabled(session->get()) == GNUTLS_KTLS_DUPLEX) {
    r.kind = TlsPathKind::kKtlsByGnutls;
    r.reason = "GnuTLS enabled kTLS for both directions";
    ch = std::make_unique<KtlsChannel>(std::move(session), KtlsPath::kByGnutls);
  } else if (ktls == KtlsMode::kOff) {
    r.kind = TlsPathKind::kUserspace;
    r.reason = "kTLS turned off (--ktls off)";
  } else {
    std::optional<std::string> why = InstallKtls(*session);
    if (!why) {
      r.kind = TlsPathKind::kKtlsKeyInstall;
      r.reason = "GnuTLS in this build has no kTLS; keys moved from gnutls_record_get_state";
      ch = std::make_unique<KtlsChannel>(std::move(session), KtlsPath::kKeyInstall);
    } else if (ktls == KtlsMode::kRequire) {
      throw Error(EOPNOTSUPP, "kTLS was required but cannot be used: " + *why +
                                  "; use --ktls auto (userspace fallback) or off");
    } else {
      r.kind = TlsPathKind::kUserspace;
      r.reason = "kTLS unavailable: " + *why;
    }
  }
  if (ch) {
    r.zero_copy = zero_copy != ZeroCopyMode::kOff;
    r.zero_copy_reason = r.zero_copy ? "kernel encrypts from the caller's pages; MSG_ZEROCOPY not used on kTLS"
                                     : "turned off (--zero-copy off)";
    return ch;
  }
  if (zero_copy == ZeroCopyMode::kRequire) {
    throw Error(EOPNOTSUPP, "zero copy was required but this connection runs userspace TLS (" + r.reason +
                                "): GnuTLS encrypts into its own buffer and reuses it, so zero copy "
                                "would send garbage; use --zero-copy auto or off");
  }
  r.zero_copy = false;
  r.zero_copy_reason = zero_copy == ZeroCopyMode::kOff
                           ? "turned off (--zero-copy off)"
                           : "userspace TLS copies each record into GnuTLS's reused ciphertext buffer";
  return std::make_unique<TlsChannel>(std::move(session), r.reason);
}

}  // namespace ktm

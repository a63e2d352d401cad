// The one place that decides which channel a TLS connection becomes.
//
//   ktls=off                      -> userspace TLS (reason: off by request)
//   GnuTLS enabled kTLS itself    -> kTLS (by GnuTLS)
//   keys installed into kernel    -> kTLS (key install)
//   install impossible, ktls=auto -> userspace TLS, reason recorded
//   install impossible, require   -> Error with the reason
// Zero copy: kTLS provides it (kernel encrypts from the caller's pages);
// userspace TLS cannot (auto: copy, reason recorded; require: Error).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "channel/channel.h"
#include "channel/policy.h"
#include "channel/unique_fd.h"
#include "tls/tls_session.h"

namespace ktm {

enum class KtlsMode { kOff, kAuto, kRequire };
KtlsMode ParseKtlsMode(std::string_view s);
const char* ToString(KtlsMode m);

enum class TlsPathKind { kKtlsByGnutls, kKtlsKeyInstall, kUserspace };

struct TlsPathReport {
  TlsPathKind kind = TlsPathKind::kUserspace;
  std::string version;   // "TLS1.3"
  std::string cipher;    // "AES-128-GCM"
  std::string reason;    // why this path (always set)
  bool zero_copy = false;
  std::string zero_copy_reason;
  std::string peer;      // peer certificate CN
  std::string Summary() const;
};
const char* ToString(TlsPathKind k);

// Runs the handshake on `fd` (which GnuTLS then owns) and returns the
// channel the policies allow. Throws Error on handshake failure or when a
// `require` policy cannot be met; no application data has flowed then.
std::unique_ptr<Channel> EstablishTls(UniqueFd fd, const TlsOptions& tls, KtlsMode ktls,
                                      ZeroCopyMode zero_copy, TlsPathReport* report);

}  // namespace ktm

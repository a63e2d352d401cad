// The one place that decides which channel a TLS connection becomes.
//
//   ktls=off                      -> userspace TLS (reason: off by policy)
//   the TLS library enabled kTLS  -> kTLS (by the library)
//   keys installed into kernel    -> kTLS (key install)
//   install impossible, ktls=auto -> userspace TLS, reason recorded
//   install impossible, require   -> Error with the reason
// Zero copy: kTLS provides it (kernel encrypts from the caller's pages);
// userspace TLS cannot (auto: copy, reason recorded; require: Error).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "base/policy.h"
#include "base/unique_fd.h"
#include "channel/channel.h"
#include "tls/tls_types.h"

namespace ktm {

enum class TlsPathKind { kKtlsByLibrary, kKtlsKeyInstall, kUserspace };

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

// Runs the handshake on `fd` (which the TLS library then owns) and returns
// the channel the policies allow. Throws Error on handshake failure (see
// HandshakeTls), kSecurity when a `require` policy cannot be met, kUsage when
// the policies contradict each other; no application data has flowed then.
std::unique_ptr<Channel> EstablishTls(UniqueFd fd, const TlsOptions& tls, KtlsMode ktls,
                                      ZeroCopyMode zero_copy, TlsPathReport* report);

}  // namespace ktm

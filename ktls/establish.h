// The one place that decides which channel a TLS connection becomes.
//
//   ktls=off                      -> userspace TLS (reason: off by policy;
//                                    the library is told not to enable kTLS)
//   the library enabled both ways -> kTLS (by the library)
//   the library enabled one way,
//     we install the other        -> kTLS (mixed: OpenSSL 3.0 sends TLS 1.3
//                                    in the kernel, we install receive)
//   we install both               -> kTLS (key install: GnuTLS)
//   install impossible, ktls=auto -> userspace TLS, reason recorded (the
//                                    library keeps any direction it took)
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
#include "ktls/ktls.h"
#include "tls/tls_types.h"

namespace ktm {

// kKtlsMixed: both directions in the kernel, one moved there by the TLS
// library, the other by us (TlsPathReport::owners says which).
enum class TlsPathKind { kKtlsByLibrary, kKtlsKeyInstall, kKtlsMixed, kUserspace };

struct TlsPathReport {
  TlsPathKind kind = TlsPathKind::kUserspace;
  // Who moved each direction into the kernel. Userspace paths may still
  // show a library direction: OpenSSL keeps sending through its own kTLS
  // when we could not install the receive direction.
  KtlsOwnership owners;
  std::string version;   // "TLS1.3"
  std::string cipher;    // "AES-128-GCM"
  std::string reason;    // why this path (always set)
  bool zero_copy = false;
  std::string zero_copy_reason;
  std::string peer;      // peer certificate CN
  // "TLS1.3 AES-128-GCM, kTLS (send enabled by OpenSSL, receive keys
  // installed by us) (why); zero copy on (why)". The both-installed-by-us
  // path keeps its older words, "kTLS (keys installed into the kernel)".
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

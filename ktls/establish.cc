#include "ktls/establish.h"

#include "base/error.h"
#include "ktls/ktls.h"
#include "tls/handshake.h"

namespace ktm {

const char* ToString(TlsPathKind k) {
  switch (k) {
    case TlsPathKind::kKtlsByLibrary: return "kTLS (enabled by the TLS library)";
    case TlsPathKind::kKtlsKeyInstall: return "kTLS (keys installed into the kernel)";
    case TlsPathKind::kKtlsMixed: return "kTLS (one direction enabled by the TLS library, the other installed by us)";
    case TlsPathKind::kUserspace: return "userspace TLS";
  }
  return "?";
}

std::string TlsPathReport::Summary() const {
  // Key install keeps the words README and docs quote; the paths where the
  // library took a direction say who holds each one.
  const std::string path = kind == TlsPathKind::kKtlsByLibrary || kind == TlsPathKind::kKtlsMixed
                               ? "kTLS (" + owners.Describe() + ")"
                               : std::string(ToString(kind));
  return version + " " + cipher + ", " + path + " (" + reason + "); zero copy " + (zero_copy ? "on" : "off") +
         (zero_copy_reason.empty() ? "" : " (" + zero_copy_reason + ")");
}

namespace {

const char* Verb(TlsDirection d) { return d == TlsDirection::kTransmit ? "sending" : "receiving"; }

// Why the session took the kTLS path `o` describes (both directions in the
// kernel), for TlsPathReport::reason.
std::string KtlsReason(const KtlsOwnership& o) {
  const std::string lib = LibraryName(o.library);
  if (o.both_library()) return lib + " enabled kTLS for both directions";
  if (o.both_ours()) {
    // GnuTLS's sentence is quoted by README and docs: unchanged.
    if (o.library == TlsBackend::kGnutls) {
      return "the TLS library in this build has no kTLS; its traffic keys were moved into the kernel";
    }
    return lib + " did not enable kTLS for this session; its traffic keys were moved into the kernel";
  }
  const TlsDirection mine = o.send == KtlsOwner::kLibrary ? TlsDirection::kTransmit : TlsDirection::kReceive;
  const TlsDirection ours = mine == TlsDirection::kTransmit ? TlsDirection::kReceive : TlsDirection::kTransmit;
  return lib + " enabled kTLS for " + Verb(mine) + " only; we moved its " + Verb(ours) + " keys into the kernel";
}

TlsPathKind KindOf(const KtlsOwnership& o) {
  if (o.both_library()) return TlsPathKind::kKtlsByLibrary;
  if (o.both_ours()) return TlsPathKind::kKtlsKeyInstall;
  return TlsPathKind::kKtlsMixed;
}

// What the library moved by itself (kNone elsewhere), before InstallKtls.
KtlsOwnership LibraryOwnership(const TlsSession& s) {
  KtlsOwnership o;
  o.library = s.backend();
  if (s.library_ktls(TlsDirection::kTransmit)) o.send = KtlsOwner::kLibrary;
  if (s.library_ktls(TlsDirection::kReceive)) o.receive = KtlsOwner::kLibrary;
  return o;
}

// The kTLS channel for `session`, or nullptr with r.reason set when the
// session stays in userspace (auto). Throws for require.
std::unique_ptr<Channel> MoveIntoKernel(std::unique_ptr<TlsSession>& session, const TlsOptions& tls, KtlsMode ktls,
                                        TlsPathReport& r) {
  r.owners = LibraryOwnership(*session);
  if (ktls == KtlsMode::kOff) {
    r.kind = TlsPathKind::kUserspace;
    r.reason = "kTLS turned off by policy";
    return nullptr;
  }
  std::optional<std::string> why = InstallKtls(*session);
  if (!why) {
    r.owners = OwnershipAfterInstall(*session);
    r.kind = KindOf(r.owners);
    r.reason = KtlsReason(r.owners);
    return std::make_unique<KtlsChannel>(std::move(session), r.owners, tls.rekey_after_bytes);
  }
  // A direction the library took stays with it, in the userspace channel.
  std::string library_note;
  if (r.owners.send == KtlsOwner::kLibrary || r.owners.receive == KtlsOwner::kLibrary) {
    const char* dirs = r.owners.both_library() ? "sending and receiving"
                       : r.owners.send == KtlsOwner::kLibrary ? "sending" : "receiving";
    library_note = "; " + std::string(LibraryName(r.owners.library)) + " keeps its own kTLS for " + dirs;
  }
  if (ktls == KtlsMode::kRequire) {
    throw Error(ErrorKind::kSecurity, EOPNOTSUPP,
                "kTLS was required but cannot be used: " + *why + library_note +
                    "; allow the userspace fallback (kTLS policy auto) or turn kTLS off",
                Remedy::kKtlsNotRequired);
  }
  r.kind = TlsPathKind::kUserspace;
  r.reason = "kTLS unavailable: " + *why + library_note;
  return nullptr;
}

}  // namespace

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
  // our handshake returns). For OpenSSL too: it attaches the ULP itself
  // when it is given the fd (BIO_new_socket's ktls_enable), ignores the
  // EEXIST it then gets, and later only sets TLS_TX/TLS_RX, which works
  // whoever attached the ULP.
  if (ktls != KtlsMode::kOff) AttachKtlsUlpEarly(fd.get());
  TlsOptions opts = tls;
  opts.allow_library_ktls = ktls != KtlsMode::kOff;
  std::unique_ptr<TlsSession> session = HandshakeTls(std::move(fd), opts);
  r.version = session->version_name();
  r.cipher = session->cipher_name();
  r.peer = session->peer_common_name();

  std::unique_ptr<Channel> ch = MoveIntoKernel(session, tls, ktls, r);
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

#include "cli/exit_codes.h"

#include <cstdio>

namespace ktm::cli {

int ExitCodeFor(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::kUsage: return kExitUsage;
    case ErrorKind::kPeer: return kExitFailed;
    case ErrorKind::kTimeout: return kExitFailed;
    case ErrorKind::kSecurity: return kExitSecurity;
    case ErrorKind::kIntegrity: return kExitIntegrity;
    case ErrorKind::kLocalIo: return kExitLocalIo;
    case ErrorKind::kInternal: return kExitFailed;
  }
  return kExitFailed;
}

const char* FlagAdvice(Remedy r) {
  switch (r) {
    case Remedy::kNone: return "";
    case Remedy::kZeroCopyNotRequired: return "use --zero-copy auto (or off)";
    case Remedy::kZeroCopyOff: return "run with --zero-copy off";
    case Remedy::kKtlsNotRequired: return "use --ktls auto (userspace fallback) or --ktls off";
    case Remedy::kKtlsOff: return "run with --ktls off";
    case Remedy::kAllowKtls: return "allow kTLS (--ktls auto) or use --zero-copy auto";
    case Remedy::kPeerName: return "pass --tls-hostname NAME with a name the certificate holds";
    case Remedy::kCredentials:
      return "pass --tls-creds DIR (or --tls-ca/--tls-cert/--tls-key); 'tls-migrate certs generate' makes a test set";
    case Remedy::kPeerUsesPlaintext: return "is the peer running with --no-tls?";
    case Remedy::kPeerUsesTls: return "drop --no-tls and give TLS credentials (--tls-creds DIR), as the peer has";
    case Remedy::kSendmsgBackend: return "use --backend sendmsg";
    case Remedy::kIoUringBackend: return "add --backend io_uring (and --no-tls)";
  }
  return "";
}

int ReportError(const char* cmd, const Error& e) {
  std::fprintf(stderr, "tls-migrate %s: %s\n", cmd, e.what());
  const char* hint = FlagAdvice(e.remedy());
  if (*hint) std::fprintf(stderr, "  hint: %s\n", hint);
  return ExitCodeFor(e.kind());
}

}  // namespace ktm::cli

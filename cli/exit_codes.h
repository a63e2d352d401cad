// The CLI's one table from library error kinds to exit codes, and the flag
// advice for library remedies (the library itself never names a flag).
#pragma once

#include "base/error.h"

namespace ktm::cli {

enum Exit : int {
  kExitOk = 0,
  kExitFailed = 1,     // peer vanished, reset, timed out, truncated; internal failures
  kExitUsage = 2,      // bad command line
  kExitSecurity = 3,   // certificates, TLS handshake, kTLS/zero-copy policy not satisfiable
  kExitIntegrity = 4,  // forged record, invalid packet, digest mismatch: data was refused
  kExitLocalIo = 5,    // local files and resources: input, output, --json, limits
};

int ExitCodeFor(ErrorKind kind);

// "use --ktls auto or --ktls off" for Remedy::kKtlsNotRequired, "" for kNone.
const char* FlagAdvice(Remedy r);

// Prints "tls-migrate CMD: <message>" (plus a hint line with the flag
// advice, if any) on stderr and returns the exit code for the error.
int ReportError(const char* cmd, const Error& e);

}  // namespace ktm::cli

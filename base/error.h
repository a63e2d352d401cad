// The library's error type: what kind of failure it was (set where it is
// thrown), the errno behind it (0 when none applies), a sentence a user can
// act on, and optionally a remedy in the library's own terms.
//
// Who reads what: a program decides by kind() (retry? report a security
// problem? a local disk problem?); a person reads what(). Front ends (the
// tls-migrate CLI, the C API) turn kind() into an exit code or error code and
// remedy() into advice in their own vocabulary (a flag, a field). Library
// messages therefore never name a command-line flag.
#pragma once

#include <stdexcept>
#include <string>

namespace ktm {

enum class ErrorKind {
  kUsage,      // the caller asked for something invalid (bad option value, bad address)
  kPeer,       // the peer vanished, reset, closed early or truncated the stream
  kTimeout,    // a deadline passed while waiting for the peer
  kSecurity,   // certificates, TLS handshake, a policy (kTLS/zero copy) that cannot be met
  kIntegrity,  // data was refused: forged/corrupted record, invalid packet, digest mismatch
  kLocalIo,    // local files or resources: cannot read input, write output, allocate
  kInternal,   // a bug or an unexpected system failure
};
const char* ToString(ErrorKind k);

// What would fix the failure, in library terms. Front ends translate it.
enum class Remedy {
  kNone,
  kZeroCopyNotRequired,  // set the zero-copy policy to auto or off
  kZeroCopyOff,          // set the zero-copy policy to off (locked-memory/optmem limits)
  kKtlsNotRequired,      // set the kTLS policy to auto (userspace fallback) or off
  kKtlsOff,              // set the kTLS policy to off (userspace TLS)
  kAllowKtls,            // allow kTLS (policy auto): needed for zero copy under TLS
  kPeerName,             // set the name the peer certificate must hold
  kCredentials,          // give credentials (CA, own certificate and key)
  kPeerUsesPlaintext,    // the peer probably runs without TLS
  kPeerUsesTls,          // the peer speaks TLS and we run without it
  kSendmsgBackend,       // use the sendmsg zero-copy backend instead of io_uring
  kIoUringBackend,       // registering buffers needs the io_uring backend
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, int err, const std::string& what, Remedy remedy = Remedy::kNone);
  Error(ErrorKind kind, const std::string& what) : Error(kind, 0, what) {}

  ErrorKind kind() const noexcept { return kind_; }
  // The errno behind the failure, or 0 for protocol/validation errors.
  int code() const noexcept { return code_; }
  Remedy remedy() const noexcept { return remedy_; }

  // The same error with "<prefix>" in front of the sentence (e.g. which
  // channel saw it); kind, errno and remedy are kept.
  Error WithContext(const std::string& prefix) const;

 private:
  ErrorKind kind_;
  int code_;
  Remedy remedy_;
};

// Builds "<what>: <strerror(err)>" for the common syscall-failed case.
[[noreturn]] void ThrowErrno(ErrorKind kind, int err, const std::string& what);

// The kind for a failed socket operation: a reset/closed/refused/unreachable
// peer is kPeer, ETIMEDOUT kTimeout, anything else kInternal.
ErrorKind SocketErrorKind(int err);

}  // namespace ktm

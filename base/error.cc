#include "base/error.h"

#include <cerrno>
#include <cstring>

namespace ktm {

const char* ToString(ErrorKind k) {
  switch (k) {
    case ErrorKind::kUsage: return "usage";
    case ErrorKind::kPeer: return "peer";
    case ErrorKind::kTimeout: return "timeout";
    case ErrorKind::kSecurity: return "security";
    case ErrorKind::kIntegrity: return "integrity";
    case ErrorKind::kLocalIo: return "local-io";
    case ErrorKind::kInternal: return "internal";
  }
  return "?";
}

Error::Error(ErrorKind kind, int err, const std::string& what, Remedy remedy)
    : std::runtime_error(what), kind_(kind), code_(err), remedy_(remedy) {}

Error Error::WithContext(const std::string& prefix) const {
  return Error(kind_, code_, prefix + what(), remedy_);
}

void ThrowErrno(ErrorKind kind, int err, const std::string& what) {
  throw Error(kind, err, what + ": " + std::strerror(err));
}

ErrorKind SocketErrorKind(int err) {
  switch (err) {
    case EPIPE: case ECONNRESET: case ECONNREFUSED: case ECONNABORTED: case ENOTCONN:
    case EHOSTUNREACH: case ENETUNREACH: case EHOSTDOWN: case ENETDOWN: case ENETRESET:
      return ErrorKind::kPeer;
    case ETIMEDOUT:
      return ErrorKind::kTimeout;
    default:
      return ErrorKind::kInternal;
  }
}

}  // namespace ktm

#include "channel/error.h"

#include <cstring>

namespace ktm {

Error::Error(int err, const std::string& what) : std::runtime_error(what), code_(err) {}

void ThrowErrno(int err, const std::string& what) {
  throw Error(err, what + ": " + std::strerror(err));
}

}  // namespace ktm

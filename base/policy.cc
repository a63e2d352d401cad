#include "base/policy.h"

#include <cerrno>

#include "base/error.h"

namespace ktm {

PolicyMode ParsePolicy(std::string_view s, std::string_view what) {
  if (s == "off") return PolicyMode::kOff;
  if (s == "auto") return PolicyMode::kAuto;
  if (s == "require") return PolicyMode::kRequire;
  throw Error(ErrorKind::kUsage, EINVAL,
              "invalid " + std::string(what) + " '" + std::string(s) + "': use auto, require or off");
}

const char* ToString(PolicyMode m) {
  switch (m) {
    case PolicyMode::kOff: return "off";
    case PolicyMode::kAuto: return "auto";
    case PolicyMode::kRequire: return "require";
  }
  return "?";
}

SendBackend ParseSendBackend(std::string_view s) {
  if (s == "sendmsg") return SendBackend::kSendmsg;
  if (s == "io_uring") return SendBackend::kIoUring;
  throw Error(ErrorKind::kUsage, EINVAL,
              "invalid send backend '" + std::string(s) + "': use sendmsg or io_uring");
}

const char* ToString(SendBackend b) { return b == SendBackend::kIoUring ? "io_uring" : "sendmsg"; }

}  // namespace ktm

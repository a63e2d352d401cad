#include "channel/policy.h"

#include "channel/error.h"

namespace ktm {

ZeroCopyMode ParseZeroCopyMode(std::string_view s) {
  if (s == "off") return ZeroCopyMode::kOff;
  if (s == "auto") return ZeroCopyMode::kAuto;
  if (s == "require") return ZeroCopyMode::kRequire;
  throw Error(EINVAL, "invalid zero-copy mode '" + std::string(s) + "': use auto, require or off");
}

const char* ToString(ZeroCopyMode m) {
  switch (m) {
    case ZeroCopyMode::kOff: return "off";
    case ZeroCopyMode::kAuto: return "auto";
    case ZeroCopyMode::kRequire: return "require";
  }
  return "?";
}

}  // namespace ktm

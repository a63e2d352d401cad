// Zero-copy policy, shared by every channel type so it lives in one place.
//   kAuto:    zero copy where it is safe and available; copy otherwise.
//   kRequire: fail at setup, with a sentence saying why, where it cannot be had.
//   kOff:     always copy.
#pragma once

#include <string>
#include <string_view>

namespace ktm {

enum class ZeroCopyMode { kOff, kAuto, kRequire };

// Parses "off" | "auto" | "require"; throws Error naming the accepted values.
ZeroCopyMode ParseZeroCopyMode(std::string_view s);
const char* ToString(ZeroCopyMode m);

}  // namespace ktm

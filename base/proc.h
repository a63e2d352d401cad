// Small readers for /proc and /sys values.
#pragma once

#include <string>

namespace ktm {

// First word of a /proc or /sys file (e.g. a sysctl), or "unknown".
std::string ReadProcValue(const char* path);

}  // namespace ktm

// Small file and time helpers for credentials, neutral (no TLS library):
// used by certs/, both TLS backends' certificate code and the tests.
#pragma once

#include <ctime>
#include <string>

namespace ktm {

// Reads a whole file (throws Error(kLocalIo) naming the file).
std::string ReadFile(const std::string& path);
// Writes a file atomically-enough for our use, with exactly the given mode
// (the umask does not apply: a key must end up 0600).
void WriteFile(const std::string& path, const std::string& data, unsigned mode);

// "2026-12-07 14:00:00 UTC", for error messages about validity dates.
std::string FormatTime(time_t t);

}  // namespace ktm

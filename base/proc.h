// Small readers for /proc and /sys values.
#pragma once

#include <string>

namespace ktm {

// First word of a /proc or /sys file (e.g. a sysctl), or "unknown".
std::string ReadProcValue(const char* path);

// Whether a local TCP socket listens on `port` (/proc/net/tcp{,6}): waits for
// helpers that print nothing when ready (socat, iperf3 -1) without
// connecting to them.
bool TcpPortListening(int port);

}  // namespace ktm

// Policies shared by every layer, with one parser and one printer.
//
// Zero copy and kernel TLS take the same three values:
//   kAuto:    use it where it is safe and available; fall back (and say why) otherwise.
//   kRequire: fail at setup, with a sentence saying why, where it cannot be had.
//   kOff:     never use it.
#pragma once

#include <string>
#include <string_view>

namespace ktm {

enum class PolicyMode { kOff, kAuto, kRequire };
using ZeroCopyMode = PolicyMode;
using KtlsMode = PolicyMode;

// Parses "off" | "auto" | "require"; throws Error(kUsage) naming `what` and
// the accepted values.
PolicyMode ParsePolicy(std::string_view s, std::string_view what);
const char* ToString(PolicyMode m);

// How zero-copy writes on plain sockets reach the kernel.
//   kSendmsg: sendmsg(MSG_ZEROCOPY); completions from the socket error queue.
//   kIoUring: io_uring SENDMSG_ZC / SEND_ZC; completions are notification CQEs.
enum class SendBackend { kSendmsg, kIoUring };
SendBackend ParseSendBackend(std::string_view s);
const char* ToString(SendBackend b);

}  // namespace ktm

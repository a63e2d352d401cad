// What the subcommands of tls-migrate share: the certificate and transport
// flags (their help text, their names and their parsing), the progress bar,
// and the checks of local paths made before any connection.
#pragma once

#include <atomic>
#include <chrono>
#include <set>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "cli/args.h"
#include "transport/migration.h"

namespace ktm::cli {

// Help text of the certificate and transport flags, printed after the
// help of each command that takes them (send, recv, tunnel).
extern const char* const kSecurityHelp;

// Names (without "--") of the certificate and transport flags: those with a
// value and the booleans (which include --quiet and --help).
extern const std::set<std::string> kSecValue;
extern const std::set<std::string> kSecBool;

// The union of two flag sets.
std::set<std::string> Join(std::set<std::string> a, const std::set<std::string>& b);

// The security settings the certificate and transport flags ask for. Prints
// the warnings of dangerous flags and of the credentials on stderr; throws
// Error(kUsage) without credentials unless --no-tls.
// --rekey-after (TlsOptions::rekey_after_bytes): 0 when absent; a size
// with K/M/G of at least kMinRekeyAfter, else Error(kUsage).
inline constexpr uint64_t kMinRekeyAfter = 16384;
uint64_t ParseRekeyAfter(const Args& a);
// The --rekey-after line of the help texts.
extern const char* const kRekeyAfterHelp;

SecurityConfig BuildSecurity(const Args& a, TlsRole role, const std::string& peer_host);

// The TLS policy flags into `o` (whose backend is set): --tls-versions,
// --tls-ciphers, --tls-priority (the backend's own syntax, overriding both)
// and, on a server only, --tls-allow-client (repeatable). Checks the
// result with the backend now (CheckTlsPolicy), so a bad policy is exit 2
// at startup, not a refusal of every peer later. Throws Error(kUsage).
void ApplyTlsPolicyFlags(const Args& a, TlsRole role, TlsOptions& o);

// Which TLS library runs and with what policy, for the reports:
// "TLS library: OpenSSL 3.0.11 19 Sep 2023 (--tls-backend openssl), policy
// TLS1.3,TLS1.2 with AES-128-GCM,...". TlsJson: the same as a JSON object
// (null for --no-tls), the "tls" field of every --json report.
std::string TlsLibraryLine(const SecurityConfig& s);
nlohmann::json TlsJson(const SecurityConfig& s);

// HOST of "HOST:PORT" or "[ADDR]:PORT".
std::string HostOf(const std::string& addr);

// --io-timeout SEC (default 30; 0 = wait forever, as -1 ms).
std::chrono::milliseconds IoTimeout(const Args& a);

// Local files are checked before any connection, so a typo costs nothing:
// --json FILE must be writable (or creatable). Throws Error(kLocalIo).
void CheckJsonPath(const Args& a);

// Writes `j` to --json FILE if given.
void WriteJson(const Args& a, const nlohmann::json& j);

// Draws a progress line on stderr while the migration runs (TTY only).
class ProgressBar {
 public:
  ProgressBar(Progress& p, bool enabled, const char* verb);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

 private:
  Progress& p_;
  std::atomic<bool> stop_{false};
  bool drawn_ = false;
  std::thread t_;
};

}  // namespace ktm::cli

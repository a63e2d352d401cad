// Helpers for tests that run the tls-migrate binary (and the fault relay)
// as separate processes.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "tests/subprocess.h"
#include "tests/test_util.h"

namespace ktm::testing {

// A binary from this build: in Bazel's runfiles, or from $env (the kTLS VM
// harness runs tests outside Bazel and names the binaries).
inline std::string BuiltBinary(const char* env, const std::string& runfile) {
  if (const char* p = getenv(env)) return p;
  const char* srcdir = getenv("TEST_SRCDIR");
  const std::string base = srcdir ? std::string(srcdir) + "/ktls_migrate" : ".";
  return base + "/" + runfile;
}

inline std::string Cli() { return BuiltBinary("KTM_CLI", "cli/tls-migrate"); }
inline std::string Relay() { return BuiltBinary("KTM_RELAY", "tools/fault_relay"); }

// The TLS backend the test binary runs the CLI with: KTM_TEST_TLS_BACKEND
// ("openssl" in the *_openssl targets of tests/backends.bzl), else gnutls.
// (tests/tls_util.h's TestBackendName() says the same, for tests that link
// the library.)
inline std::string CliBackend() {
  const char* b = getenv("KTM_TEST_TLS_BACKEND");
  return b && *b ? b : "gnutls";
}

// `cmd` (a command line that runs Cli(), possibly behind a wrapper such as
// "ip netns exec NS") with "--tls-backend B" after the subcommand, for the
// subcommands that run TLS (send, recv, tunnel, demo, bench), unless it
// already names a backend. B: `backend`, default CliBackend(). So every
// test that spawns the CLI runs it with the backend under test.
inline std::vector<std::string> WithBackend(std::vector<std::string> cmd, const std::string& backend = CliBackend()) {
  for (const std::string& a : cmd) {
    if (a == "--tls-backend" || a.rfind("--tls-backend=", 0) == 0) return cmd;
  }
  const std::string cli = Cli();
  for (size_t i = 0; i + 1 < cmd.size(); ++i) {
    if (cmd[i] != cli) continue;
    const std::string& sub = cmd[i + 1];
    if (sub == "send" || sub == "recv" || sub == "tunnel" || sub == "demo" || sub == "bench") {
      cmd.insert(cmd.begin() + static_cast<std::ptrdiff_t>(i) + 2, {"--tls-backend", backend});
    }
    break;
  }
  return cmd;
}

// Runs the CLI with `args` (backend added by WithBackend).
inline int RunCli(std::vector<std::string> args, std::string* out = nullptr,
                  std::chrono::seconds timeout = std::chrono::seconds(60)) {
  args.insert(args.begin(), Cli());
  args = WithBackend(std::move(args));
  Subprocess p(args);
  int rc = p.Wait(timeout);
  if (out) *out = p.output();
  return rc;
}

inline void GenerateCerts(const std::string& dir, const std::string& host, const std::string& ip) {
  std::string out;
  ASSERT_EQ(RunCli({"certs", "generate", "--out", dir, "--hostname", host, "--ip", ip}, &out), 0) << out;
}

inline bool Has(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }

// KTM_TEST_KTLS=require (the kTLS VM harness): TLS cases need kernel TLS.
inline bool KtlsRequired() {
  const char* v = getenv("KTM_TEST_KTLS");
  return v && std::string(v) == "require";
}

// A creds dir for localhost, made once per test binary under `prefix`.
inline const std::string& SharedPki(const char* prefix) {
  static const std::string dir = [prefix] {
    static TempDir d(prefix);
    GenerateCerts(d.path + "/pki", "localhost", "127.0.0.1");
    return d.path + "/pki";
  }();
  return dir;
}

// The port in the first "... listening on HOST:PORT" line of `out`.
inline std::string ListeningPort(const std::string& out) {
  const auto at = out.find("listening on ");
  if (at == std::string::npos) return "";
  const auto end = out.find_first_of(" \n", at + 13);
  const auto colon = out.rfind(':', end == std::string::npos ? out.size() : end);
  return out.substr(colon + 1, out.find_first_not_of("0123456789", colon + 1) - colon - 1);
}

// Waits until `needle` occurs at least `count` times in the process's output.
inline bool WaitForCount(Subprocess& p, const std::string& needle, size_t count, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::string& out = p.output();
    size_t n = 0;
    for (size_t at = out.find(needle); at != std::string::npos; at = out.find(needle, at + needle.size())) ++n;
    if (n >= count) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// What a tunnel end run with --stream-digest printed per connection
// ("tls-migrate tunnel: connection N done: ...; stream digest up X, down Y"),
// by connection number: {X, Y}.
inline std::map<uint64_t, std::pair<std::string, std::string>> PrintedStreamDigests(const std::string& out) {
  static const std::string kConn = "tunnel: connection ", kUp = "stream digest up ", kDown = ", down ";
  std::map<uint64_t, std::pair<std::string, std::string>> d;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    const auto conn = line.find(kConn), up = line.find(kUp);
    if (conn == std::string::npos || up == std::string::npos) continue;
    const auto down = line.find(kDown, up);
    if (down == std::string::npos) continue;
    const auto up_at = up + kUp.size(), down_at = down + kDown.size(), end = line.find(';', down_at);
    d[std::stoull(line.substr(conn + kConn.size()))] = {
        line.substr(up_at, down - up_at), line.substr(down_at, end == std::string::npos ? end : end - down_at)};
  }
  return d;
}

}  // namespace ktm::testing

// Helpers for tests that run the tls-migrate binary (and the fault relay)
// as separate processes.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <string>
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

inline int RunCli(std::vector<std::string> args, std::string* out = nullptr,
                  std::chrono::seconds timeout = std::chrono::seconds(60)) {
  args.insert(args.begin(), Cli());
  Subprocess p(args);
  int rc = p.Wait(timeout);
  if (out) *out = p.output();
  return rc;
}

inline void GenerateCerts(const std::string& dir, const std::string& host, const std::string& ip) {
  std::string out;
  ASSERT_EQ(RunCli({"certs", "generate", "--out", dir, "--hostname", host, "--ip", ip}, &out), 0) << out;
}

}  // namespace ktm::testing

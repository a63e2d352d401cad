// The library as a C developer gets it (make test runs this through
// scripts/run-package-tests.sh): a DESTDIR-staged `make install`, the C
// example built OUTSIDE Bazel with plain cc and pkg-config only, run over TLS
// and plaintext (and under ASan), the shared library's exported symbols
// against the intended list, and the .deb: lintian without errors,
// installed with apt-get, `tls-migrate probe` from the installed path, the
// example linked against the installed package, then removed.
//
// Env (set by the script): KTM_STAGE (the DESTDIR), KTM_PREFIX, KTM_LIBDIR,
// KTM_DEB (the package), KTM_SRC (the checkout).
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "tests/subprocess.h"

namespace ktm {
namespace {

using namespace std::chrono_literals;

std::string Env(const char* n) {
  const char* v = getenv(n);
  return v ? v : "";
}

// Runs argv (no shell); returns the exit code, output in *out.
int RunCmd(const std::vector<std::string>& argv, std::string* out, std::chrono::seconds timeout = 300s,
        const std::vector<std::string>& env = {}) {
  std::vector<std::string> full = {"env"};
  full.insert(full.end(), env.begin(), env.end());
  full.insert(full.end(), argv.begin(), argv.end());
  testing::Subprocess p(full);
  const int rc = p.Wait(std::chrono::duration_cast<std::chrono::milliseconds>(timeout));
  if (out) *out = p.output();
  return rc;
}

std::vector<std::string> Words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> w;
  for (std::string t; in >> t;) w.push_back(t);
  return w;
}

struct Staged {
  std::string stage = Env("KTM_STAGE"), prefix = Env("KTM_PREFIX"), libdir = Env("KTM_LIBDIR");
  std::vector<std::string> PkgEnv() const {
    return {"PKG_CONFIG_PATH=" + stage + libdir + "/pkgconfig", "PKG_CONFIG_SYSROOT_DIR=" + stage};
  }
  std::vector<std::string> RunEnv() const { return {"LD_LIBRARY_PATH=" + stage + libdir}; }
  // cc ... $(pkg-config --cflags --libs ktls-migrate): what a C developer types.
  std::string BuildExample(const std::string& out, const std::vector<std::string>& extra_flags) const {
    std::string flags;
    EXPECT_EQ(RunCmd({"pkg-config", "--cflags", "--libs", "ktls-migrate"}, &flags, 30s, PkgEnv()), 0) << flags;
    std::vector<std::string> cc = {"cc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-g"};
    cc.insert(cc.end(), extra_flags.begin(), extra_flags.end());
    cc.push_back(Env("KTM_SRC") + "/examples/migrate_self.c");
    for (const auto& w : Words(flags)) cc.push_back(w);
    cc.insert(cc.end(), {"-lpthread", "-o", out});
    std::string log;
    EXPECT_EQ(RunCmd(cc, &log), 0) << log;
    return flags;
  }
};

TEST(Package, PkgConfigGivesTheStagedPaths) {
  Staged s;
  ASSERT_FALSE(s.stage.empty()) << "run through scripts/run-package-tests.sh";
  const std::string flags = s.BuildExample(s.stage + "/migrate_self", {});
  EXPECT_NE(flags.find("-I" + s.stage + s.prefix + "/include"), std::string::npos) << flags;
  EXPECT_NE(flags.find("-lktlsmigrate"), std::string::npos) << flags;
  std::string out;
  EXPECT_EQ(RunCmd({"pkg-config", "--modversion", "ktls-migrate"}, &out, 30s, s.PkgEnv()), 0);
  std::string cli;
  ASSERT_EQ(RunCmd({s.stage + s.prefix + "/bin/tls-migrate", "--version"}, &cli), 0);
  EXPECT_NE(cli.find(Words(out).at(0)), std::string::npos) << cli << " vs " << out;
  // The man page, from the real --help texts.
  std::string man;
  ASSERT_EQ(RunCmd({"sh", "-c", "zcat " + s.stage + s.prefix + "/share/man/man1/tls-migrate.1.gz"}, &man), 0);
  for (const char* w : {".TH TLS-MIGRATE", "--tls-creds", "--max-downtime", "--tls-listen"}) {
    EXPECT_NE(man.find(w), std::string::npos) << w;
  }
}

class Example : public ::testing::TestWithParam<const char*> {};

// The C example over TLS and plaintext: its region, rewritten while it
// moves, arrives equal (FNV-1a of both memories, and both digests).
TEST_P(Example, MigratesItsOwnMemoryWhileWritingIt) {
  Staged s;
  const std::string bin = s.stage + "/migrate_self";
  if (access(bin.c_str(), X_OK) != 0) s.BuildExample(bin, {});
  std::vector<std::string> args = {bin};
  if (std::string(GetParam()) == "plaintext") args.push_back("--no-tls");
  std::string out;
  ASSERT_EQ(RunCmd(args, &out, 120s, s.RunEnv()), 0) << out;
  EXPECT_NE(out.find("verification: OK"), std::string::npos) << out;
  EXPECT_NE(out.find(std::string(GetParam()) == "plaintext" ? "plaintext (TLS off)" : "TLS1.3"), std::string::npos)
      << out;
  EXPECT_EQ(out.find("iteration(s), 0 MiB"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(TlsAndPlaintext, Example, ::testing::Values("tls", "plaintext"));

TEST(Package, ExampleUnderAddressSanitizer) {
  Staged s;
  const std::string bin = s.stage + "/migrate_self_asan";
  s.BuildExample(bin, {"-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"});
  std::vector<std::string> env = s.RunEnv();
  env.push_back("ASAN_OPTIONS=detect_leaks=1:abort_on_error=1");
  std::string out;
  ASSERT_EQ(RunCmd({bin, "--size-mib", "16"}, &out, 300s, env), 0) << out;
  EXPECT_NE(out.find("verification: OK"), std::string::npos) << out;
  EXPECT_EQ(out.find("ERROR: AddressSanitizer"), std::string::npos) << out;
}

// Only the C API leaves the shared library, under its version node.
TEST(Package, SharedLibraryExportsExactlyTheCApi) {
  Staged s;
  const std::string so = s.stage + s.libdir + "/libktlsmigrate.so.0";
  std::string out;
  ASSERT_EQ(RunCmd({"nm", "-D", "--defined-only", so}, &out), 0) << out;
  std::set<std::string> got;
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    const auto w = Words(line);
    if (w.size() >= 3) got.insert(w[2].substr(0, w[2].find('@')));
  }
  // Every function declared in the header, nothing else.
  std::ifstream h(Env("KTM_SRC") + "/include/ktls_migrate.h");
  std::string header((std::istreambuf_iterator<char>(h)), {});
  std::set<std::string> want = {"KTLSMIGRATE_0"};  // the version node itself
  for (size_t at = 0; (at = header.find("ktm_", at)) != std::string::npos;) {
    size_t end = at;
    while (end < header.size() && (isalnum(static_cast<unsigned char>(header[end])) || header[end] == '_')) ++end;
    const std::string name = header.substr(at, end - at);
    if (end < header.size() && header[end] == '(' && name != "ktm_release_fn" && name != "ktm_progress_fn") {
      want.insert(name);
    }
    at = end;
  }
  EXPECT_EQ(got, want);
  EXPECT_GE(want.size(), 50u);
  std::string soname;
  ASSERT_EQ(RunCmd({"readelf", "-d", so}, &soname), 0);
  EXPECT_NE(soname.find("Library soname: [libktlsmigrate.so.0]"), std::string::npos) << soname;
  std::printf("  libktlsmigrate.so.0 exports %zu symbols (%zu functions + the version node)\n", got.size(),
              got.size() - 1);
}

TEST(Package, DebHasNoLintianErrorsInstallsAndRuns) {
  Staged s;
  const std::string deb = Env("KTM_DEB");
  ASSERT_FALSE(deb.empty());
  std::string out;
  const int rc = RunCmd({"lintian", "--tag-display-limit", "0", deb}, &out, 600s);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(out.find("\nE: "), std::string::npos) << out;
  EXPECT_NE(out.rfind("E: ", 0), 0u) << out;
  std::printf("  lintian: %s\n", out.empty() ? "clean" : out.c_str());
  if (geteuid() != 0) GTEST_SKIP() << "installing the package needs root";
  ASSERT_EQ(RunCmd({"apt-get", "install", "-y", "-q", "--no-install-recommends", deb}, &out, 600s,
                {"DEBIAN_FRONTEND=noninteractive"}),
            0)
      << out;
  std::string probe;
  const int probe_rc = RunCmd({"/usr/bin/tls-migrate", "probe"}, &probe);
  // A C program against the installed package: pkg-config alone.
  std::string flags, log;
  const int pc_rc = RunCmd({"pkg-config", "--cflags", "--libs", "ktls-migrate"}, &flags);
  std::vector<std::string> cc = {"cc", "-std=c99", Env("KTM_SRC") + "/examples/migrate_self.c"};
  for (const auto& w : Words(flags)) cc.push_back(w);
  const std::string bin = s.stage + "/migrate_self_installed";
  cc.insert(cc.end(), {"-lpthread", "-o", bin});
  const int cc_rc = RunCmd(cc, &log);
  std::string run;
  const int run_rc = cc_rc == 0 ? RunCmd({bin, "--no-tls", "--size-mib", "16"}, &run) : -1;
  std::string rm;
  EXPECT_EQ(RunCmd({"dpkg", "-r", "ktls-migrate"}, &rm, 300s), 0) << rm;
  EXPECT_EQ(probe_rc, 0) << probe;
  EXPECT_NE(probe.find("kernel TLS"), std::string::npos) << probe;
  EXPECT_EQ(pc_rc, 0) << flags;
  EXPECT_EQ(cc_rc, 0) << log;
  EXPECT_EQ(run_rc, 0) << run;
  EXPECT_NE(run.find("verification: OK"), std::string::npos) << run;
  EXPECT_NE(access("/usr/bin/tls-migrate", F_OK), 0) << "still there after dpkg -r";
}

}  // namespace
}  // namespace ktm

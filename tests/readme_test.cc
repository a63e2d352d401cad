// The README quotes what the code prints and names what the Makefile runs;
// these checks fail when the two drift apart (the status paragraph and the
// samples were wrong for weeks without anything noticing).
#include <gtest/gtest.h>

#include <cctype>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "cli/exit_codes.h"
#include "tests/cli_util.h"

namespace {

std::string Slurp(const char* path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "--flag" starting at `at` of `text` (lowercase, digits, dashes); empty if
// none or if it runs into an underscore (Bazel's flags, not ours).
std::string FlagAt(const std::string& text, size_t at) {
  size_t end = at + 2;
  while (end < text.size() && (std::islower(static_cast<unsigned char>(text[end])) ||
                               std::isdigit(static_cast<unsigned char>(text[end])) || text[end] == '-')) {
    ++end;
  }
  if (end == at + 2 || (end < text.size() && text[end] == '_')) return "";
  return text.substr(at, end - at);
}

// Every flag advice the CLI can print, as it prints it.
std::set<std::string> PrintedHints() {
  std::set<std::string> hints;
  for (int r = 0; r <= static_cast<int>(ktm::Remedy::kIoUringBackend); ++r) {
    std::string advice = ktm::cli::FlagAdvice(static_cast<ktm::Remedy>(r));
    if (!advice.empty()) hints.insert("hint: " + advice);
  }
  return hints;
}

TEST(Readme, EveryQuotedHintIsOneTheCliPrints) {
  const std::string readme = Slurp("README.md");
  ASSERT_FALSE(readme.empty());
  const std::set<std::string> hints = PrintedHints();
  std::istringstream lines(readme);
  std::string line;
  int quoted = 0;
  while (std::getline(lines, line)) {
    auto at = line.find("hint: ");
    // Sample output lines start with the hint (indented); prose that quotes
    // one puts it in backticks.
    if (at == std::string::npos) continue;
    std::string hint = line.substr(at);
    if (auto tick = hint.find('`'); tick != std::string::npos) hint.resize(tick);
    while (!hint.empty() && (hint.back() == ' ' || hint.back() == '.')) hint.pop_back();
    if (hint == "hint:") continue;  // prose that names a hint without quoting one
    ++quoted;
    EXPECT_TRUE(hints.count(hint)) << "README quotes a hint the CLI never prints: '" << hint << "'";
  }
  EXPECT_GE(quoted, 3) << "the README's sample hints were not found";
}

TEST(Readme, EveryMakeTargetItNamesExists) {
  const std::string readme = Slurp("README.md");
  const std::string makefile = Slurp("Makefile");
  ASSERT_FALSE(makefile.empty());
  // std::regex is avoided: GCC 12 warns inside <regex> under the sanitizer configs.
  int named = 0;
  for (size_t at = readme.find("`make "); at != std::string::npos; at = readme.find("`make ", at + 1)) {
    size_t begin = at + 6, end = begin;
    while (end < readme.size() && (std::islower(static_cast<unsigned char>(readme[end])) ||
                                   std::isdigit(static_cast<unsigned char>(readme[end])) || readme[end] == '-')) {
      ++end;
    }
    const std::string target = readme.substr(begin, end - begin);
    if (target.empty()) continue;
    ++named;
    const bool defined = makefile.rfind(target + ":", 0) == 0 || makefile.find("\n" + target + ":") != std::string::npos;
    EXPECT_TRUE(defined) << "README names `make " << target << "`, the Makefile has no such target";
  }
  EXPECT_GE(named, 10);
}

// Every `--flag` the README shows for tls-migrate (in backticks, or on a
// line that runs tls-migrate) is one some subcommand's --help lists. Lines
// about other tools (pkg-config, bazel, QEMU, socat, openssl, gnutls) and
// Bazel's underscore flags are not ours.
TEST(Readme, EveryTlsMigrateFlagItNamesExists) {
  std::string help;
  for (std::vector<std::string> sub : std::vector<std::vector<std::string>>{
           {}, {"send"}, {"recv"}, {"tunnel"}, {"certs", "generate"}, {"probe"}, {"demo"}, {"bench"}}) {
    sub.push_back("--help");
    std::string out;
    ASSERT_EQ(ktm::testing::RunCli(sub, &out), 0) << out;
    help += out;
  }
  std::set<std::string> known;
  for (size_t at = help.find("--"); at != std::string::npos; at = help.find("--", at + 2)) {
    if (std::string flag = FlagAt(help, at); !flag.empty()) known.insert(flag);
  }
  const std::string readme = Slurp("README.md");
  std::istringstream lines(readme);
  std::string line;
  int checked = 0;
  for (int n = 1; std::getline(lines, line); ++n) {
    bool runs_us = line.find("tls-migrate") != std::string::npos;
    for (const char* other : {"pkg-config", "bazel", "qemu-system", "socat", "openssl", "gnutls-"}) {
      if (line.find(other) != std::string::npos) runs_us = false;
    }
    for (size_t at = line.find("--"); at != std::string::npos; at = line.find("--", at + 2)) {
      const bool in_ticks = at > 0 && line[at - 1] == '`';
      if (!runs_us && !in_ticks) continue;
      const std::string flag = FlagAt(line, at);
      if (flag.empty()) continue;
      ++checked;
      EXPECT_TRUE(known.count(flag)) << "README.md:" << n << " names " << flag
                                                    << ", which no tls-migrate --help lists";
    }
  }
  EXPECT_GE(checked, 50);
}

TEST(Readme, StatusDoesNotCallLandedWorkUnstarted) {
  const std::string readme = Slurp("README.md");
  const auto status = readme.find("Status:");
  ASSERT_NE(status, std::string::npos);
  const std::string para = readme.substr(status, readme.find("\n\n", status) - status);
  // Landed: the C API (include/ktls_migrate.h), packaging (make deb), the
  // file path (the durable file destination).
  EXPECT_EQ(para.find("Not started"), std::string::npos) << para;
  EXPECT_NE(para.find("C API"), std::string::npos) << para;
}

}  // namespace

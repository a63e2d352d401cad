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

namespace {

std::string Slurp(const char* path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
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
    if (hint == "hint: ") continue;
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

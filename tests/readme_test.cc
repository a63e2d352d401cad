// README.md and docs/*.md quote what the code prints and name what the
// Makefile and the CLI accept; these checks fail when they drift apart (the
// status paragraph and the samples were wrong for weeks without anything
// noticing). Every failure names the file, the line and what is missing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli/exit_codes.h"
#include "tests/cli_util.h"

namespace {

struct Doc {
  std::string path;  // as the reader knows it: README.md, docs/design.md
  std::string text;
};

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> Lines(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// README.md and every docs/*.md in the runfiles (the //:docs filegroup).
std::vector<Doc> Docs() {
  std::vector<Doc> docs{{"README.md", Slurp("README.md")}};
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("docs", ec)) {
    if (entry.path().extension() == ".md") names.push_back("docs/" + entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  for (const auto& name : names) docs.push_back({name, Slurp(name)});
  return docs;
}

bool IsFlagChar(char c) {
  return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '-';
}

// "--flag" starting at `at` of `text` (lowercase, digits, dashes); empty if
// none or if it runs into an underscore (Bazel's flags, not ours).
std::string FlagAt(const std::string& text, size_t at) {
  size_t end = at + 2;
  while (end < text.size() && IsFlagChar(text[end])) ++end;
  if (end == at + 2 || (end < text.size() && text[end] == '_')) return "";
  return text.substr(at, end - at);
}

std::set<std::string> FlagsIn(const std::string& text) {
  std::set<std::string> flags;
  for (size_t at = text.find("--"); at != std::string::npos; at = text.find("--", at + 2)) {
    if (std::string flag = FlagAt(text, at); !flag.empty()) flags.insert(flag);
  }
  return flags;
}

// The subcommands and the flags each one's --help lists; "" is the overview.
const std::map<std::string, std::set<std::string>>& HelpFlags() {
  static const std::map<std::string, std::set<std::string>> flags = [] {
    std::map<std::string, std::set<std::string>> m;
    for (const char* sub : {"", "send", "recv", "tunnel", "certs generate", "probe", "demo", "bench"}) {
      std::vector<std::string> args;
      std::istringstream words(sub);
      for (std::string w; words >> w;) args.push_back(w);
      args.push_back("--help");
      std::string out;
      EXPECT_EQ(ktm::testing::RunCli(args, &out), 0) << "tls-migrate " << sub << " --help: " << out;
      m[sub] = FlagsIn(out);
      m[sub].insert("--help");
    }
    return m;
  }();
  return flags;
}

bool InSomeHelp(const std::string& flag) {
  for (const auto& [sub, flags] : HelpFlags()) {
    if (flags.count(flag)) return true;
  }
  return false;
}

// The subcommand of the nearest "tls-migrate SUB" before `at` on `line`
// ("certs generate" for certs); "" when there is none or the words after
// tls-migrate are not a command (output such as "tls-migrate tunnel: ...").
std::string SubcommandBefore(const std::string& line, size_t at) {
  const size_t cmd = line.rfind("tls-migrate ", at);
  if (cmd == std::string::npos) return "";
  std::istringstream words(line.substr(cmd + 12, at - cmd - 12));
  std::string first, second;
  words >> first >> second;
  if (first == "certs") return second == "generate" ? "certs generate" : "";
  if (first == "send" || first == "recv" || first == "tunnel" || first == "probe" || first == "demo" ||
      first == "bench") {
    return first;
  }
  return "";
}

// Lines about other tools name their flags, not ours.
bool NamesOtherTool(const std::string& line) {
  for (const char* other : {"pkg-config", "bazel", "qemu-system", "socat", "openssl", "gnutls-", "iperf3"}) {
    if (line.find(other) != std::string::npos) return true;
  }
  return false;
}

// Make targets defined in the Makefile ("target:" at a line start).
std::set<std::string> MakeTargets() {
  std::set<std::string> targets;
  for (const std::string& line : Lines(Slurp("Makefile"))) {
    size_t end = 0;
    while (end < line.size() && IsFlagChar(line[end])) ++end;
    if (end > 0 && end < line.size() && line[end] == ':' && (end + 1 == line.size() || line[end + 1] != '=')) {
      targets.insert(line.substr(0, end));
    }
  }
  return targets;
}

// The first word at or after `b` that is not an option ("-n TARGET"):
// make's options come before the target.
size_t SkipMakeOptions(const std::string& s, size_t b) {
  while (b != std::string::npos && s[b] == '-') {
    const size_t space = s.find(' ', b);
    b = space == std::string::npos ? std::string::npos : s.find_first_not_of(' ', space);
  }
  return b;
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

TEST(Docs, AllAreThere) {
  std::set<std::string> found;
  for (const Doc& d : Docs()) {
    EXPECT_FALSE(d.text.empty()) << d.path << " is empty or unreadable";
    found.insert(d.path);
  }
  for (const char* name : {"README.md", "docs/design.md", "docs/qemu.md", "docs/c-api.md", "docs/benchmarks.md",
                           "docs/testing.md", "docs/operations.md"}) {
    EXPECT_TRUE(found.count(name)) << name << " is not among the test's data (//:docs)";
  }
}

TEST(Docs, EveryQuotedHintIsOneTheCliPrints) {
  const std::set<std::string> hints = PrintedHints();
  int quoted = 0;
  for (const Doc& d : Docs()) {
    const std::vector<std::string> lines = Lines(d.text);
    for (size_t n = 0; n < lines.size(); ++n) {
      auto at = lines[n].find("hint: ");
      // Sample output lines start with the hint (indented); prose that
      // quotes one puts it in backticks.
      if (at == std::string::npos) continue;
      std::string hint = lines[n].substr(at);
      if (auto tick = hint.find('`'); tick != std::string::npos) hint.resize(tick);
      while (!hint.empty() && (hint.back() == ' ' || hint.back() == '.')) hint.pop_back();
      if (hint == "hint:") continue;  // prose that names a hint without quoting one
      ++quoted;
      EXPECT_TRUE(hints.count(hint)) << d.path << ":" << n + 1 << " quotes a hint the CLI never prints: '" << hint
                                     << "'";
    }
  }
  EXPECT_GE(quoted, 3) << "the documents' sample hints were not found";
}

// `make X` in backticks (also wrapped: "`make\nX`") and "make X" at the
// start of a line inside a fenced block.
TEST(Docs, EveryMakeTargetNamedExists) {
  const std::set<std::string> targets = MakeTargets();
  ASSERT_GE(targets.size(), 10u) << "Makefile not found or not parsed";
  int named = 0;
  for (const Doc& d : Docs()) {
    const std::vector<std::string> lines = Lines(d.text);
    bool fenced = false;
    for (size_t n = 0; n < lines.size(); ++n) {
      const std::string& line = lines[n];
      if (line.rfind("```", 0) == 0) fenced = !fenced;
      std::vector<std::string> named_here;
      for (size_t at = line.find("`make"); at != std::string::npos; at = line.find("`make", at + 1)) {
        size_t begin = at + 5;
        std::string rest = line.substr(begin);
        if (rest.empty() && n + 1 < lines.size()) {
          rest = lines[n + 1];  // "`make" ends the line; the target starts the next
        } else if (rest[0] != ' ') {
          continue;
        }
        size_t b = SkipMakeOptions(rest, rest.find_first_not_of(' ')), e = b;
        while (e < rest.size() && IsFlagChar(rest[e])) ++e;
        if (b != std::string::npos && e > b) named_here.push_back(rest.substr(b, e - b));
      }
      if (fenced && line.rfind("make ", 0) == 0) {
        size_t e = 5;
        while (e < line.size() && IsFlagChar(line[e])) ++e;
        if (e > 5) named_here.push_back(line.substr(5, e - 5));
      }
      for (const std::string& target : named_here) {
        ++named;
        EXPECT_TRUE(targets.count(target))
            << d.path << ":" << n + 1 << " names `make " << target << "`, the Makefile has no target '" << target
            << "'";
      }
    }
  }
  EXPECT_GE(named, 15);
}

// A flag on a line that runs "tls-migrate SUB" must be in SUB's --help; a
// flag alone in backticks, or on a line about tls-migrate without a
// subcommand, in some subcommand's --help.
TEST(Docs, EveryTlsMigrateFlagNamedExists) {
  int checked = 0, per_command = 0;
  for (const Doc& d : Docs()) {
    const std::vector<std::string> lines = Lines(d.text);
    for (size_t n = 0; n < lines.size(); ++n) {
      const std::string& line = lines[n];
      const bool about_us = line.find("tls-migrate") != std::string::npos && !NamesOtherTool(line);
      for (size_t at = line.find("--"); at != std::string::npos; at = line.find("--", at + 2)) {
        const std::string flag = FlagAt(line, at);
        if (flag.empty() || (at > 0 && line[at - 1] == '-')) continue;
        const std::string sub = NamesOtherTool(line) ? "" : SubcommandBefore(line, at);
        if (!sub.empty()) {
          ++checked, ++per_command;
          EXPECT_TRUE(HelpFlags().at(sub).count(flag))
              << d.path << ":" << n + 1 << " uses " << flag << " with `tls-migrate " << sub
              << "`, which `tls-migrate " << sub << " --help` does not list";
          continue;
        }
        const bool in_ticks = at > 0 && line[at - 1] == '`';
        if (!in_ticks && !about_us) continue;
        ++checked;
        EXPECT_TRUE(InSomeHelp(flag)) << d.path << ":" << n + 1 << " names " << flag
                                      << ", which no tls-migrate --help lists";
      }
    }
  }
  EXPECT_GE(checked, 100);
  EXPECT_GE(per_command, 20);
}

// The command lines of the README's Quick start, from its fenced blocks.
std::vector<std::pair<int, std::string>> QuickStartCommands(const std::string& readme) {
  std::vector<std::pair<int, std::string>> commands;
  const std::vector<std::string> lines = Lines(readme);
  bool in_section = false, fenced = false;
  for (size_t n = 0; n < lines.size(); ++n) {
    const std::string& line = lines[n];
    if (line.rfind("## ", 0) == 0) in_section = line.rfind("## Quick start", 0) == 0;
    if (!in_section) continue;
    if (line.rfind("```", 0) == 0) {
      fenced = !fenced;
      continue;
    }
    std::string cmd = line.substr(0, line.find('#'));
    while (!cmd.empty() && std::isspace(static_cast<unsigned char>(cmd.back()))) cmd.pop_back();
    cmd.erase(0, cmd.find_first_not_of(' '));
    if (fenced && !cmd.empty()) commands.emplace_back(static_cast<int>(n + 1), cmd);
  }
  return commands;
}

// Each Quick start line parses: `make X` dry-runs against the Makefile,
// `tls-migrate SUB --flags` names a subcommand and flags it accepts.
TEST(Readme, QuickStartCommandsParse) {
  const auto commands = QuickStartCommands(Slurp("README.md"));
  std::set<std::string> seen;
  for (const auto& [n, cmd] : commands) {
    seen.insert(cmd);
    std::istringstream words(cmd);
    std::vector<std::string> argv;
    for (std::string w; words >> w;) argv.push_back(w);
    if (argv[0] == "make") {
      ktm::testing::Subprocess make({"make", "-n", "-f", "Makefile", argv.size() > 1 ? argv[1] : ""});
      const int rc = make.Wait(std::chrono::seconds(60));
      EXPECT_EQ(rc, 0) << "README.md:" << n << ": `" << cmd << "`: make -n exits " << rc << ": " << make.output();
    } else if (argv[0] == "tls-migrate") {
      const std::string sub = SubcommandBefore(cmd + " ", cmd.size());
      ASSERT_FALSE(sub.empty()) << "README.md:" << n << ": `" << cmd << "` names no tls-migrate subcommand";
      for (const std::string& flag : FlagsIn(cmd)) {
        EXPECT_TRUE(HelpFlags().at(sub).count(flag))
            << "README.md:" << n << ": `" << cmd << "`: `tls-migrate " << sub << " --help` does not list " << flag;
      }
    } else {
      ADD_FAILURE() << "README.md:" << n << ": the Quick start holds `" << cmd
                    << "`; only make and tls-migrate lines can be checked";
    }
  }
  EXPECT_TRUE(seen.count("make demo")) << "the Quick start's shell block lost `make demo`";
  EXPECT_TRUE(seen.count("make test")) << "the Quick start's shell block lost `make test`";
}

TEST(Readme, StatusIsTrue) {
  const std::string readme = Slurp("README.md");
  const auto status = readme.find("Status:");
  ASSERT_NE(status, std::string::npos);
  const std::string para = readme.substr(status, readme.find("\n\n", status) - status);
  // Landed: the C API (include/ktls_migrate.h), the tunnel, packaging, key
  // updates (issue 19), the OpenSSL backend (issue 20), QEMU 10 and
  // postcopy (issue 21). No issue is open.
  EXPECT_EQ(para.find("Not started"), std::string::npos) << para;
  for (const char* landed : {"C API", "tls-migrate tunnel", "Debian package", "key updates", "OpenSSL", "10.0",
                             "postcopy"}) {
    EXPECT_NE(para.find(landed), std::string::npos) << "status lacks '" << landed << "': " << para;
  }
  for (const char* resolved : {"issue 19", "issue 20", "issue 21", "Open:"}) {
    EXPECT_EQ(para.find(resolved), std::string::npos) << resolved << " is resolved: " << para;
  }
}

}  // namespace

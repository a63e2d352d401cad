// The library's vocabulary is its own, and each TLS library stays behind
// its backend:
// - no header of the neutral layers (base/, channel/, certs/, tls/*.h,
//   ktls/, transport/, util/, include/) pulls in a GnuTLS or OpenSSL header
//   (or liburing's), directly or through another header: checked with the
//   real preprocessor on the real headers;
// - in the source tree, GnuTLS headers and gnutls_ calls appear only under
//   tls/gnutls/, OpenSSL's TLS headers (ssl.h ...) and SSL_ calls only under
//   tls/openssl/ (tests/ excepted: tests drive each library directly).
//   libcrypto (X509, EVP) is not a TLS backend and may be used anywhere.
#include <gtest/gtest.h>
#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

// Preprocesses `header` (relative to the workspace root) and returns every
// file the preprocessor entered, one per line marker.
std::string IncludedFiles(const std::string& header) {
  const std::string cmd = "g++ -std=c++20 -D_GNU_SOURCE -I. -E -x c++ " + header + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "popen failed";
  std::string out, line;
  char buf[4096];
  while (fgets(buf, sizeof(buf), p)) {
    line = buf;
    if (line.rfind("# ", 0) == 0 || line.find("error") != std::string::npos) out += line;
  }
  const int rc = pclose(p);
  if (rc != 0) out += "PREPROCESSOR FAILED (" + std::to_string(rc) + ")\n";
  return out;
}

bool Mentions(const std::string& files, const std::string& what) { return files.find(what) != std::string::npos; }

// The directories whose headers are neutral (tls/ itself, not its backends).
const std::vector<std::string> kNeutralDirs = {"base", "channel", "certs", "tls",
                                               "ktls", "transport", "util", "include"};

// Every .h of the neutral directories present in the runfiles (BUILD's data
// lists their `headers` filegroups): new headers are checked without
// editing this list.
std::vector<std::string> NeutralHeaders() {
  std::vector<std::string> out;
  for (const auto& dir : kNeutralDirs) {
    if (!fs::is_directory(dir)) continue;
    for (const auto& e : fs::directory_iterator(dir)) {
      if (e.path().extension() == ".h") out.push_back(e.path().string());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

TEST(PublicHeaders, NoTlsLibraryOrLiburingHeaderInTheNeutralLayers) {
  const std::vector<std::string> headers = NeutralHeaders();
  // The list is found, not written down: make sure it found the layers.
  for (const char* must : {"certs/credentials.h", "certs/generate.h", "tls/tls_types.h", "tls/tls_session.h",
                           "tls/handshake.h", "ktls/establish.h", "include/ktls_migrate.h"}) {
    EXPECT_NE(std::find(headers.begin(), headers.end(), must), headers.end()) << must << " not in the runfiles";
  }
  for (const auto& h : headers) {
    const std::string files = IncludedFiles(h);
    ASSERT_FALSE(Mentions(files, "PREPROCESSOR FAILED")) << h << "\n" << files;
    EXPECT_FALSE(Mentions(files, "gnutls/")) << h << " pulls in a GnuTLS header";
    EXPECT_FALSE(Mentions(files, "openssl/")) << h << " pulls in an OpenSSL header";
    // uring_sender.h is the io_uring sender itself.
    if (h != "channel/uring_sender.h") {
      EXPECT_FALSE(Mentions(files, "liburing")) << h << " pulls in liburing";
    }
  }
}

// The check can fail: the backend's own headers do include them.
TEST(PublicHeaders, TheCheckSeesBackendHeaders) {
  EXPECT_TRUE(Mentions(IncludedFiles("tls/gnutls/gnutls_session.h"), "gnutls/gnutls.h"));
  EXPECT_TRUE(Mentions(IncludedFiles("tls/openssl/openssl_session.h"), "openssl/ssl.h"));
  EXPECT_TRUE(Mentions(IncludedFiles("channel/uring_sender.h"), "liburing.h"));
}

// --- the source tree ---

// `text` without comments and string/character literals (raw strings
// included), so a comment naming gnutls_record_get_state() or a help text
// quoting SSL_OP_ENABLE_KTLS is not a use. Newlines are kept.
std::string StripCommentsAndLiterals(const std::string& text) {
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  auto ident = [](char c) { return isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (size_t i = 0; i < n;) {
    const char c = text[i];
    if (c == '/' && i + 1 < n && text[i + 1] == '/') {
      while (i < n && text[i] != '\n') ++i;
    } else if (c == '/' && i + 1 < n && text[i + 1] == '*') {
      const size_t end = text.find("*/", i + 2);
      for (size_t j = i; j < std::min(n, end == std::string::npos ? n : end + 2); ++j) {
        if (text[j] == '\n') out += '\n';
      }
      i = end == std::string::npos ? n : end + 2;
    } else if (c == 'R' && i + 1 < n && text[i + 1] == '"' && (i == 0 || !ident(text[i - 1]))) {
      const size_t open = text.find('(', i + 2);
      if (open == std::string::npos) break;
      const std::string close = ")" + text.substr(i + 2, open - i - 2) + "\"";
      const size_t end = text.find(close, open);
      i = end == std::string::npos ? n : end + close.size();
      out += "\"\"";
    } else if (c == '"' || c == '\'') {
      size_t j = i + 1;
      while (j < n && text[j] != c && text[j] != '\n') j += text[j] == '\\' ? 2 : 1;
      i = j + 1;
      out += "\"\"";
    } else {
      out += c;
      ++i;
    }
  }
  return out;
}

// Identifiers beginning with `prefix` that are called ("gnutls_init(").
std::set<std::string> CallsWithPrefix(const std::string& code, const std::string& prefix) {
  std::set<std::string> out;
  auto ident = [](char c) { return isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (size_t i = code.find(prefix); i != std::string::npos; i = code.find(prefix, i + 1)) {
    if (i > 0 && ident(code[i - 1])) continue;
    size_t j = i;
    while (j < code.size() && ident(code[j])) ++j;
    size_t k = j;
    while (k < code.size() && (code[k] == ' ' || code[k] == '\t' || code[k] == '\n')) ++k;
    if (k < code.size() && code[k] == '(') out.insert(code.substr(i, j - i));
  }
  return out;
}

// "#include <gnutls/...>" style lines naming a header under `dir`.
std::set<std::string> AngleIncludes(const std::string& code, const std::string& dir) {
  std::set<std::string> out;
  std::istringstream in(code);
  std::string line;
  while (std::getline(in, line)) {
    const size_t hash = line.find_first_not_of(" \t");
    if (hash == std::string::npos || line[hash] != '#' || line.find("include") == std::string::npos) continue;
    const size_t lt = line.find('<');
    if (lt != std::string::npos && line.compare(lt + 1, dir.size(), dir) == 0) {
      out.insert(line.substr(lt + 1, line.find('>', lt) - lt - 1));
    }
  }
  return out;
}

TEST(SourceTree, TheScannerFindsCallsAndIncludesButNotCommentsOrStrings) {
  const std::string code = StripCommentsAndLiterals(
      "#include <gnutls/gnutls.h>\n#include <openssl/ssl.h>\n"
      "int x = gnutls_init (&s, 0); // SSL_new(ctx)\n/* gnutls_deinit(s) */ auto h = R\"(SSL_free(x))\";\n"
      "const char* m = \"gnutls_bye(\"; OPENSSL_free(p); SSL_CTX_free(c);\n");
  EXPECT_EQ(CallsWithPrefix(code, "gnutls_"), std::set<std::string>{"gnutls_init"});
  EXPECT_EQ(CallsWithPrefix(code, "SSL_"), std::set<std::string>{"SSL_CTX_free"});
  EXPECT_EQ(AngleIncludes(code, "gnutls/"), std::set<std::string>{"gnutls/gnutls.h"});
  EXPECT_EQ(AngleIncludes(code, "openssl/"), std::set<std::string>{"openssl/ssl.h"});
}

// The workspace's source root: the runfiles are symlinks into it (the
// tests run unsandboxed, see .bazelrc). The test is tagged "external" so
// Bazel never serves a cached pass for a tree that has changed since.
fs::path SourceRoot() {
  char real[PATH_MAX];
  if (!realpath("certs/credentials.h", real)) return {};
  return fs::path(real).parent_path().parent_path();
}

// Files allowed to use a TLS library outside its backend, with why.
bool Excepted(const std::string& rel, const std::string& what) {
  // `tls-migrate bench` measures GnuTLS's own AEAD speed beside the kernel's.
  return rel == "cli/bench_sections.cc" && what == "gnutls";
}

struct Violation {
  std::string file, what;
};

std::vector<Violation> ScanFile(const std::string& rel, const std::string& text) {
  const std::string code = StripCommentsAndLiterals(text);
  const bool in_gnutls = rel.rfind("tls/gnutls/", 0) == 0;
  const bool in_openssl = rel.rfind("tls/openssl/", 0) == 0;
  std::vector<Violation> out;
  if (!in_gnutls && !Excepted(rel, "gnutls")) {
    for (const auto& h : AngleIncludes(code, "gnutls/")) out.push_back({rel, "includes <" + h + ">"});
    for (const auto& c : CallsWithPrefix(code, "gnutls_")) out.push_back({rel, "calls " + c + "()"});
  }
  if (!in_openssl && !Excepted(rel, "openssl")) {
    // libcrypto's headers (x509.h, evp.h ...) are fine; the TLS ones not.
    for (const char* h : {"openssl/ssl.h", "openssl/ssl3.h", "openssl/tls1.h", "openssl/dtls1.h", "openssl/sslerr.h"}) {
      if (AngleIncludes(code, h).count(h)) out.push_back({rel, std::string("includes <") + h + ">"});
    }
    for (const auto& c : CallsWithPrefix(code, "SSL_")) out.push_back({rel, "calls " + c + "()"});
  }
  return out;
}

TEST(SourceTree, TlsLibrariesOnlyInTheirBackends) {
  const fs::path root = SourceRoot();
  ASSERT_FALSE(root.empty()) << "cannot find the source tree from the runfiles";
  ASSERT_TRUE(fs::exists(root / "tls/gnutls/gnutls_session.cc")) << root;
  std::vector<Violation> found;
  size_t scanned = 0;
  for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator(); ++it) {
    const std::string name = it->path().filename().string();
    if (it->is_directory() && (name.rfind("bazel-", 0) == 0 || name[0] == '.' || name == "tests" ||
                               name == "third_party")) {
      it.disable_recursion_pending();
      continue;
    }
    const std::string ext = it->path().extension().string();
    if (!it->is_regular_file() || (ext != ".cc" && ext != ".h" && ext != ".c")) continue;
    std::ifstream f(it->path());
    std::stringstream ss;
    ss << f.rdbuf();
    for (auto& v : ScanFile(fs::relative(it->path(), root).string(), ss.str())) found.push_back(v);
    ++scanned;
  }
  EXPECT_GT(scanned, 50u) << "scanned too few files under " << root;
  for (const auto& v : found) ADD_FAILURE() << v.file << " " << v.what << " outside its TLS backend";
}

}  // namespace

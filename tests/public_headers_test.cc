// The library's vocabulary is its own: no public header of the neutral
// layers pulls in a TLS library's or liburing's header, directly or through
// another header. Checked with the real preprocessor on the real headers.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

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

const std::vector<std::string> kNeutralHeaders = {
    "base/child.h",          "base/error.h",           "base/fd_wait.h",          "base/parse.h",
    "base/policy.h",         "base/proc.h",            "base/unique_fd.h",        "channel/address.h",
    "channel/channel.h",     "channel/socket_channel.h", "channel/zero_copy_sender.h",
    "channel/zerocopy_tracker.h", "certs/credentials.h", "certs/generate.h",      "tls/tls_types.h",
    "tls/tls_session.h",     "tls/handshake.h",        "ktls/cipher_table.h",     "ktls/establish.h",
    "ktls/ktls.h",           "transport/endpoint.h",   "transport/migration.h",   "transport/page_source.h",
    "transport/protocol.h",  "transport/phase_clock.h", "util/image_digest.h",
};

TEST(PublicHeaders, NoTlsLibraryOrLiburingHeaderInTheNeutralLayers) {
  for (const auto& h : kNeutralHeaders) {
    const std::string files = IncludedFiles(h);
    ASSERT_FALSE(Mentions(files, "PREPROCESSOR FAILED")) << h << "\n" << files;
    EXPECT_FALSE(Mentions(files, "gnutls/")) << h << " pulls in a GnuTLS header";
    EXPECT_FALSE(Mentions(files, "openssl/")) << h << " pulls in an OpenSSL header";
    EXPECT_FALSE(Mentions(files, "liburing")) << h << " pulls in liburing";
  }
}

// The check can fail: the backend's own headers do include them.
TEST(PublicHeaders, TheCheckSeesBackendHeaders) {
  EXPECT_TRUE(Mentions(IncludedFiles("tls/gnutls/gnutls_session.h"), "gnutls/gnutls.h"));
  EXPECT_TRUE(Mentions(IncludedFiles("channel/uring_sender.h"), "liburing.h"));
}

}  // namespace

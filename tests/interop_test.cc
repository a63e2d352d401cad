// Interop with the real peers everyone else uses: openssl s_server (TLS 1.3,
// client certificate required, session tickets on) and gnutls-serv. Data
// both ways, compared by digest. KTM_TEST_KTLS selects our side's kTLS
// policy: unset/auto on the host (userspace there), require in the VM.
#include <gtest/gtest.h>

#include <cstdlib>

#include "ktls/ktls.h"
#include "tests/subprocess.h"
#include "tests/tls_util.h"

namespace ktm {
namespace {

using namespace testing;

KtlsMode PolicyFromEnv() {
  const char* v = getenv("KTM_TEST_KTLS");
  return v ? ParsePolicy(v, "KTM_KTLS") : KtlsMode::kAuto;
}

void ExpectPath(const TlsPathReport& r) {
  if (PolicyFromEnv() == KtlsMode::kRequire) {
    EXPECT_EQ(r.kind, TlsPathKind::kKtlsKeyInstall) << r.Summary();
  }
  std::printf("  our side: %s\n", r.Summary().c_str());
}

// Sends `lines` lines of printable text and checks each comes back
// reversed (s_server -rev). Returns the digest of what came back.
void ReverseRoundTrip(Channel& ch, int lines) {
  Sha256 want, got;
  std::string line;
  uint64_t x = 12345;
  std::string reply;
  for (int i = 0; i < lines; ++i) {
    line.clear();
    for (int j = 0; j < 4000; ++j) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      line += static_cast<char>('a' + x % 26);
    }
    std::string rev(line.rbegin(), line.rend());
    want.Update(rev.data(), rev.size());
    line += '\n';
    ch.write_all(line.data(), line.size());
    // Read one reply line.
    reply.clear();
    char c;
    for (;;) {
      ASSERT_TRUE(ch.read_all(&c, 1)) << "s_server closed early at line " << i;
      if (c == '\n') break;
      reply += c;
    }
    got.Update(reply.data(), reply.size());
  }
  EXPECT_EQ(Sha256::Hex(got.Final()), Sha256::Hex(want.Final()));
}

// openssl s_server as FACTS.md describes it: TLS 1.3, client certificate
// required and verified, one connection, reversing lines; tickets on.
std::unique_ptr<Subprocess> StartSServer(int port, const std::string& cert, const std::string& key,
                                         bool verify_client) {
  const Pki& p = Pki::Get();
  std::vector<std::string> argv = {"openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(port),
                                   "-tls1_3", "-cert", cert, "-key", key, "-naccept", "1", "-rev"};
  if (verify_client) argv.insert(argv.end(), {"-CAfile", p.ca(), "-Verify", "1", "-verify_return_error"});
  auto srv = std::make_unique<Subprocess>(argv);
  if (!srv->WaitFor("ACCEPT", std::chrono::seconds(20))) ADD_FAILURE() << srv->output();
  return srv;
}

TEST(Interop, OpensslSServerTls13WithClientCertAndTickets) {
  const Pki& p = Pki::Get();
  int port = FreePort();
  auto srv_ptr = StartSServer(port, p.server_cert(), p.server_key(), /*verify_client=*/true);
  Subprocess& srv = *srv_ptr;
  TlsEnd c = ConnectTls("127.0.0.1:" + std::to_string(port), ClientOptions(), {PolicyFromEnv()});
  ASSERT_TRUE(c.ch) << c.error << "\nserver said: " << srv.output();
  EXPECT_EQ(c.report.version, "TLS1.3");
  ExpectPath(c.report);
  ReverseRoundTrip(*c.ch, 256);  // ~1 MiB each way
  if (auto* k = dynamic_cast<KtlsChannel*>(c.ch.get())) {
    // s_server sends NewSessionTickets after the handshake; the kernel
    // hands them to us as handshake records, which must be skipped.
    EXPECT_GE(k->session_tickets_ignored(), 1u);
  }
  c.ch->shutdown(ShutdownHow::kWrite);
}

TEST(Interop, OpensslSServerWithoutOurClientCertRefuses) {
  const Pki& p = Pki::Get();
  int port = FreePort();
  auto srv = StartSServer(port, p.server_cert(), p.server_key(), /*verify_client=*/true);
  TlsEnd c = ConnectTls("127.0.0.1:" + std::to_string(port), ClientOptions({p.ca(), "", "", ""}),
                        {PolicyFromEnv()});
  // TLS 1.3 client auth finishes after the client's Finished, so the
  // refusal may arrive as an alert on the first read instead.
  if (c.ch) {
    c.ch->write_all("x\n", 2);
    char b;
    try {
      c.ch->read_all(&b, 1);
      ADD_FAILURE() << "server accepted a client without certificate";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("alert"), std::string::npos) << e.what();
    }
  } else {
    EXPECT_NE(c.error.find("alert"), std::string::npos) << c.error;
  }
}

TEST(Interop, OpensslSServerWithExpiredCertificateIsRejected) {
  const Pki& p = Pki::Get();
  int port = FreePort();
  auto srv = StartSServer(port, p.expired_cert, p.expired_key, /*verify_client=*/false);
  TlsEnd c = ConnectTls("127.0.0.1:" + std::to_string(port), ClientOptions(), {PolicyFromEnv()});
  EXPECT_FALSE(c.ch);
  EXPECT_NE(c.error.find("has expired"), std::string::npos) << c.error;
}

TEST(Interop, GnutlsServEchoBothWays) {
  const Pki& p = Pki::Get();
  int port = FreePort();
  Subprocess srv({"gnutls-serv", "--echo", "-p", std::to_string(port), "--x509cafile", p.ca(),
                  "--x509certfile", p.server_cert(), "--x509keyfile", p.server_key(),
                  "--verify-client-cert"});
  // It prints this once bound. (A bare TCP probe connection would stall
  // its single-threaded handshake loop, so none is made.)
  ASSERT_TRUE(srv.WaitFor("IPv4 0.0.0.0 port " + std::to_string(port) + "...done",
                          std::chrono::seconds(20)))
      << srv.output();
  TlsEnd c = ConnectTls("127.0.0.1:" + std::to_string(port), ClientOptions(), {PolicyFromEnv()});
  ASSERT_TRUE(c.ch) << c.error << "\nserver said: " << srv.output();
  ExpectPath(c.report);
  // gnutls-serv's echo mode works line by line: 4 MiB as 64 KiB batches of
  // 1 KiB text lines, each batch read back before the next.
  std::vector<uint8_t> out(64 << 10), in(64 << 10);
  Sha256 sent, got;
  for (int i = 0; i < 64; ++i) {
    for (size_t j = 0; j < out.size(); ++j) {
      out[j] = (j % 1024 == 1023) ? '\n' : static_cast<uint8_t>('a' + (j * 31 + i) % 26);
    }
    sent.Update(out.data(), out.size());
    // One record per line: gnutls-serv echoes a record up to its first newline.
    for (size_t off = 0; off < out.size(); off += 1024) c.ch->write_all(out.data() + off, 1024);
    ASSERT_TRUE(c.ch->read_all(in.data(), in.size()));
    got.Update(in.data(), in.size());
  }
  EXPECT_EQ(Sha256::Hex(got.Final()), Sha256::Hex(sent.Final()));
  c.ch->shutdown(ShutdownHow::kWrite);
}

}  // namespace
}  // namespace ktm

// Interop with the real peers everyone else uses: openssl s_server (TLS 1.3,
// client certificate required, session tickets on) and gnutls-serv. Data
// both ways, compared by digest. KTM_TEST_KTLS selects our side's kTLS
// policy: unset/auto on the host (userspace there), require in the VM.
#include <gtest/gtest.h>

#include <unistd.h>

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

// Our side's path, and proof that it ran the backend under test
// (interop_test with GnuTLS, interop_test_openssl with OpenSSL): a
// userspace channel's key-update detail names its library.
void ExpectPath(const TlsEnd& e) {
  const TlsPathReport& r = e.report;
  if (PolicyFromEnv() == KtlsMode::kRequire) {
    // OpenSSL 3.0 enables TLS 1.2 both ways and TLS 1.3 sending itself.
    const TlsPathKind want = TestBackend() == TlsBackend::kGnutls ? TlsPathKind::kKtlsKeyInstall
                             : r.version == "TLS1.2"              ? TlsPathKind::kKtlsByLibrary
                                                                  : TlsPathKind::kKtlsMixed;
    EXPECT_EQ(r.kind, want) << r.Summary();
  }
  if (r.kind == TlsPathKind::kUserspace && e.ch) {
    EXPECT_EQ(e.ch->stats().rekey.detail.rfind(LibraryName(TestBackend()), 0), 0u)
        << "our side is not " << LibraryName(TestBackend()) << ": " << e.ch->stats().rekey.detail;
  }
  std::printf("  our side (%s): %s\n", LibraryName(TestBackend()), r.Summary().c_str());
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
  ExpectPath(c);
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
  ExpectPath(c);
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

// gnutls-cli against our server (client certificate required): a line each
// way, and gnutls-cli's own verification of our certificate.
TEST(Interop, GnutlsCliAgainstOurServer) {
  const Pki& p = Pki::Get();
  Listener l = Listener::Listen("127.0.0.1:0");
  auto served = ServeOnce(l, ServerOptions(), {PolicyFromEnv()});
  const std::string port = l.address().substr(l.address().rfind(':') + 1);
  Subprocess cli({"gnutls-cli", "127.0.0.1", "-p", port, "--x509cafile", p.ca(), "--x509certfile", p.client_cert(),
                  "--x509keyfile", p.client_key()},
                 Subprocess::kStdinPipe);  // at stdin's EOF gnutls-cli would close
  TlsEnd s = served.get();
  ASSERT_TRUE(s.ch) << s.error << "\ngnutls-cli said: " << cli.output();
  ExpectPath(s);
  EXPECT_EQ(s.report.peer, "tls-migrate-client");
  const std::string ours = "from our server 0123456789\n", theirs = "from gnutls-cli 9876543210\n";
  s.ch->write_all(ours.data(), ours.size());
  ASSERT_TRUE(cli.WaitFor(ours, std::chrono::seconds(20))) << cli.output();
  ASSERT_TRUE(cli.WriteStdin(theirs));
  std::string got(theirs.size(), '\0');
  ASSERT_TRUE(s.ch->read_all(got.data(), got.size())) << cli.output();
  EXPECT_EQ(got, theirs);
  s.ch->shutdown(ShutdownHow::kWrite);
  cli.Signal(SIGTERM);
  cli.Wait(std::chrono::seconds(10));
}

// --- TLS 1.3 KeyUpdate with independent OpenSSL peers (issue 19) ----------
//
// openssl s_server / s_client without -rev take commands and data on their
// stdin: "k" sends a KeyUpdate, "K" one that asks for ours (s_server(1),
// s_client(1) "CONNECTED COMMANDS"); other lines go to us as data, and what
// we send is printed on their stdout. So data flows both ways under each
// new key, and every step waits for a line the peer printed. Lines are
// digits only: a read of the peer's stdin that starts with a command
// letter would be taken as a command.
//
// Our side is userspace GnuTLS on the host (it follows by itself) and kTLS
// in the VM: on a kernel that re-keys (7.3) the channel follows (counted
// in ChannelStats::rekey and the kernel's TlsRxRekeyOk); where it cannot
// (6.1) the read fails with the clear "cannot follow" error.

bool OurSideIsKtls(Channel& ch) { return dynamic_cast<KtlsChannel*>(&ch) != nullptr; }

uint64_t TlsStat(const char* k) {
  const auto m = ReadTlsStat();
  return m.count(k) ? m.at(k) : 0;
}

bool WaitForCount(Subprocess& p, const std::string& needle, size_t count) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    const std::string& out = p.output();
    size_t n = 0;
    for (size_t at = out.find(needle); at != std::string::npos; at = out.find(needle, at + 1)) ++n;
    if (n >= count) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    usleep(20 * 1000);
  }
}

// `n` lines of digits, each unique to (tag, line number), about 1 KiB each.
std::vector<std::string> DigitLines(int tag, int n) {
  std::vector<std::string> v;
  uint64_t x = 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(tag + 1);
  for (int i = 0; i < n; ++i) {
    std::string line = std::to_string(1000000 + tag * 10000 + i);
    while (line.size() < 1000) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      line += static_cast<char>('0' + x % 10);
    }
    v.push_back(line + "\n");
  }
  return v;
}

// The peer -> us: lines written to the peer's stdin arrive through our
// channel, byte-exact (our side follows any key update on the way).
void PeerToUs(Subprocess& peer, Channel& ch, int tag) {
  std::string want;
  for (const auto& l : DigitLines(tag, 64)) want += l;
  ASSERT_TRUE(peer.WriteStdin(want)) << peer.output();
  std::string got(want.size(), '\0');
  ASSERT_TRUE(ch.read_all(got.data(), got.size())) << "the peer closed early";
  EXPECT_EQ(got, want);
}

// Us -> the peer: lines we write are printed by the peer, each whole and in
// order (the peer's own messages may come between its reads).
void UsToPeer(Channel& ch, Subprocess& peer, int tag) {
  const auto lines = DigitLines(tag, 64);
  for (const auto& l : lines) ch.write_all(l.data(), l.size());
  ASSERT_TRUE(peer.WaitFor(lines.back(), std::chrono::seconds(30))) << "the peer did not print our last line";
  const std::string out = peer.output();
  size_t at = 0;
  for (const auto& l : lines) {
    at = out.find(l, at);
    ASSERT_NE(at, std::string::npos) << "line " << l.substr(0, 7) << " missing or out of order";
  }
}

// After the peer took a key update command: on a kTLS side that cannot
// follow, the next read fails with the clear error (true: nothing more to
// test). A line of data makes the peer send (s_client sends its KeyUpdate
// only with its next data).
bool ExpectCannotFollow(Subprocess& peer, Channel& ch) {
  if (!OurSideIsKtls(ch) || ProbeKtlsKernelFeatures().rekey) return false;
  EXPECT_TRUE(peer.WriteStdin(DigitLines(99, 1)[0]));
  char b;
  try {
    ch.read_all(&b, 1);
    ADD_FAILURE() << "the peer's KeyUpdate went unnoticed";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("re-keyed"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("cannot follow"), std::string::npos) << e.what();
    EXPECT_EQ(e.remedy(), Remedy::kKtlsOff) << e.what();
  }
  return true;
}

// One peer command ("k" or "K") mid-stream, then data both ways under the
// new keys; on kTLS the counts (ours and the kernel's) say what happened.
// `taken`: what the peer prints once it has taken the command.
void PeerReKeys(Subprocess& peer, Channel& ch, char cmd, int round, const std::string& taken) {
  SCOPED_TRACE(std::string("peer command ") + cmd);
  const bool ktls = OurSideIsKtls(ch);
  const ChannelStats::Rekey r0 = ch.stats().rekey;
  const uint64_t rx0 = ktls ? TlsStat("TlsRxRekeyOk") : 0, tx0 = ktls ? TlsStat("TlsTxRekeyOk") : 0;
  ASSERT_TRUE(peer.WriteStdin(std::string(1, cmd) + "\n"));
  ASSERT_TRUE(WaitForCount(peer, taken, static_cast<size_t>(round))) << peer.output();
  if (ExpectCannotFollow(peer, ch)) return;
  PeerToUs(peer, ch, 10 * round + 1);  // read across the peer's KeyUpdate
  // With "K" our answer goes out before these lines: the peer reading them
  // proves it took our new key.
  UsToPeer(ch, peer, 10 * round + 2);
  if (!ktls) return;
  const ChannelStats::Rekey r = ch.stats().rekey;
  const uint64_t answered = cmd == 'K' ? 1 : 0;
  std::printf("  %c: our kTLS side received %llu, sent %llu KeyUpdates; tls_stat TlsRxRekeyOk +%llu, "
              "TlsTxRekeyOk +%llu\n",
              cmd, (unsigned long long)(r.received - r0.received), (unsigned long long)(r.sent - r0.sent),
              (unsigned long long)(TlsStat("TlsRxRekeyOk") - rx0), (unsigned long long)(TlsStat("TlsTxRekeyOk") - tx0));
  EXPECT_EQ(r.received - r0.received, 1u);
  EXPECT_EQ(r.sent - r0.sent, answered);
  EXPECT_EQ(TlsStat("TlsRxRekeyOk") - rx0, 1u);
  EXPECT_EQ(TlsStat("TlsTxRekeyOk") - tx0, answered);
}

// Our client and `openssl s_server`, which re-keys mid-stream by itself
// ("k") and then asks for our update too ("K").
TEST(InteropKeyUpdate, OpensslSServerReKeysMidStream) {
  const Pki& p = Pki::Get();
  const int port = FreePort();
  // stdbuf: s_server's own messages go through stdio, fully buffered into
  // a file; line buffering lets the test see them as they happen.
  Subprocess srv({"stdbuf", "-oL", "openssl", "s_server", "-accept", "127.0.0.1:" + std::to_string(port), "-tls1_3", "-cert",
                  p.server_cert(), "-key", p.server_key(), "-CAfile", p.ca(), "-Verify", "1", "-verify_return_error",
                  "-naccept", "1"},
                 Subprocess::kStdinPipe);
  ASSERT_TRUE(srv.WaitFor("ACCEPT", std::chrono::seconds(20))) << srv.output();
  TlsEnd c = ConnectTls("127.0.0.1:" + std::to_string(port), ClientOptions(), {PolicyFromEnv()});
  ASSERT_TRUE(c.ch) << c.error << "\nserver said: " << srv.output();
  ExpectPath(c);
  UsToPeer(*c.ch, srv, 1);  // under the first keys, both ways
  PeerToUs(srv, *c.ch, 2);
  // s_server sends the KeyUpdate at once and then prints this.
  PeerReKeys(srv, *c.ch, 'k', 1, "SSL_do_handshake -> 1");
  if (HasFailure() || (OurSideIsKtls(*c.ch) && !ProbeKtlsKernelFeatures().rekey)) return;
  PeerReKeys(srv, *c.ch, 'K', 2, "SSL_do_handshake -> 1");
  c.ch->shutdown(ShutdownHow::kWrite);
}

// `openssl s_client` against our server: it re-keys ("k"), then asks for
// ours ("K"). s_client sends its KeyUpdate with its next data; it prints
// KEYUPDATE when it takes the command.
TEST(InteropKeyUpdate, OpensslSClientReKeysAgainstOurServer) {
  const Pki& p = Pki::Get();
  Listener l = Listener::Listen("127.0.0.1:0");
  auto served = ServeOnce(l, ServerOptions(), {PolicyFromEnv()});
  Subprocess cli({"openssl", "s_client", "-connect", l.address(), "-tls1_3", "-CAfile", p.ca(), "-verify_return_error",
                  "-verify_hostname", "localhost", "-cert", p.client_cert(), "-key", p.client_key()},
                 Subprocess::kStdinPipe);
  TlsEnd s = served.get();
  ASSERT_TRUE(s.ch) << s.error << "\nclient said: " << cli.output();
  ExpectPath(s);
  PeerToUs(cli, *s.ch, 3);
  UsToPeer(*s.ch, cli, 4);
  PeerReKeys(cli, *s.ch, 'k', 1, "KEYUPDATE");
  if (HasFailure() || (OurSideIsKtls(*s.ch) && !ProbeKtlsKernelFeatures().rekey)) return;
  PeerReKeys(cli, *s.ch, 'K', 2, "KEYUPDATE");
  s.ch->shutdown(ShutdownHow::kWrite);
}

}  // namespace
}  // namespace ktm

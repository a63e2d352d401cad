// TLS over real loopback sockets on this host: the userspace path, the path
// decision and its reasons, the policies, and every rejection the operator
// must see clearly (with no application data flowing).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include "ktls/ktls.h"
#include "tests/tls_util.h"
#include "tls/gnutls/gnutls_record_channel.h"

namespace ktm {
namespace {

using namespace testing;

bool HostHasKtls() { return !ProbeKtlsUlp().has_value(); }

void ExpectContains(const std::string& hay, const std::string& needle) {
  EXPECT_NE(hay.find(needle), std::string::npos) << "'" << needle << "' not in: " << hay;
}

TEST(Tls, UserspaceTls13BothWaysIntact) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(), {KtlsMode::kOff});
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {KtlsMode::kOff});
  TlsEnd s = fut.get();
  ASSERT_TRUE(c.ch) << c.error;
  ASSERT_TRUE(s.ch) << s.error;
  EXPECT_EQ(c.report.kind, TlsPathKind::kUserspace);
  EXPECT_EQ(c.report.version, "TLS1.3");
  ExpectContains(c.report.reason, "kTLS turned off by policy");
  EXPECT_FALSE(c.report.zero_copy);
  ExpectContains(c.report.zero_copy_reason, "reused ciphertext buffer");
  EXPECT_FALSE(c.ch->has_feature(kFeatureZeroCopyWrite));
  EXPECT_TRUE(c.ch->has_feature(kFeatureEncrypted));
  EXPECT_EQ(c.report.peer, "localhost");
  EXPECT_EQ(s.report.peer, "tls-migrate-client");
  EXPECT_EQ(ExchangeBothWays(*c.ch, *s.ch, 64u << 20), "");
  // Records were corked into batches: far fewer uncorks than 16 KiB records.
  ASSERT_NE(dynamic_cast<GnutlsRecordChannel*>(c.ch.get()), nullptr);
  EXPECT_GT(c.ch->stats().records_batched, 0u);
  EXPECT_LT(c.ch->stats().records_batched, (64u << 20) / (16u << 10));
}

// A peer that completed the handshake and then stops reading: a blocking
// write_all ends with a timeout about io_timeout after it could no longer
// move a byte, on each TLS path (userspace here; kTLS where the kernel has
// it, i.e. in the VM).
class TlsStalledPeerWrite : public ::testing::TestWithParam<KtlsMode> {};

TEST_P(TlsStalledPeerWrite, EndsWithinTheIoTimeout) {
  if (GetParam() == KtlsMode::kRequire && !HostHasKtls()) GTEST_SKIP() << "no kernel TLS on this host";
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(), {GetParam()});
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {GetParam()});
  TlsEnd s = fut.get();  // never reads
  ASSERT_TRUE(c.ch) << c.error;
  ASSERT_TRUE(s.ch) << s.error;
  constexpr auto kTimeout = std::chrono::milliseconds(2000);
  c.ch->set_io_timeout(kTimeout);
  std::vector<uint8_t> buf(64u << 20, 0x5a);  // far more than loopback's socket buffers hold
  const auto t0 = std::chrono::steady_clock::now();
  try {
    for (int i = 0; i < 4; ++i) c.ch->write_all(buf.data(), buf.size());
    ADD_FAILURE() << "256 MiB were written to a peer that reads nothing";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kTimeout) << e.what();
  }
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_GE(took, kTimeout);
  EXPECT_LT(took, kTimeout * 3 / 2) << "a stalled write took "
                                    << std::chrono::duration<double>(took).count() << " s with a 2 s io timeout";
}

INSTANTIATE_TEST_SUITE_P(UserspaceAndKtls, TlsStalledPeerWrite, ::testing::Values(KtlsMode::kOff, KtlsMode::kRequire),
                         [](const auto& info) { return info.param == KtlsMode::kOff ? "Userspace" : "Ktls"; });

TEST(Tls, Tls12AndEveryKtlsCipherNegotiate) {
  for (const char* prio : {"NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+CHACHA20-POLY1305",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"}) {
    SCOPED_TRACE(prio);
    Listener l = Listener::Listen("127.0.0.1:0");
    TlsOptions so = ServerOptions();
    so.priority = prio;
    auto fut = ServeOnce(l, so, {KtlsMode::kOff});
    TlsOptions co = ClientOptions();
    co.priority = prio;
    TlsEnd c = ConnectTls(l.address(), co, {KtlsMode::kOff});
    TlsEnd s = fut.get();
    ASSERT_TRUE(c.ch) << c.error;
    ASSERT_TRUE(s.ch) << s.error;
    EXPECT_EQ(ExchangeBothWays(*c.ch, *s.ch, 4u << 20), "");
  }
}

TEST(Tls, AutoFallsBackToUserspaceWithTheKernelsReason) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(), {KtlsMode::kAuto});
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {KtlsMode::kAuto});
  TlsEnd s = fut.get();
  ASSERT_TRUE(c.ch) << c.error;
  ASSERT_TRUE(s.ch) << s.error;
  if (HostHasKtls()) {
    EXPECT_EQ(c.report.kind, TlsPathKind::kKtlsKeyInstall);
  } else {
    // This host's kernel has no CONFIG_TLS (see FACTS.md): the channel must
    // say exactly that, and copy.
    EXPECT_EQ(c.report.kind, TlsPathKind::kUserspace);
    ExpectContains(c.report.reason, "kernel has no tls module: TCP_ULP returned ENOENT");
    ExpectContains(c.ch->describe(), "userspace TLS");
    EXPECT_FALSE(c.report.zero_copy);
  }
  EXPECT_EQ(ExchangeBothWays(*c.ch, *s.ch, 8u << 20), "");
}

TEST(Tls, RequireKtlsFailsWithReasonWhereKernelLacksIt) {
  if (HostHasKtls()) GTEST_SKIP() << "kernel has kTLS; covered by the VM tests";
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(), {KtlsMode::kAuto});
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {KtlsMode::kRequire});
  EXPECT_FALSE(c.ch);
  ExpectContains(c.error, "kTLS was required but cannot be used");
  ExpectContains(c.error, "TCP_ULP returned ENOENT");
  ExpectContains(c.error, "kTLS policy auto");
  fut.get();
}

TEST(Tls, ZeroCopyRequireWithKtlsOffFailsBeforeHandshake) {
  Listener l = Listener::Listen("127.0.0.1:0");
  SocketOptions so;
  so.zero_copy = ZeroCopyMode::kOff;
  auto sock = SocketChannel::Connect(l.address(), std::chrono::seconds(5), so);
  try {
    EstablishTls(sock->release_fd(), ClientOptions(), KtlsMode::kOff, ZeroCopyMode::kRequire, nullptr);
    FAIL();
  } catch (const Error& e) {
    ExpectContains(e.what(), "zero copy cannot be required with kTLS off");
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_EQ(e.remedy(), Remedy::kAllowKtls);
  }
}

TEST(Tls, ZeroCopyRequireOnUserspaceFallbackFailsAtSetup) {
  if (HostHasKtls()) GTEST_SKIP() << "kernel has kTLS; require is satisfiable here";
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions());
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {KtlsMode::kAuto, ZeroCopyMode::kRequire});
  EXPECT_FALSE(c.ch);
  ExpectContains(c.error, "zero copy was required but this connection runs userspace TLS");
  fut.get();
}

// --- rejections: each a clear error on the side that detects it, no data ---

TEST(TlsReject, UntrustedCa) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(CredsDirFiles(Pki::Get().other_ca_dir, TlsRole::kServer)));
  TlsEnd c = ConnectTls(l.address(), ClientOptions());
  EXPECT_FALSE(c.ch);
  ExpectContains(c.error, "not signed by a trusted CA");
  fut.get();
}

TEST(TlsReject, WrongHostnameSaysExpectedAndHeld) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions());
  TlsEnd c = ConnectTls(l.address(), ClientOptions("migration-dst.example"));
  EXPECT_FALSE(c.ch);
  ExpectContains(c.error, "expected the name 'migration-dst.example'");
  ExpectContains(c.error, "DNS:localhost, IP:127.0.0.1, IP:::1");
  fut.get();
}

TEST(TlsReject, IpAddressIsCheckedAgainstIpSans) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions());
  TlsEnd ok = ConnectTls(l.address(), ClientOptions("127.0.0.1"));
  EXPECT_TRUE(ok.ch) << ok.error;
  fut.get();
  auto fut2 = ServeOnce(l, ServerOptions());
  TlsEnd bad = ConnectTls(l.address(), ClientOptions("127.0.0.2"));
  EXPECT_FALSE(bad.ch);
  ExpectContains(bad.error, "expected the name '127.0.0.2'");
  fut2.get();
}

TEST(TlsReject, RevokedServerCertificate) {
  const Pki& p = Pki::Get();
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions({p.ca(), "", p.revoked_cert, p.revoked_key}));
  TlsEnd c = ConnectTls(l.address(), ClientOptions({p.ca(), p.crl, p.client_cert(), p.client_key()}));
  EXPECT_FALSE(c.ch);
  ExpectContains(c.error, "revoked by the CRL");
  fut.get();
}

TEST(TlsReject, MissingClientCertificateWhenRequired) {
  const Pki& p = Pki::Get();
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions());
  TlsEnd c = ConnectTls(l.address(), ClientOptions({p.ca(), "", "", ""}));
  TlsEnd s = fut.get();
  EXPECT_FALSE(s.ch);
  ExpectContains(s.error, "presented no certificate, but one is required");
  // The client learns it either during the handshake or on its first read;
  // either way it never gets data.
  if (c.ch) {
    uint8_t b[16];
    EXPECT_THROW(c.ch->read_all(b, sizeof(b)), Error);
  }
}

TEST(TlsReject, PlaintextPeer) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions());
  auto plain = SocketChannel::Connect(l.address(), std::chrono::seconds(5));
  const char junk[] = "MIGRATE 1\r\npages follow in plaintext\r\n\r\n";
  plain->write_all(junk, sizeof(junk));
  TlsEnd s = fut.get();
  EXPECT_FALSE(s.ch);
  ExpectContains(s.error, "did not speak TLS");
}

TEST(TlsReject, GarbageAfterHandshakeIsRejected) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(), {KtlsMode::kOff}, /*keep_raw=*/true);
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {KtlsMode::kOff});
  TlsEnd s = fut.get();
  ASSERT_TRUE(c.ch && s.ch);
  // A well-formed record header (application data, TLS 1.2 legacy version)
  // with bytes that do not authenticate.
  uint8_t forged[5 + 64] = {23, 3, 3, 0, 64};
  for (size_t i = 5; i < sizeof(forged); ++i) forged[i] = static_cast<uint8_t>(i * 7);
  ASSERT_EQ(write(s.raw_fd, forged, sizeof(forged)), (ssize_t)sizeof(forged));
  uint8_t buf[64];
  try {
    c.ch->read_all(buf, sizeof(buf));
    FAIL() << "forged record accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EBADMSG) << e.what();
  }
  close(s.raw_fd);
}

TEST(TlsReject, TruncationWithoutCloseNotifyIsNotEof) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(), {KtlsMode::kOff}, /*keep_raw=*/true);
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {KtlsMode::kOff});
  TlsEnd s = fut.get();
  ASSERT_TRUE(c.ch && s.ch);
  s.ch->write_all("partial", 7);
  ::shutdown(s.raw_fd, SHUT_RDWR);  // TCP FIN, no close_notify
  uint8_t buf[7];
  ASSERT_TRUE(c.ch->read_all(buf, sizeof(buf)));
  try {
    c.ch->read_all(buf, 1);
    FAIL() << "a stream without close_notify read as clean EOF";
  } catch (const Error& e) {
    ExpectContains(e.what(), "without close_notify");
  }
  close(s.raw_fd);
}

TEST(Tls, CloseNotifyIsCleanEof) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(), {KtlsMode::kOff});
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {KtlsMode::kOff});
  TlsEnd s = fut.get();
  ASSERT_TRUE(c.ch && s.ch);
  s.ch->write_all("done", 4);
  s.ch->shutdown(ShutdownHow::kWrite);
  char buf[4];
  ASSERT_TRUE(c.ch->read_all(buf, 4));
  EXPECT_FALSE(c.ch->read_all(buf, 1));
}

}  // namespace
}  // namespace ktm

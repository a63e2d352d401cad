// TLS over real loopback sockets on this host: the userspace path, the path
// decision and its reasons, the policies, and every rejection the operator
// must see clearly (with no application data flowing).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "ktls/cipher_table.h"
#include "ktls/ktls.h"
#include "tests/tls_util.h"
#include "tls/gnutls/gnutls_record_channel.h"
#include "tls/openssl/openssl_record_channel.h"

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
  if (TestBackend() == TlsBackend::kOpenssl) {
    // OpenSSL has no cork: one write(2) per record, nothing batched.
    ASSERT_NE(dynamic_cast<OpensslRecordChannel*>(c.ch.get()), nullptr);
    ExpectContains(c.ch->describe(), "OpenSSL records");
    EXPECT_EQ(c.ch->stats().records_batched, 0u);
    return;
  }
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

// The neutral policy (versions and ciphers as enums), which both backends
// turn into their own settings.
TEST(Tls, Tls12AndEveryKtlsCipherNegotiate) {
  for (TlsVersion v : {TlsVersion::kTls12, TlsVersion::kTls13}) {
    for (TlsCipher cipher : {TlsCipher::kAes128Gcm, TlsCipher::kAes256Gcm, TlsCipher::kChacha20Poly1305}) {
      SCOPED_TRACE(std::string(ToString(v)) + " " + ToString(cipher));
      TlsCryptoPolicy policy;
      policy.versions = {v};
      policy.ciphers = {cipher};
      Listener l = Listener::Listen("127.0.0.1:0");
      TlsOptions so = ServerOptions(), co = ClientOptions();
      so.policy = co.policy = policy;
      auto fut = ServeOnce(l, so, {KtlsMode::kOff});
      TlsEnd c = ConnectTls(l.address(), co, {KtlsMode::kOff});
      TlsEnd s = fut.get();
      ASSERT_TRUE(c.ch) << c.error;
      ASSERT_TRUE(s.ch) << s.error;
      EXPECT_EQ(c.report.version, ToString(v));
      EXPECT_EQ(c.report.cipher, ToString(cipher));
      EXPECT_EQ(ExchangeBothWays(*c.ch, *s.ch, 4u << 20), "");
    }
  }
}

// The backend's own syntax still works where the enums do not reach.
TEST(Tls, LibraryOverrideInTheBackendsOwnSyntax) {
  const bool openssl = TestBackend() == TlsBackend::kOpenssl;
  const std::string prio = openssl ? "MinProtocol=TLSv1.3, Ciphersuites=TLS_CHACHA20_POLY1305_SHA256"
                                   : "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305";
  Listener l = Listener::Listen("127.0.0.1:0");
  TlsOptions so = ServerOptions(), co = ClientOptions();
  so.policy.library_override = co.policy.library_override = prio;
  EXPECT_NO_THROW(CheckTlsPolicy(TestBackend(), co.policy));
  auto fut = ServeOnce(l, so, {KtlsMode::kOff});
  TlsEnd c = ConnectTls(l.address(), co, {KtlsMode::kOff});
  TlsEnd s = fut.get();
  ASSERT_TRUE(c.ch && s.ch) << c.error << s.error;
  EXPECT_EQ(c.report.cipher, "CHACHA20-POLY1305");
  TlsCryptoPolicy bad;
  bad.library_override = openssl ? "NoSuchSetting=1" : "NORMAL:+NO-SUCH-THING";
  try {
    CheckTlsPolicy(TestBackend(), bad);
    FAIL() << "a bad library override was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage) << e.what();
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

// Key material (issue 17 item 6). The kernel's crypto_info layout puts the
// key, salt and IV side by side; no other copy of the keys (GnuTLS's own
// state, the exported TrafficKeys) has that shape. So once key install has
// returned, that byte sequence must be nowhere in this process's writable
// memory: every copy was wiped. Read through /proc/self/mem, so no dead
// object is touched from C++.
struct Region {
  uintptr_t begin, end;
};

std::vector<Region> WritableRegions() {
  std::vector<Region> out;
  std::ifstream maps("/proc/self/maps");
  std::string line;
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms;
    in >> range >> perms;
    if (perms.size() < 2 || perms[0] != 'r' || perms[1] != 'w') continue;
    const size_t dash = range.find('-');
    const Region r{std::stoull(range.substr(0, dash), nullptr, 16), std::stoull(range.substr(dash + 1), nullptr, 16)};
    // Sanitizer shadow and other huge reservations hold no copies of ours.
    if (r.end - r.begin <= (256u << 20)) out.push_back(r);
  }
  return out;
}

// Places in the regions where `needle` occurs, other than `ignore` (the
// test's own copy) and the needle itself.
size_t CountCopies(const std::vector<Region>& regions, const std::vector<uint8_t>& needle, const void* ignore) {
  const int fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return SIZE_MAX;
  std::vector<uint8_t> buf(1 << 20);
  size_t found = 0;
  const auto skip = reinterpret_cast<uintptr_t>(ignore);
  for (const Region& r : regions) {
    // Overlap by needle.size() so a copy across two reads is seen.
    for (uintptr_t at = r.begin; at < r.end;) {
      const size_t want = std::min<uintptr_t>(buf.size(), r.end - at);
      const ssize_t n = pread(fd, buf.data(), want, static_cast<off_t>(at));
      if (n <= 0) break;  // guard pages and the like
      for (size_t i = 0; i + needle.size() <= static_cast<size_t>(n); ++i) {
        if (buf[i] == needle[0] && std::memcmp(&buf[i], needle.data(), needle.size()) == 0 && at + i != skip &&
            at + i != reinterpret_cast<uintptr_t>(needle.data()) &&
            !(at + i >= reinterpret_cast<uintptr_t>(buf.data()) &&
              at + i < reinterpret_cast<uintptr_t>(buf.data()) + buf.size())) {
          ++found;
        }
      }
      if (static_cast<size_t>(n) < needle.size() || static_cast<size_t>(n) == r.end - at) break;
      at += static_cast<size_t>(n) - needle.size() + 1;
    }
  }
  close(fd);
  return found;
}

// Runs key install with 16 KiB of stack above it, so the scan that follows
// (which uses far less) cannot overwrite the frame install left behind.
[[gnu::noinline]] std::optional<std::string> InstallBelowPadding(TlsSession& s) {
  volatile char pad[16384];
  pad[0] = 1;
  std::optional<std::string> why = InstallKtls(s);
  pad[sizeof(pad) - 1] = pad[0];
  return why;
}

// The key-holding types wipe their own storage: built in a zeroed buffer
// with placement new, filled, destroyed; every byte of the buffer is then
// zero again.
// (explicit_bzero: a plain memset in a destructor is a dead store the
// compiler may drop.)
template <typename T, typename Fill>
std::string NonZeroAfterDestruction(const Fill& fill) {
  alignas(T) unsigned char storage[sizeof(T)] = {};
  T* t = new (storage) T;
  fill(*t);
  t->~T();
  std::string nonzero;
  for (size_t i = 0; i < sizeof(storage); ++i) {
    if (storage[i]) nonzero += std::to_string(i) + " ";
  }
  return nonzero;
}

TEST(TlsKeys, TrafficKeysAndCryptoInfoWipeThemselves) {
  const std::vector<uint8_t> key(32, 0xA5), iv(12, 0x5A);
  auto fill_keys = [&](TrafficKeys& k) {
    k.set_key(key);
    k.set_iv(iv);
    k.rec_seq.fill(0x77);
  };
  EXPECT_EQ(NonZeroAfterDestruction<TrafficKeys>(fill_keys), "") << "bytes left at these offsets";
  EXPECT_EQ(NonZeroAfterDestruction<CryptoInfo>([](CryptoInfo& c) {
              std::memset(c.data(), 0xC3, c.capacity());
              c.set_size(c.capacity());
            }),
            "");
  // A move leaves no key behind in the source either.
  EXPECT_EQ(NonZeroAfterDestruction<TrafficKeys>([&](TrafficKeys& k) {
              fill_keys(k);
              TrafficKeys taken(std::move(k));
              EXPECT_EQ(taken.key().size(), 32u);
              EXPECT_EQ(taken.key()[0], 0xA5);
            }),
            "");
  TrafficKeys k;
  EXPECT_THROW(k.set_key(std::vector<uint8_t>(33)), Error);
}

TEST(TlsKeys, KeyInstallLeavesNoCopyOfTheCryptoInfoInMemory) {
  auto [client, server] = HandshakeSessions();
  const KernelCipher* row = FindKernelCipher(client->cipher());
  ASSERT_NE(row, nullptr);
  // What install will hand the kernel for TX, on the heap (the scan skips
  // this one copy).
  std::vector<uint8_t> tx(256);
  std::string why;
  {
    const size_t n = FillCryptoInfo(*row, client->version(), client->ExportKernelKeys(TlsDirection::kTransmit),
                                    tx.data(), tx.size(), why);
    ASSERT_GT(n, 0u) << why;
    tx.resize(n);
  }
  // From the key to the end: skip the version/cipher header, which every
  // crypto_info of this cipher shares.
  const size_t from = std::min({row->iv_offset, row->key_offset, row->salt_offset});
  const std::vector<uint8_t> needle(tx.begin() + static_cast<long>(from), tx.end());
  const std::vector<Region> regions = WritableRegions();
  ASSERT_EQ(CountCopies(regions, needle, tx.data() + from), 0u) << "a copy before install";

  const std::optional<std::string> result = InstallBelowPadding(*client);
  // The kernel took the keys (a kTLS kernel) or refused them (this host has
  // no tls module): either way install has built its crypto_info copies.
  EXPECT_EQ(CountCopies(WritableRegions(), needle, tx.data() + from), 0u)
      << "key install left its crypto_info in memory (" << (result ? *result : "installed") << ")";
}

// close_notify to a peer that has gone away (reset): shutdown(kWrite)
// throws kPeer (channel.h's rule), and close_notify is not recorded as
// sent: trying again fails again, a write names the peer.
TEST(Tls, CloseNotifyToAResetPeerIsAnErrorAndNotRecordedAsSent) {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto fut = ServeOnce(l, ServerOptions(), {KtlsMode::kOff}, /*keep_raw=*/true);
  TlsEnd c = ConnectTls(l.address(), ClientOptions(), {KtlsMode::kOff}, /*keep_raw=*/true);
  TlsEnd s = fut.get();
  ASSERT_TRUE(c.ch && s.ch) << c.error << s.error;
  ResetOnClose(s.raw_fd);
  s.ch->close();
  ::close(s.raw_fd);
  ASSERT_TRUE(WaitHangup(c.raw_fd)) << "the reset never arrived";
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      c.ch->shutdown(ShutdownHow::kWrite);
      FAIL() << "close_notify reported sent to a peer that had reset the connection (attempt " << attempt << ")";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kPeer) << e.what();
    }
  }
  try {
    c.ch->write_all("x", 1);
    FAIL() << "a write to a reset peer succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kPeer) << e.what();
  }
  EXPECT_NO_THROW(c.ch->shutdown(ShutdownHow::kRead));
  EXPECT_NO_THROW(c.ch->shutdown(ShutdownHow::kBoth));
  c.ch->close();
  EXPECT_NO_THROW(c.ch->shutdown(ShutdownHow::kBoth));
  EXPECT_THROW(c.ch->shutdown(ShutdownHow::kWrite), Error);
  ::close(c.raw_fd);
}

// --- key updates on the userspace path (RFC 8446 4.6.3) -------------------

// A userspace pair where each end changes its send key every `rekey_after`
// bytes (0: only at the cipher's record limit).
struct UserspacePair {
  TlsEnd c, s;
  GnutlsRecordChannel& client() { return dynamic_cast<GnutlsRecordChannel&>(*c.ch); }
  GnutlsRecordChannel& server() { return dynamic_cast<GnutlsRecordChannel&>(*s.ch); }
};
UserspacePair ConnectUserspace(uint64_t rekey_after, std::vector<TlsVersion> versions = {}) {
  Listener l = Listener::Listen("127.0.0.1:0");
  TlsOptions so = ServerOptions(), co = ClientOptions();
  so.rekey_after_bytes = co.rekey_after_bytes = rekey_after;
  if (!versions.empty()) so.policy.versions = co.policy.versions = versions;
  auto fut = ServeOnce(l, so, {KtlsMode::kOff});
  UserspacePair p;
  p.c = ConnectTls(l.address(), co, {KtlsMode::kOff});
  p.s = fut.get();
  if (!p.c.ch || !p.s.ch) throw std::runtime_error("TLS setup failed: " + p.c.error + p.s.error);
  // A failure ends in seconds, not at the test's timeout.
  p.c.ch->set_io_timeout(std::chrono::seconds(10));
  p.s.ch->set_io_timeout(std::chrono::seconds(10));
  return p;
}

// GnuTLS takes at most 8 KeyUpdates a second from its peer (more is a
// flood to it), so a 64 KiB limit re-keys at that pace, not every 64 KiB:
// 32 MiB would need 511 updates, which at 8 a second is a minute.
TEST(TlsRekey, UserspaceRekeysAtTheByteLimitBothWaysAndCountsAgree) {
  UserspacePair p = ConnectUserspace(64u << 10);
  EXPECT_EQ(ExchangeBothWays(*p.c.ch, *p.s.ch, 32u << 20), "");
  const ChannelStats::Rekey c = p.c.ch->stats().rekey, s = p.s.ch->stats().rekey;
  EXPECT_GE(c.sent, uint64_t{KeyUpdatePace::kPerWindow});
  EXPECT_GE(s.sent, uint64_t{KeyUpdatePace::kPerWindow});
  EXPECT_LE(c.sent, 511u);
  EXPECT_LE(s.sent, 511u);
  RecordProperty("updates_client_to_server", std::to_string(c.sent));
  RecordProperty("updates_server_to_client", std::to_string(s.sent));
  EXPECT_EQ(c.sent, s.received);
  EXPECT_EQ(s.sent, c.received);
  EXPECT_TRUE(c.applies);
  EXPECT_TRUE(c.can_rekey) << c.detail;
  EXPECT_EQ(c.limit_records, uint64_t{1} << 24);  // AES-128-GCM, the default suite
  EXPECT_EQ(c.limit_bytes, 64u << 10);
  ExpectContains(c.detail, LibraryName(TestBackend()));
  EXPECT_FALSE(p.c.ch->stats().rx_no_pad);
}

TEST(TlsRekey, PaceAllowsEightUpdatesPerWindow) {
  KeyUpdatePace pace;
  const auto t0 = KeyUpdatePace::Clock::now();
  for (int i = 0; i < KeyUpdatePace::kPerWindow; ++i) {
    ASSERT_TRUE(pace.may_send(t0 + std::chrono::milliseconds(i)));
    pace.sent(t0 + std::chrono::milliseconds(i));
  }
  EXPECT_FALSE(pace.may_send(t0 + std::chrono::milliseconds(1000)));  // GnuTLS would refuse this one
  EXPECT_FALSE(pace.may_send(t0 + KeyUpdatePace::kWindow));
  EXPECT_TRUE(pace.may_send(t0 + KeyUpdatePace::kWindow + std::chrono::milliseconds(1)));
}

// Past 8 a second, a GnuTLS receiver refuses: the pace is not overcautious.
TEST(TlsRekey, GnutlsRefusesAnUnpacedNinthUpdate) {
  if (TestBackend() != TlsBackend::kGnutls) {
    GTEST_SKIP() << "about GnuTLS as the receiver; openssl_backend_test paces an OpenSSL sender toward GnuTLS";
  }
  UserspacePair p = ConnectUserspace(0);
  gnutls_session_t c = p.client().session().native();
  for (int i = 0; i <= KeyUpdatePace::kPerWindow; ++i) ASSERT_EQ(gnutls_session_key_update(c, 0), 0);
  p.c.ch->write_all("x", 1);
  char in = 0;
  try {
    p.s.ch->read_all(&in, 1);
    FAIL() << "GnuTLS took 9 KeyUpdates within a second";
  } catch (const Error& e) {
    ExpectContains(e.what(), "Too many handshake packets");
  }
}

TEST(TlsRekey, PeerThatCannotFollowGetsNoKeyUpdateAndTheWriterStopsAtTheLimit) {
  UserspacePair p = ConnectUserspace(64u << 10);
  p.c.ch->set_peer_follows_key_updates(false);
  auto got = std::async(std::launch::async, [&] { return ReceiveAll(*p.s.ch); });
  std::vector<uint8_t> buf(1 << 20, 0x5a);
  try {
    p.c.ch->write_all(buf.data(), buf.size());
    FAIL() << "wrote past the key's limit toward a peer that cannot follow a key update";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kSecurity) << e.what();
    EXPECT_EQ(e.code(), EKEYEXPIRED) << e.what();
    ExpectContains(e.what(), "cannot follow a key update");
  }
  p.c.ch->shutdown(ShutdownHow::kWrite);  // close_notify: the reader sees a clean end
  EXPECT_EQ(got.get().first, 64u << 10);  // exactly what the key was allowed to carry
  const ChannelStats::Rekey c = p.c.ch->stats().rekey, s = p.s.ch->stats().rekey;
  EXPECT_EQ(c.sent, 0u);
  EXPECT_EQ(s.received, 0u);
  EXPECT_FALSE(c.can_rekey);
  ExpectContains(c.detail, "cannot follow");
}

TEST(TlsRekey, PeerAskingForAnUpdateIsAnswered) {
  UserspacePair p = ConnectUserspace(0);
  // The server side asks, as any application may: KeyUpdate with
  // update_requested, then data.
  if (TestBackend() == TlsBackend::kOpenssl) {
    SSL* s = dynamic_cast<OpensslRecordChannel&>(*p.s.ch).session().native();
    ASSERT_EQ(SSL_key_update(s, SSL_KEY_UPDATE_REQUESTED), 1);
  } else {
    ASSERT_EQ(gnutls_session_key_update(p.server().session().native(), GNUTLS_KU_PEER), 0);
  }
  std::vector<uint8_t> buf(1 << 20, 0x33), in(buf.size());
  p.s.ch->write_all(buf.data(), buf.size());
  ASSERT_TRUE(p.c.ch->read_all(in.data(), in.size()));
  EXPECT_EQ(p.c.ch->stats().rekey.received, 1u);
  // The client's next data goes under a new key, announced first.
  p.c.ch->write_all(buf.data(), buf.size());
  ASSERT_TRUE(p.s.ch->read_all(in.data(), in.size()));
  EXPECT_EQ(in, buf);
  const ChannelStats::Rekey c = p.c.ch->stats().rekey, s = p.s.ch->stats().rekey;
  EXPECT_EQ(c.sent, 1u);
  EXPECT_EQ(s.received, 1u);
  EXPECT_EQ(s.sent, 1u);
  EXPECT_EQ(c.limit_bytes, 0u);
}

TEST(TlsRekey, Tls12SaysItHasNoKeyUpdate) {
  UserspacePair p = ConnectUserspace(0, {TlsVersion::kTls12});
  EXPECT_EQ(ExchangeBothWays(*p.c.ch, *p.s.ch, 1u << 20), "");
  const ChannelStats::Rekey c = p.c.ch->stats().rekey;
  EXPECT_TRUE(c.applies);
  EXPECT_FALSE(c.can_rekey);
  ExpectContains(c.detail, "TLS 1.2 has no key update");
  EXPECT_EQ(c.sent + c.received, 0u);
}

}  // namespace
}  // namespace ktm

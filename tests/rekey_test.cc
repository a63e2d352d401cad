// The TLS 1.3 key schedule the kernel path re-keys with (ktls/rekey.h),
// checked against GnuTLS itself on the host (no kernel TLS needed): the
// traffic secrets GnuTLS reports derive exactly the keys it uses, and each
// next key we derive is the one GnuTLS moves to after its own KeyUpdate.
// A wrong label, hash or layout here would make every re-keyed kTLS record
// fail authentication in the VM.
#include <gnutls/gnutls.h>
#include <gtest/gtest.h>

#include <cstring>
#include <future>
#include <vector>

#include "base/fd_wait.h"
#include "ktls/cipher_table.h"
#include "ktls/rekey.h"
#include "tests/tls_util.h"
#include "tls/gnutls/gnutls_session.h"
#include "tls/openssl/openssl_session.h"
#include "util/hkdf.h"

namespace ktm {
namespace {

using namespace testing;

SessionPair HandshakeWith(const std::string& priority) {
  Listener l = Listener::Listen("127.0.0.1:0");
  TlsOptions so = ServerOptions(), co = ClientOptions();
  so.policy.library_override = co.policy.library_override = priority;
  auto accepted =
      std::async(std::launch::async, [&] { return HandshakeTls(l.AcceptFd(std::chrono::seconds(30)), so); });
  SessionPair p;
  p.client = HandshakeTls(ConnectStream(l.address(), std::chrono::seconds(10)), co);
  p.server = accepted.get();
  return p;
}

std::vector<uint8_t> Bytes(std::span<const uint8_t> s) { return {s.begin(), s.end()}; }

std::vector<uint8_t> Expand(TlsCipher c, std::span<const uint8_t> secret, const char* label, size_t n) {
  std::vector<uint8_t> out(n);
  HkdfExpandLabel(SuiteHash(c), secret, label, {}, out);
  return out;
}

class KeySchedule : public ::testing::TestWithParam<const char*> {};

TEST_P(KeySchedule, ReportedSecretsDeriveTheSessionsKeysInBothDirections) {
  SessionPair p = HandshakeWith(GetParam());
  const TlsCipher c = p.client->cipher();
  for (TlsDirection dir : {TlsDirection::kTransmit, TlsDirection::kReceive}) {
    const TrafficKeys k = p.client->ExportKernelKeys(dir);
    ASSERT_EQ(k.secret().size(), HashSize(SuiteHash(c))) << "GnuTLS did not report the traffic secret";
    EXPECT_EQ(Expand(c, k.secret(), "key", k.key().size()), Bytes(k.key()));
    EXPECT_EQ(Expand(c, k.secret(), "iv", 12), Bytes(k.iv()));
  }
  // The client's send secret is the server's receive secret.
  EXPECT_EQ(Bytes(p.client->ExportKernelKeys(TlsDirection::kTransmit).secret()),
            Bytes(p.server->ExportKernelKeys(TlsDirection::kReceive).secret()));
}

TEST_P(KeySchedule, EachNextKeyIsTheOneGnutlsUsesAfterItsKeyUpdate) {
  SessionPair p = HandshakeWith(GetParam());
  const KernelCipher* row = FindKernelCipher(p.client->cipher());
  ASSERT_NE(row, nullptr);
  auto* g = dynamic_cast<GnutlsSession*>(p.client.get());
  ASSERT_NE(g, nullptr);
  TrafficKeySchedule ours(*row, p.client->cipher(), p.client->ExportKernelKeys(TlsDirection::kTransmit));
  ASSERT_TRUE(ours.valid());
  for (int update = 1; update <= 3; ++update) {
    SCOPED_TRACE(update);
    CryptoInfo mine, theirs;
    std::string why;
    ASSERT_TRUE(ours.Next(mine, why)) << why;
    ASSERT_EQ(gnutls_session_key_update(g->native(), 0), 0);
    ASSERT_TRUE(FillCryptoInfo(*row, TlsVersion::kTls13, p.client->ExportKernelKeys(TlsDirection::kTransmit), theirs,
                               why))
        << why;
    ASSERT_EQ(mine.size(), theirs.size());
    EXPECT_EQ(std::memcmp(mine.data(), theirs.data(), mine.size()), 0)
        << "our next key differs from GnuTLS's after its KeyUpdate";
  }
}

INSTANTIATE_TEST_SUITE_P(Tls13Suites, KeySchedule,
                         ::testing::Values("NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM",
                                           "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM",
                                           "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"),
                         [](const auto& info) {
                           const std::string p = info.param;
                           return p.find("AES-128") != std::string::npos   ? std::string("Aes128Gcm")
                                  : p.find("AES-256") != std::string::npos ? std::string("Aes256Gcm")
                                                                           : std::string("Chacha20Poly1305");
                         });

TEST(KeySchedule, Tls12HasNoSecretToFollowUpdatesFrom) {
  SessionPair p = HandshakeWith("NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM");
  const TrafficKeys k = p.client->ExportKernelKeys(TlsDirection::kTransmit);
  EXPECT_TRUE(k.secret().empty());
  TrafficKeySchedule s(*FindKernelCipher(p.client->cipher()), p.client->cipher(), k);
  EXPECT_FALSE(s.valid());
  CryptoInfo out;
  std::string why;
  EXPECT_FALSE(s.Next(out, why));
  EXPECT_NE(why.find("no TLS 1.3 traffic secret"), std::string::npos) << why;
}

// Secrets are wiped where they lived: a schedule destroyed in place, and
// the one a move left behind, hold no byte of the secret afterwards; the
// exported TrafficKeys with its secret likewise.
TEST(KeySchedule, SchedulesAndTrafficKeysWipeTheirSecrets) {
  const KernelCipher& row = *FindKernelCipher(TlsCipher::kAes128Gcm);
  TrafficKeys k;
  k.set_secret(std::vector<uint8_t>(32, 0xA5));
  alignas(TrafficKeySchedule) unsigned char a[sizeof(TrafficKeySchedule)] = {};
  alignas(TrafficKeySchedule) unsigned char b[sizeof(TrafficKeySchedule)] = {};
  auto* sa = new (a) TrafficKeySchedule(row, TlsCipher::kAes128Gcm, k);
  auto* sb = new (b) TrafficKeySchedule();
  ASSERT_TRUE(sa->valid());
  *sb = std::move(*sa);
  EXPECT_TRUE(sb->valid());
  EXPECT_FALSE(sa->valid());
  sa->~TrafficKeySchedule();
  sb->~TrafficKeySchedule();
  // (Four secret bytes in a row: a lone 0xA5 may be part of a pointer.)
  const unsigned char run[4] = {0xA5, 0xA5, 0xA5, 0xA5};
  for (const unsigned char* buf : {a, b}) {
    for (size_t i = 0; i + 4 <= sizeof(a); ++i) EXPECT_NE(std::memcmp(buf + i, run, 4), 0) << "secret left at " << i;
  }
  alignas(TrafficKeys) unsigned char t[sizeof(TrafficKeys)] = {};
  auto* tk = new (t) TrafficKeys();
  tk->set_secret(std::vector<uint8_t>(48, 0x5A));
  tk->~TrafficKeys();
  for (size_t i = 0; i < sizeof(t); ++i) EXPECT_EQ(t[i], 0) << "byte left at " << i;
}

TEST(KeySchedule, RecordLimitsKeepAMarginUnderThePublishedFigures) {
  // RFC 8446 5.5: 2^24.5 full records for AES-GCM.
  EXPECT_LT(static_cast<double>(RecordLimit(TlsCipher::kAes128Gcm)), 23726566.0);  // 2^24.5
  EXPECT_EQ(RecordLimit(TlsCipher::kAes128Gcm), RecordLimit(TlsCipher::kAes256Gcm));
  EXPECT_LT(RecordLimit(TlsCipher::kAes128Ccm), RecordLimit(TlsCipher::kAes128Gcm));
  EXPECT_GT(RecordLimit(TlsCipher::kChacha20Poly1305), uint64_t{1} << 40);
}


// --- the OpenSSL backend's export, checked against a GnuTLS peer ----------

// An OpenSSL client and a GnuTLS server on one connection: what each
// library says of a direction must be the same keys.
SessionPair CrossHandshake(TlsVersion v, TlsCipher c) {
  Listener l = Listener::Listen("127.0.0.1:0");
  TlsOptions so = ServerOptions(), co = ClientOptions();
  co.backend = TlsBackend::kOpenssl;
  so.backend = TlsBackend::kGnutls;
  so.policy.versions = co.policy.versions = {v};
  so.policy.ciphers = co.policy.ciphers = {c};
  auto accepted =
      std::async(std::launch::async, [&] { return HandshakeTls(l.AcceptFd(std::chrono::seconds(30)), so); });
  SessionPair p;
  p.client = HandshakeTls(ConnectStream(l.address(), std::chrono::seconds(10)), co);
  p.server = accepted.get();
  return p;
}

TlsDirection Opposite(TlsDirection d) {
  return d == TlsDirection::kTransmit ? TlsDirection::kReceive : TlsDirection::kTransmit;
}

class OpensslExport : public ::testing::TestWithParam<std::tuple<TlsVersion, TlsCipher>> {};

TEST_P(OpensslExport, KeysEqualTheGnutlsPeersInBothDirections) {
  const auto [v, c] = GetParam();
  SessionPair p = CrossHandshake(v, c);
  ASSERT_EQ(p.client->backend(), TlsBackend::kOpenssl);
  ASSERT_EQ(p.client->cipher(), c);
  for (TlsDirection dir : {TlsDirection::kTransmit, TlsDirection::kReceive}) {
    SCOPED_TRACE(dir == TlsDirection::kTransmit ? "client to server" : "server to client");
    const TrafficKeys mine = p.client->ExportKernelKeys(dir);
    const TrafficKeys theirs = p.server->ExportKernelKeys(Opposite(dir));
    EXPECT_EQ(Bytes(mine.key()), Bytes(theirs.key()));
    EXPECT_EQ(Bytes(mine.iv()), Bytes(theirs.iv()));
    EXPECT_EQ(Bytes(mine.secret()), Bytes(theirs.secret()));
    EXPECT_EQ(mine.secret().empty(), v == TlsVersion::kTls12);
    // GnuTLS may have sent TLS 1.3 session tickets the OpenSSL client has
    // not read yet; the client's own direction has no such records.
    if (dir == TlsDirection::kTransmit || v == TlsVersion::kTls12) {
      EXPECT_EQ(mine.rec_seq, theirs.rec_seq);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Suites, OpensslExport,
    ::testing::Combine(::testing::Values(TlsVersion::kTls13, TlsVersion::kTls12),
                       ::testing::Values(TlsCipher::kAes128Gcm, TlsCipher::kAes256Gcm, TlsCipher::kChacha20Poly1305)),
    [](const auto& info) {
      std::string n = std::string(ToString(std::get<0>(info.param))) + "_" + ToString(std::get<1>(info.param));
      for (char& ch : n) {
        if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
      }
      return n;
    });

// Our next key, derived from OpenSSL's exported secret, is the one a GnuTLS
// peer moves to when OpenSSL sends a KeyUpdate.
class OpensslNextKey : public ::testing::TestWithParam<TlsCipher> {};

TEST_P(OpensslNextKey, IsTheOneAGnutlsPeerFollowsTo) {
  SessionPair p = CrossHandshake(TlsVersion::kTls13, GetParam());
  auto* o = dynamic_cast<OpensslSession*>(p.client.get());
  auto* g = dynamic_cast<GnutlsSession*>(p.server.get());
  ASSERT_TRUE(o && g);
  const KernelCipher* row = FindKernelCipher(GetParam());
  ASSERT_NE(row, nullptr);
  TrafficKeySchedule ours(*row, GetParam(), o->ExportKernelKeys(TlsDirection::kTransmit));
  ASSERT_TRUE(ours.valid());
  for (int update = 1; update <= 3; ++update) {
    SCOPED_TRACE(update);
    CryptoInfo mine, theirs;
    std::string why;
    ASSERT_TRUE(ours.Next(mine, why)) << why;
    ASSERT_EQ(SSL_key_update(o->native(), SSL_KEY_UPDATE_NOT_REQUESTED), 1);
    ASSERT_EQ(SSL_write(o->native(), "x", 1), 1);  // the KeyUpdate, then a record under the new key
    char in = 0;
    ssize_t got;
    // GnuTLS answers "again" after it has taken the KeyUpdate (and when
    // its socket is non-blocking): wait for the record behind it.
    while ((got = gnutls_record_recv(g->native(), &in, 1)) == GNUTLS_E_AGAIN || got == GNUTLS_E_INTERRUPTED) {
      ASSERT_TRUE(WaitFdReadable(g->fd(), std::chrono::seconds(10)));
    }
    ASSERT_EQ(got, 1);
    TrafficKeys followed = g->ExportKernelKeys(TlsDirection::kReceive);
    // GnuTLS has read the one record under the new key; ours starts at 0.
    EXPECT_EQ(followed.rec_seq, (std::array<uint8_t, 8>{0, 0, 0, 0, 0, 0, 0, 1}));
    followed.rec_seq.fill(0);
    ASSERT_TRUE(FillCryptoInfo(*row, TlsVersion::kTls13, followed, theirs, why)) << why;
    ASSERT_EQ(mine.size(), theirs.size());
    EXPECT_EQ(std::memcmp(mine.data(), theirs.data(), mine.size()), 0)
        << "our next key differs from the one GnuTLS followed OpenSSL's KeyUpdate to";
  }
  EXPECT_EQ(o->key_updates_sent(), 3u);
  EXPECT_EQ(g->key_updates_received(), 3u);
}

INSTANTIATE_TEST_SUITE_P(Tls13Suites, OpensslNextKey,
                         ::testing::Values(TlsCipher::kAes128Gcm, TlsCipher::kAes256Gcm,
                                           TlsCipher::kChacha20Poly1305),
                         [](const auto& info) {
                           std::string n = ToString(info.param);
                           for (char& ch : n) {
                             if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           }
                           return n;
                         });

}  // namespace
}  // namespace ktm

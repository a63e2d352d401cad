// The OpenSSL backend beside GnuTLS, in one process on this host (no kernel
// TLS needed): sessions across the two libraries with data both ways, every
// kernel cipher and both versions, re-keying across them, the same
// rejections from either library, the allow-list, and SIGPIPE.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>

#include <future>
#include <optional>

#include "tests/tls_util.h"
#include "tls/openssl/openssl_session.h"

namespace ktm {
namespace {

using namespace testing;

void ExpectContains(const std::string& hay, const std::string& needle) {
  EXPECT_NE(hay.find(needle), std::string::npos) << "'" << needle << "' not in: " << hay;
}

struct End {
  std::unique_ptr<Channel> ch;
  TlsPathReport report;
  std::optional<Error> error;
};

End Establish(UniqueFd fd, const TlsOptions& o) {
  End e;
  try {
    e.ch = EstablishTls(std::move(fd), o, KtlsMode::kOff, ZeroCopyMode::kOff, &e.report);
  } catch (const Error& err) {
    e.error = err;
  }
  return e;
}

// One userspace connection: a client of backend `cb`, a server of `sb`.
std::pair<End, End> Connect(TlsOptions co, TlsOptions so, TlsBackend cb, TlsBackend sb) {
  co.backend = cb;
  so.backend = sb;
  Listener l = Listener::Listen("127.0.0.1:0");
  auto server = std::async(std::launch::async, [&] { return Establish(l.AcceptFd(std::chrono::seconds(10)), so); });
  End c = Establish(ConnectStream(l.address(), std::chrono::seconds(10)), co);
  return {std::move(c), server.get()};
}

std::string Name(TlsBackend b) { return LibraryName(b); }

constexpr std::pair<TlsBackend, TlsBackend> kCross[] = {{TlsBackend::kGnutls, TlsBackend::kOpenssl},
                                                        {TlsBackend::kOpenssl, TlsBackend::kGnutls}};

TEST(CrossBackend, EveryVersionAndCipherCarriesDataBothWays) {
  for (auto [cb, sb] : kCross) {
    for (TlsVersion v : {TlsVersion::kTls13, TlsVersion::kTls12}) {
      for (TlsCipher cipher : {TlsCipher::kAes128Gcm, TlsCipher::kAes256Gcm, TlsCipher::kChacha20Poly1305}) {
        SCOPED_TRACE(Name(cb) + " client, " + Name(sb) + " server, " + ToString(v) + " " + ToString(cipher));
        TlsOptions co = ClientOptions(), so = ServerOptions();
        co.policy.versions = so.policy.versions = {v};
        co.policy.ciphers = so.policy.ciphers = {cipher};
        auto [c, s] = Connect(co, so, cb, sb);
        ASSERT_TRUE(c.ch && s.ch) << (c.error ? c.error->what() : "") << (s.error ? s.error->what() : "");
        EXPECT_EQ(c.report.version, ToString(v));
        EXPECT_EQ(s.report.cipher, ToString(cipher));
        EXPECT_EQ(c.report.peer, "localhost");
        EXPECT_EQ(s.report.peer, "tls-migrate-client");
        EXPECT_EQ(ExchangeBothWays(*c.ch, *s.ch, 2u << 20), "");
      }
    }
  }
}

// Each end changes its key every 64 KiB (paced: GnuTLS refuses more than 8
// updates a second), and each side counts the other's updates exactly.
TEST(CrossBackend, RekeyAtALowByteLimitBothWaysCountsAgree) {
  for (auto [cb, sb] : kCross) {
    SCOPED_TRACE(Name(cb) + " client, " + Name(sb) + " server");
    TlsOptions co = ClientOptions(), so = ServerOptions();
    co.rekey_after_bytes = so.rekey_after_bytes = 64u << 10;
    auto [c, s] = Connect(co, so, cb, sb);
    ASSERT_TRUE(c.ch && s.ch);
    c.ch->set_io_timeout(std::chrono::seconds(10));
    s.ch->set_io_timeout(std::chrono::seconds(10));
    EXPECT_EQ(ExchangeBothWays(*c.ch, *s.ch, 16u << 20), "");
    const ChannelStats::Rekey cr = c.ch->stats().rekey, sr = s.ch->stats().rekey;
    EXPECT_GE(cr.sent, uint64_t{KeyUpdatePace::kPerWindow});
    EXPECT_GE(sr.sent, uint64_t{KeyUpdatePace::kPerWindow});
    EXPECT_EQ(cr.sent, sr.received);
    EXPECT_EQ(sr.sent, cr.received);
    RecordProperty(Name(cb) + "_to_" + Name(sb) + "_updates", std::to_string(cr.sent));
  }
}

// The subject both libraries print for the same certificate is the same
// string (what --tls-allow-client patterns match).
TEST(CrossBackend, PeerSubjectIsPrintedAlike) {
  std::string server_seen[2], client_seen[2];
  for (int i = 0; i < 2; ++i) {
    auto [cb, sb] = kCross[i];
    Listener l = Listener::Listen("127.0.0.1:0");
    TlsOptions co = ClientOptions(), so = ServerOptions();
    co.backend = cb;
    so.backend = sb;
    auto accepted =
        std::async(std::launch::async, [&] { return HandshakeTls(l.AcceptFd(std::chrono::seconds(10)), so); });
    auto client = HandshakeTls(ConnectStream(l.address(), std::chrono::seconds(10)), co);
    auto server = accepted.get();
    EXPECT_EQ(client->backend(), cb);
    EXPECT_EQ(server->backend(), sb);
    client_seen[i] = client->peer_subject();  // the server's certificate
    server_seen[i] = server->peer_subject();  // the client's certificate
  }
  ExpectContains(server_seen[0], "CN=tls-migrate-client");
  ExpectContains(client_seen[0], "CN=");
  EXPECT_EQ(server_seen[0], server_seen[1]) << "OpenSSL and GnuTLS print the client's subject differently";
  EXPECT_EQ(client_seen[0], client_seen[1]) << "OpenSSL and GnuTLS print the server's subject differently";
}

// --- the same rejection from either library -----------------------------

struct Rejection {
  const char* name;
  std::function<void(TlsOptions& co, TlsOptions& so)> set_up;
  bool server_detects;  // else the client does
  const char* phrase;
};

TEST(SameRejection, EachCertificateFailureHasTheSameKindWithEitherLibrary) {
  const Pki& p = Pki::Get();
  const std::vector<Rejection> cases = {
      {"untrusted CA",
       [&](TlsOptions&, TlsOptions& so) { so = ServerOptions(CredsDirFiles(p.other_ca_dir, TlsRole::kServer)); },
       false, "not signed by a trusted CA"},
      {"wrong name", [&](TlsOptions& co, TlsOptions&) { co.peer_name = "migration-dst.example"; }, false,
       "expected the name 'migration-dst.example' but the certificate holds DNS:localhost, IP:127.0.0.1, IP:::1"},
      {"revoked",
       [&](TlsOptions& co, TlsOptions& so) {
         so = ServerOptions({p.ca(), "", p.revoked_cert, p.revoked_key});
         co = ClientOptions({p.ca(), p.crl, p.client_cert(), p.client_key()});
       },
       false, "revoked by the CRL"},
      {"no client certificate", [&](TlsOptions& co, TlsOptions&) { co = ClientOptions({p.ca(), "", "", ""}); }, true,
       "presented no certificate, but one is required"},
  };
  for (const Rejection& r : cases) {
    std::optional<ErrorKind> kinds[2];
    for (TlsBackend b : kAllTlsBackends) {
      SCOPED_TRACE(std::string(r.name) + " with " + Name(b));
      TlsOptions co = ClientOptions(), so = ServerOptions();
      r.set_up(co, so);
      auto [c, s] = Connect(co, so, b, b);
      const End& detector = r.server_detects ? s : c;
      ASSERT_TRUE(detector.error.has_value()) << "not refused";
      ExpectContains(detector.error->what(), r.phrase);
      kinds[b == TlsBackend::kOpenssl] = detector.error->kind();
    }
    EXPECT_EQ(kinds[0], kinds[1]) << r.name;
    EXPECT_EQ(kinds[1], ErrorKind::kSecurity) << r.name;
  }
}

// The allow-list (OpenSSL server; the client may be either library): a
// verified client that matches no pattern is refused in the handshake, the
// client learns it from the alert (during its handshake or its first read).
TEST(AllowList, OpensslServerRefusesAClientNotOnTheList) {
  for (TlsBackend cb : kAllTlsBackends) {
    SCOPED_TRACE(Name(cb) + " client");
    TlsOptions co = ClientOptions(), so = ServerOptions();
    so.allowed_clients = {"CN=someone-else*", "other-host"};
    auto [c, s] = Connect(co, so, cb, TlsBackend::kOpenssl);
    ASSERT_TRUE(s.error.has_value());
    EXPECT_EQ(s.error->kind(), ErrorKind::kSecurity);
    ExpectContains(s.error->what(), "not on the allow-list");
    ExpectContains(s.error->what(), "CN=tls-migrate-client");
    if (c.ch) {
      uint8_t b[1];
      try {
        c.ch->read_all(b, 1);
        ADD_FAILURE() << "the refused client read data";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kSecurity) << e.what();
      }
    } else {
      EXPECT_EQ(c.error->kind(), ErrorKind::kSecurity) << c.error->what();
    }
  }
}

TEST(AllowList, ACommonNameOrSubjectPatternLetsTheClientIn) {
  for (const char* pattern : {"tls-migrate-client", "CN=tls-migrate-*"}) {
    SCOPED_TRACE(pattern);
    TlsOptions co = ClientOptions(), so = ServerOptions();
    so.allowed_clients = {"nobody", pattern};
    auto [c, s] = Connect(co, so, TlsBackend::kOpenssl, TlsBackend::kOpenssl);
    ASSERT_TRUE(c.ch && s.ch) << (s.error ? s.error->what() : "");
    EXPECT_EQ(ExchangeBothWays(*c.ch, *s.ch, 1u << 20), "");
  }
}

// OpenSSL writes with write(2), which raises SIGPIPE toward a closed peer;
// the backend keeps it away even when the process has not ignored it.
TEST(OpensslBackend, WritingToAClosedPeerIsAnErrorNotSigpipe) {
  struct sigaction old {};
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigaction(SIGPIPE, &dfl, &old);
  TlsOptions co = ClientOptions(), so = ServerOptions();
  auto [c, s] = Connect(co, so, TlsBackend::kOpenssl, TlsBackend::kOpenssl);
  ASSERT_TRUE(c.ch && s.ch);
  s.ch->close();  // FIN; the next write draws an RST, the one after EPIPE
  std::vector<uint8_t> buf(1 << 16, 1);
  try {
    for (int i = 0; i < 1000; ++i) c.ch->write_all(buf.data(), buf.size());
    ADD_FAILURE() << "64 MiB went to a closed peer";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kPeer) << e.what();
  }
  sigaction(SIGPIPE, &old, nullptr);
}

// A peer that does not speak TLS gets a plaintext alert before the close
// (OpenSSL sends none for a first record that is not TLS), so it can say
// "the other end needs TLS"; the server says the peer did not speak TLS.
TEST(OpensslFaults, APlaintextPeerGetsAnAlertBeforeTheClose) {
  Listener l = Listener::Listen("127.0.0.1:0");
  TlsOptions so = ServerOptions();
  so.backend = TlsBackend::kOpenssl;
  auto server = std::async(std::launch::async, [&] { return Establish(l.AcceptFd(std::chrono::seconds(10)), so); });
  UniqueFd raw = ConnectStream(l.address(), std::chrono::seconds(10));
  const std::string hello(64, 'K');  // like a plaintext channel hello: not a TLS record
  ASSERT_EQ(::send(raw.get(), hello.data(), hello.size(), MSG_NOSIGNAL), static_cast<ssize_t>(hello.size()));
  std::string got;
  char buf[64];
  for (ssize_t n; (n = ::recv(raw.get(), buf, sizeof(buf), 0)) > 0;) got.append(buf, static_cast<size_t>(n));
  ASSERT_EQ(got.size(), 7u);
  EXPECT_EQ(got[0], 21) << "an alert record";
  EXPECT_EQ(got[1], 3);
  EXPECT_EQ(got[5], 2) << "fatal";
  End s = server.get();
  ASSERT_TRUE(s.error);
  EXPECT_EQ(s.error->kind(), ErrorKind::kSecurity);
  ExpectContains(s.error->what(), "did not speak TLS");
}

// A connection cut without close_notify, between records or inside one,
// is truncation (kPeer) at an OpenSSL reader, whichever library wrote, and
// the reader sends no alert (OpenSSL 3.0 would send decode_error, which
// the writer would take for "refused our data").
TEST(OpensslFaults, ACutStreamIsTruncationAndDrawsNoAlert) {
  for (const bool mid_record : {false, true}) {
    for (const TlsBackend writer : {TlsBackend::kOpenssl, TlsBackend::kGnutls}) {
      SCOPED_TRACE(std::string(mid_record ? "inside a record, " : "between records, ") + Name(writer) + " writer");
      TlsOptions co = ClientOptions(), so = ServerOptions();
      co.backend = writer;
      so.backend = TlsBackend::kOpenssl;
      Listener l = Listener::Listen("127.0.0.1:0");
      auto server = std::async(std::launch::async, [&] { return Establish(l.AcceptFd(std::chrono::seconds(10)), so); });
      UniqueFd fd = ConnectStream(l.address(), std::chrono::seconds(10));
      UniqueFd raw(dup(fd.get()));
      End c = Establish(std::move(fd), co);
      End s = server.get();
      ASSERT_TRUE(c.ch && s.ch);
      const std::string data(1000, 'd');
      c.ch->write_all(data.data(), data.size());
      if (mid_record) {
        // The start of an application-data record that never ends.
        const uint8_t part[] = {23, 3, 3, 0, 64, 1, 2, 3, 4, 5, 6, 7};
        ASSERT_EQ(::send(raw.get(), part, sizeof(part), MSG_NOSIGNAL), static_cast<ssize_t>(sizeof(part)));
      }
      ::shutdown(raw.get(), SHUT_WR);  // the cut: a FIN, no close_notify
      std::vector<char> in(4096);
      size_t got = 0;
      try {
        for (;;) {
          iovec v{in.data(), in.size()};
          const ReadResult r = s.ch->readv(std::span<const iovec>(&v, 1));
          if (r.eof()) break;
          got += r.bytes;
        }
        ADD_FAILURE() << "the cut read as a clean end after " << got << " bytes";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kPeer) << e.what();
        ExpectContains(e.what(), "truncated");
      }
      EXPECT_EQ(got, data.size());
      s.ch->close();
      char b[64];
      EXPECT_EQ(::recv(raw.get(), b, sizeof(b), 0), 0) << "the reader answered the cut with bytes (an alert)";
    }
  }
}

// OpenSSL answers a record header whose version bytes changed in transit
// with protocol_version; after the handshake that is damage, as
// bad_record_mac is (exit 4 at the writer), not a peer's whim.
TEST(OpensslFaults, ProtocolVersionAfterTheHandshakeIsIntegrity) {
  EXPECT_EQ(AlertReceivedError(70, "read").kind(), ErrorKind::kIntegrity);
  EXPECT_EQ(AlertReceivedError(20, "read").kind(), ErrorKind::kIntegrity);
  EXPECT_EQ(AlertReceivedError(42, "read").kind(), ErrorKind::kSecurity);
}

TEST(OpensslBackend, LibraryVersionAndItsKtlsAbility) {
  ExpectContains(TlsLibraryVersion(TlsBackend::kOpenssl), "OpenSSL 3.");
  const std::string ability = TlsLibraryKtlsAbility(TlsBackend::kOpenssl);
  if (OpenSSL_version_num() < 0x30200000UL) {
    ExpectContains(ability, "TLS 1.2 send and receive, TLS 1.3 send");
  }
}

}  // namespace
}  // namespace ktm

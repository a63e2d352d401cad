// kTLS on a real kernel TLS implementation. Runs inside the VM started by
// scripts/run-vm-tests.sh (Debian's 6.1 kernel with tls.ko). On a kernel
// without TLS every test FAILS: this binary must never pass by skipping.
//
// Proves: the session really moved into the kernel (/proc/net/tls_stat
// counters move), data integrity both ways for every cipher and version we
// install, close_notify both ways, alert/NewSessionTicket/KeyUpdate
// handling (tickets: see the interop run), truncation and forgery detection, and that MSG_ZEROCOPY is not
// used on kTLS sockets.
#include <gtest/gtest.h>
#include <future>
#include <linux/tls.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/utsname.h>

#include "channel/zero_copy_sender.h"
#include "ktls/ktls.h"
#include "tls/handshake.h"
#include "tests/tls_util.h"
#include "tls/gnutls/gnutls_record_channel.h"

namespace ktm {
namespace {

using namespace testing;

class KtlsVm : public ::testing::Test {
 protected:
  void SetUp() override {
    std::optional<std::string> why = ProbeKtlsUlp();
    ASSERT_FALSE(why.has_value()) << "no kernel TLS here (" << *why
                                  << "): run this through `make test-ktls`, which boots a VM";
    // The feature probe (once per process) configures a socket of its own:
    // done before any test takes its tls_stat baseline.
    (void)ProbeKtlsKernelFeatures();
  }
};

struct Connected {
  TlsEnd client, server;
};

Connected Connect(Policy client_pol, Policy server_pol, const std::string& prio = kDefaultPriority,
                  bool keep_raw = false) {
  Listener l = Listener::Listen("127.0.0.1:0");
  TlsOptions so = ServerOptions();
  so.priority = prio;
  TlsOptions co = ClientOptions();
  co.priority = prio;
  auto fut = ServeOnce(l, so, server_pol, keep_raw);
  Connected c;
  c.client = ConnectTls(l.address(), co, client_pol, keep_raw);
  c.server = fut.get();
  return c;
}

uint64_t Stat(const char* name) {
  auto m = ReadTlsStat();
  auto it = m.find(name);
  return it == m.end() ? 0 : it->second;
}

constexpr Policy kKtls{KtlsMode::kRequire, ZeroCopyMode::kAuto};
constexpr Policy kUserspace{KtlsMode::kOff, ZeroCopyMode::kAuto};

TEST_F(KtlsVm, BothEndsInKernelLargeTransferBothWaysAndCountersMove) {
  const uint64_t tx0 = Stat("TlsTxSw"), rx0 = Stat("TlsRxSw");
  Connected c = Connect(kKtls, kKtls);
  ASSERT_TRUE(c.client.ch) << c.client.error;
  ASSERT_TRUE(c.server.ch) << c.server.error;
  EXPECT_EQ(c.client.report.kind, TlsPathKind::kKtlsKeyInstall) << c.client.report.Summary();
  EXPECT_EQ(c.server.report.kind, TlsPathKind::kKtlsKeyInstall);
  EXPECT_TRUE(c.client.report.zero_copy);
  // Two sockets each installed TX and RX in the kernel's software TLS.
  EXPECT_EQ(Stat("TlsTxSw") - tx0, 2u);
  EXPECT_EQ(Stat("TlsRxSw") - rx0, 2u);
  std::printf("  tls_stat after install: TlsTxSw %llu (+2) TlsRxSw %llu (+2) TlsCurrTxSw %llu\n",
              (unsigned long long)Stat("TlsTxSw"), (unsigned long long)Stat("TlsRxSw"),
              (unsigned long long)Stat("TlsCurrTxSw"));
  std::printf("  path: %s\n", c.client.report.Summary().c_str());
  EXPECT_EQ(ExchangeBothWays(*c.client.ch, *c.server.ch, 32u << 20), "");
  EXPECT_EQ(Stat("TlsDecryptError"), 0u);
}

TEST_F(KtlsVm, EveryCipherAndVersionInstallsAndCarriesData) {
  for (const char* prio : {"NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-128-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+AES-256-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.2:-CIPHER-ALL:+CHACHA20-POLY1305"}) {
    SCOPED_TRACE(prio);
    // kTLS on one side, GnuTLS userspace records on the other: proves the
    // kernel's records are byte-compatible with GnuTLS's in both directions.
    Connected c = Connect(kKtls, kUserspace, prio);
    ASSERT_TRUE(c.client.ch) << c.client.error;
    ASSERT_TRUE(c.server.ch) << c.server.error;
    EXPECT_EQ(c.client.report.kind, TlsPathKind::kKtlsKeyInstall);
    std::printf("  %s -> %s\n", prio, c.client.report.Summary().c_str());
    EXPECT_EQ(ExchangeBothWays(*c.client.ch, *c.server.ch, 4u << 20), "");
  }
}

TEST_F(KtlsVm, CloseNotifyBothWays) {
  Connected c = Connect(kKtls, kUserspace);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  // kTLS -> GnuTLS: our close_notify must read as a clean EOF there.
  c.client.ch->write_all("bye", 3);
  c.client.ch->shutdown(ShutdownHow::kWrite);
  char b[3];
  ASSERT_TRUE(c.server.ch->read_all(b, 3));
  EXPECT_FALSE(c.server.ch->read_all(b, 1));
  // GnuTLS -> kTLS: the kernel hands us an alert record; close_notify = EOF.
  c.server.ch->write_all("ok", 2);
  c.server.ch->shutdown(ShutdownHow::kWrite);
  ASSERT_TRUE(c.client.ch->read_all(b, 2));
  EXPECT_FALSE(c.client.ch->read_all(b, 1));
}

// close_notify to a peer that has gone away (reset): the sendmsg fails, so
// shutdown(kWrite) throws kPeer (channel.h's rule) and close_notify is not
// recorded as sent: a later write reports the reset, not "write after
// close_notify".
TEST_F(KtlsVm, CloseNotifyToAResetPeerIsAnErrorAndNotRecordedAsSent) {
  Connected c = Connect(kKtls, kUserspace, kDefaultPriority, /*keep_raw=*/true);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  ResetOnClose(c.server.raw_fd);
  c.server.ch->close();
  close(c.server.raw_fd);
  ASSERT_TRUE(WaitHangup(c.client.raw_fd)) << "the reset never arrived";
  for (int attempt = 0; attempt < 2; ++attempt) {
    try {
      c.client.ch->shutdown(ShutdownHow::kWrite);
      FAIL() << "close_notify reported sent to a peer that had reset the connection (attempt " << attempt << ")";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kPeer) << e.what();
    }
  }
  try {
    c.client.ch->write_all("x", 1);
    FAIL() << "a write to a reset peer succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kPeer) << e.what();
  }
  EXPECT_NO_THROW(c.client.ch->shutdown(ShutdownHow::kRead));
  EXPECT_NO_THROW(c.client.ch->shutdown(ShutdownHow::kBoth));
  close(c.client.raw_fd);
}

TEST_F(KtlsVm, FatalAlertIsAnErrorNamingIt) {
  Connected c = Connect(kKtls, kUserspace);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  auto* peer = dynamic_cast<GnutlsRecordChannel*>(c.server.ch.get());
  ASSERT_NE(peer, nullptr);
  ASSERT_EQ(gnutls_alert_send(peer->session().native(), GNUTLS_AL_FATAL, GNUTLS_A_INTERNAL_ERROR), 0);
  char b[1];
  try {
    c.client.ch->read_all(b, 1);
    FAIL() << "alert ignored";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("alert internal_error (80)"), std::string::npos) << e.what();
  }
}

// NewSessionTicket tolerance: GnuTLS servers send tickets only with a ticket
// key enabled, so the proof is Interop.OpensslSServerTls13WithClientCertAndTickets,
// which this harness also runs in the VM with kTLS required and which asserts
// that the kTLS channel skipped at least one ticket.

// Key updates (issue 19). Whether this kernel re-keys is probed; the probe
// is checked here against the kernel's version, the one place a version
// number is allowed to speak: Linux 6.14 brought TLS 1.3 re-keying.
bool KernelAtLeast(int major, int minor) {
  struct utsname u{};
  if (uname(&u) != 0) return false;
  int ma = 0, mi = 0;
  if (std::sscanf(u.release, "%d.%d", &ma, &mi) != 2) return false;
  return ma > major || (ma == major && mi >= minor);
}

TEST_F(KtlsVm, ProbeSaysWhatThisKernelCanDo) {
  const KtlsKernelFeatures& f = ProbeKtlsKernelFeatures();
  std::printf("  kernel re-keys kTLS: %s; TLS_RX_EXPECT_NO_PAD: %s\n", f.rekey_detail.c_str(),
              f.rx_no_pad_detail.c_str());
  EXPECT_EQ(f.rekey, KernelAtLeast(6, 14)) << f.rekey_detail;
  EXPECT_TRUE(f.rx_no_pad) << f.rx_no_pad_detail;  // 6.0+
}

ChannelStats::Rekey RekeyOf(const Channel& ch) { return ch.stats().rekey; }

// A GnuTLS userspace peer re-keys (without asking us to); our kTLS end
// follows it where the kernel can, and otherwise stops with a clear error.
TEST_F(KtlsVm, PeerKeyUpdateIsFollowedWhereTheKernelCanElseAClearError) {
  Connected c = Connect(kKtls, kUserspace);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  auto* peer = dynamic_cast<GnutlsRecordChannel*>(c.server.ch.get());
  const uint64_t rx_ok0 = Stat("TlsRxRekeyOk"), tx_ok0 = Stat("TlsTxRekeyOk");
  ASSERT_EQ(gnutls_session_key_update(peer->session().native(), 0), 0);
  c.server.ch->write_all("x", 1);
  char b[64];
  if (!ProbeKtlsKernelFeatures().rekey) {
    try {
      c.client.ch->read_all(b, 1);
      FAIL() << "KeyUpdate not detected";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("re-keyed"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("kTLS off"), std::string::npos) << e.what();
      EXPECT_EQ(e.remedy(), Remedy::kKtlsOff);
    }
    return;
  }
  ASSERT_TRUE(c.client.ch->read_all(b, 1));
  EXPECT_EQ(b[0], 'x');
  EXPECT_EQ(RekeyOf(*c.client.ch).received, 1u);
  EXPECT_EQ(RekeyOf(*c.client.ch).sent, 0u) << "the peer did not ask for ours";
  EXPECT_EQ(Stat("TlsRxRekeyOk") - rx_ok0, 1u);
  EXPECT_EQ(Stat("TlsTxRekeyOk") - tx_ok0, 0u);
  // And the other way, under our unchanged send key.
  c.client.ch->write_all("y", 1);
  ASSERT_TRUE(c.server.ch->read_all(b, 1));
  EXPECT_EQ(b[0], 'y');
  EXPECT_EQ(ExchangeBothWays(*c.client.ch, *c.server.ch, 4u << 20), "");
}

// GNUTLS_KU_PEER: the peer asks for our update too. We answer before our
// next data, and the peer (which follows our KeyUpdate) still reads it.
TEST_F(KtlsVm, PeerRequestedKeyUpdateIsAnsweredBeforeOurNextData) {
  if (!ProbeKtlsKernelFeatures().rekey) {
    GTEST_SKIP() << "kernel cannot re-key: covered by PeerKeyUpdateIsFollowedWhereTheKernelCanElseAClearError";
  }
  Connected c = Connect(kKtls, kUserspace);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  auto* peer = dynamic_cast<GnutlsRecordChannel*>(c.server.ch.get());
  const uint64_t rx_ok0 = Stat("TlsRxRekeyOk"), tx_ok0 = Stat("TlsTxRekeyOk");
  for (int round = 1; round <= 3; ++round) {  // back to back, each asking
    ASSERT_EQ(gnutls_session_key_update(peer->session().native(), GNUTLS_KU_PEER), 0);
  }
  c.server.ch->write_all("x", 1);
  char b[8];
  ASSERT_TRUE(c.client.ch->read_all(b, 1));
  EXPECT_EQ(RekeyOf(*c.client.ch).received, 3u);
  c.client.ch->write_all("y", 1);
  ASSERT_TRUE(c.server.ch->read_all(b, 1));
  EXPECT_EQ(b[0], 'y');
  // One answer for the three requests: the flag is "answer before the next
  // data", not a count.
  EXPECT_EQ(RekeyOf(*c.client.ch).sent, 1u);
  EXPECT_EQ(Stat("TlsRxRekeyOk") - rx_ok0, 3u);
  EXPECT_EQ(Stat("TlsTxRekeyOk") - tx_ok0, 1u);
  EXPECT_EQ(ExchangeBothWays(*c.client.ch, *c.server.ch, 4u << 20), "");
}

Connected ConnectRekeying(uint64_t after_bytes, const std::string& prio = kDefaultPriority) {
  Listener l = Listener::Listen("127.0.0.1:0");
  TlsOptions so = ServerOptions(), co = ClientOptions();
  so.priority = co.priority = prio;
  so.rekey_after_bytes = co.rekey_after_bytes = after_bytes;
  auto fut = ServeOnce(l, so, kKtls);
  Connected c;
  c.client = ConnectTls(l.address(), co, kKtls);
  c.server = fut.get();
  return c;
}

// Both ends in the kernel, both re-keying every 64 KiB while 32 MiB go each
// way at once: hundreds of updates per direction, the data intact, and the
// counts equal to what the kernel counted.
TEST_F(KtlsVm, BothKernelEndsReKeyHundredsOfTimesBothWaysWithTheLoweredLimit) {
  constexpr uint64_t kAfter = 64 << 10;
  constexpr size_t kLen = 32u << 20;
  for (const char* prio : {"NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-256-GCM",
                           "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+CHACHA20-POLY1305"}) {
    SCOPED_TRACE(prio);
    Connected c = ConnectRekeying(kAfter, prio);
    ASSERT_TRUE(c.client.ch) << c.client.error;
    ASSERT_TRUE(c.server.ch) << c.server.error;
    if (!ProbeKtlsKernelFeatures().rekey) {
      // 6.1: the send key cannot change, so nothing goes past the limit.
      std::vector<uint8_t> buf(1 << 20, 0x5A);
      try {
        c.client.ch->write_all(buf.data(), buf.size());
        FAIL() << "wrote past the key's limit";
      } catch (const Error& e) {
        EXPECT_EQ(e.kind(), ErrorKind::kSecurity) << e.what();
        EXPECT_NE(std::string(e.what()).find("cannot change"), std::string::npos) << e.what();
      }
      c.client.ch->shutdown(ShutdownHow::kBoth);
      uint64_t got = 0;
      try {
        for (;;) {
          const iovec v{buf.data(), buf.size()};
          ReadResult r = c.server.ch->readv(std::span<const iovec>(&v, 1));
          if (r.eof()) break;
          got += r.bytes;
        }
      } catch (const Error&) {  // truncation: no close_notify after the refusal
      }
      EXPECT_EQ(got, kAfter) << "exactly the bytes under the first key arrived";
      continue;
    }
    const uint64_t rx0 = Stat("TlsRxRekeyOk"), tx0 = Stat("TlsTxRekeyOk"), err0 = Stat("TlsRxRekeyError") +
                                                                                    Stat("TlsTxRekeyError");
    EXPECT_EQ(ExchangeBothWays(*c.client.ch, *c.server.ch, kLen), "");
    const auto a = RekeyOf(*c.client.ch), b = RekeyOf(*c.server.ch);
    std::printf("  %s: client sent %llu received %llu, server sent %llu received %llu; tls_stat TlsTxRekeyOk +%llu "
                "TlsRxRekeyOk +%llu\n",
                prio, (unsigned long long)a.sent, (unsigned long long)a.received, (unsigned long long)b.sent,
                (unsigned long long)b.received, (unsigned long long)(Stat("TlsTxRekeyOk") - tx0),
                (unsigned long long)(Stat("TlsRxRekeyOk") - rx0));
    // Updates for the byte limit are paced (8 per 1.5 s, for GnuTLS peers).
    EXPECT_GE(a.sent, 8u);
    EXPECT_GE(b.sent, 8u);
    EXPECT_EQ(a.sent, b.received);
    EXPECT_EQ(b.sent, a.received);
    EXPECT_EQ(Stat("TlsTxRekeyOk") - tx0, a.sent + b.sent);
    EXPECT_EQ(Stat("TlsRxRekeyOk") - rx0, a.received + b.received);
    EXPECT_EQ(Stat("TlsRxRekeyError") + Stat("TlsTxRekeyError"), err0);
    EXPECT_EQ(a.limit_bytes, kAfter);
    EXPECT_TRUE(a.can_rekey) << a.detail;
  }
}

// A TLS 1.3 peer may pad its records; with TLS_RX_EXPECT_NO_PAD the kernel
// then retries the record the slow way (counted), and the data is intact.
TEST_F(KtlsVm, PaddingPeerCostsARetryNotData) {
  Connected c = Connect(kKtls, kUserspace, "NORMAL:-VERS-ALL:+VERS-TLS1.3:-CIPHER-ALL:+AES-128-GCM");
  ASSERT_TRUE(c.client.ch && c.server.ch);
  const ChannelStats st = c.client.ch->stats();
  ASSERT_TRUE(st.rx_no_pad) << st.rx_no_pad_detail;
  auto* peer = dynamic_cast<GnutlsRecordChannel*>(c.server.ch.get());
  const uint64_t v0 = Stat("TlsRxNoPadViolation");
  std::vector<uint8_t> data(20000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  // Five padded records: 4096 bytes of data (the last 3616) and 200 bytes
  // of padding each, within TLS 1.3's 2^14 + 1 bytes of inner plaintext.
  for (size_t off = 0; off < data.size();) {
    const ssize_t n = gnutls_record_send2(peer->session().native(), data.data() + off,
                                          std::min<size_t>(4096, data.size() - off), 200, 0);
    ASSERT_GT(n, 0) << gnutls_strerror(static_cast<int>(n));
    off += static_cast<size_t>(n);
  }
  std::vector<uint8_t> got(data.size());
  ASSERT_TRUE(c.client.ch->read_all(got.data(), got.size()));
  EXPECT_EQ(got, data);
  EXPECT_GE(Stat("TlsRxNoPadViolation") - v0, 1u);
  std::printf("  TlsRxNoPadViolation +%llu for 5 padded records\n",
              (unsigned long long)(Stat("TlsRxNoPadViolation") - v0));
}

// The kernel attaches TLS only to an established socket: once the peer has
// half-closed (the socket is in CLOSE_WAIT) TCP_ULP answers ENOTCONN, and
// the reason says what happened (README: short streams). Deterministic: the
// server's session is moved only after the client's FIN has arrived.
TEST_F(KtlsVm, PeerThatHalfClosedBeforeTheMoveIsRefusedWithTheReason) {
  auto [client, server] = HandshakeSessions();
  ASSERT_EQ(::shutdown(client->fd(), SHUT_WR), 0);
  pollfd p{server->fd(), POLLRDHUP, 0};
  ASSERT_EQ(poll(&p, 1, 10000), 1) << "the FIN never arrived";
  const std::optional<std::string> why = InstallKtls(*server);
  ASSERT_TRUE(why.has_value()) << "the kernel took TLS on a half-closed socket";
  EXPECT_NE(why->find("ENOTCONN"), std::string::npos) << *why;
  EXPECT_NE(why->find("closed its side before kernel TLS could be set up"), std::string::npos) << *why;
}

TEST_F(KtlsVm, TruncationWithoutCloseNotifyIsReported) {
  Connected c = Connect(kKtls, kUserspace, kDefaultPriority, /*keep_raw=*/true);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  c.server.ch->write_all("partial", 7);
  ::shutdown(c.server.raw_fd, SHUT_RDWR);
  char b[7];
  ASSERT_TRUE(c.client.ch->read_all(b, 7));
  try {
    c.client.ch->read_all(b, 1);
    FAIL() << "truncation read as EOF";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("without close_notify"), std::string::npos) << e.what();
  }
  close(c.server.raw_fd);
}

TEST_F(KtlsVm, ForgedRecordIsRejectedByTheKernel) {
  const uint64_t err0 = Stat("TlsDecryptError");
  Connected c = Connect(kKtls, kUserspace, kDefaultPriority, /*keep_raw=*/true);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  // Let the tickets through first so the forged record is the next one.
  c.server.ch->write_all("ok", 2);
  char ok[2];
  ASSERT_TRUE(c.client.ch->read_all(ok, 2));
  uint8_t forged[5 + 64] = {23, 3, 3, 0, 64};
  for (size_t i = 5; i < sizeof(forged); ++i) forged[i] = static_cast<uint8_t>(i * 13);
  ASSERT_EQ(write(c.server.raw_fd, forged, sizeof(forged)), (ssize_t)sizeof(forged));
  char b[1];
  try {
    c.client.ch->read_all(b, 1);
    FAIL() << "forged record accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), EBADMSG) << e.what();
  }
  EXPECT_EQ(Stat("TlsDecryptError") - err0, 1u);
  close(c.server.raw_fd);
}

TEST_F(KtlsVm, KernelRefusesMsgZerocopyOnKtlsSocketSoWeNeverPassIt) {
  Connected c = Connect(kKtls, kKtls, kDefaultPriority, /*keep_raw=*/true);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  int one = 1;
  int rc = setsockopt(c.client.raw_fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one));
  if (rc == 0) {
    char buf[64 << 10] = {};
    ssize_t n = send(c.client.raw_fd, buf, sizeof(buf), MSG_ZEROCOPY);
    EXPECT_EQ(n, -1);
    EXPECT_EQ(errno, EOPNOTSUPP);
  }
  // Our channel's zero-copy writes still work (synchronous kernel encryption).
  std::vector<uint8_t> data(1 << 20, 0x5a);
  ZeroCopyIds ids = c.client.ch->write_all(data.data(), data.size(), kWriteZeroCopy);
  EXPECT_TRUE(ids.empty());  // nothing pinned: buffer reusable at once
  std::vector<uint8_t> in(data.size());
  ASSERT_TRUE(c.server.ch->read_all(in.data(), in.size()));
  EXPECT_EQ(in, data);
  close(c.client.raw_fd);
  close(c.server.raw_fd);
}

TEST_F(KtlsVm, NonBlockingReadsReportWouldBlockForSmallAndLargeBuffers) {
  Connected c = Connect(kKtls, kKtls);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  c.client.ch->set_blocking(false);
  // Small buffers go through the scratch record, large ones straight to the
  // caller: both must say "would block" on an empty socket and nothing else.
  std::vector<uint8_t> small(64), large(1 << 20);
  for (auto* buf : {&small, &large}) {
    iovec v{buf->data(), buf->size()};
    ReadResult r = c.client.ch->readv(std::span<const iovec>(&v, 1));
    EXPECT_TRUE(r.would_block);
    EXPECT_EQ(r.bytes, 0u);
  }
  c.server.ch->write_all("late", 4);
  c.client.ch->set_blocking(true);
  char b[4];
  ASSERT_TRUE(c.client.ch->read_all(b, 4));
  EXPECT_EQ(std::string(b, 4), "late");
}

TEST_F(KtlsVm, IoUringSendZcIsRefusedOnKtlsSocketsWithTheReason) {
  Connected c = Connect(kKtls, kKtls);
  ASSERT_TRUE(c.client.ch && c.server.ch);
  auto* k = dynamic_cast<KtlsChannel*>(c.client.ch.get());
  ASSERT_NE(k, nullptr);
  std::optional<std::string> why = ProbeSendZc(k->fd());
  ASSERT_TRUE(why.has_value()) << "kernel accepted SEND_ZC on a kTLS socket";
  EXPECT_NE(why->find("EOPNOTSUPP"), std::string::npos) << *why;
  // The zero-length probe put nothing on the wire: the stream still works.
  c.client.ch->write_all("after-probe", 11);
  char b[11];
  ASSERT_TRUE(c.server.ch->read_all(b, 11));
  EXPECT_EQ(std::string(b, 11), "after-probe");
}

}  // namespace
}  // namespace ktm

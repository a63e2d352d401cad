// The C API (include/ktls_migrate.h) in process, on real loopback sockets
// with real certificates: the status and message of each failure a caller
// meets (missing file, wrong hostname, peer gone, bad arguments, a buffer
// too small), zero-copy writes with ids and the release callback, and
// migrations into the caller's buffer, verified byte for byte (also a reused
// buffer and a live image whose pages turn zero and back).
#include "ktls_migrate.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "capi/channel_wrap.h"
#include "channel/socket_channel.h"
#include "tests/page_script.h"
#include "tests/test_util.h"

namespace {

using ktm::testing::TempDir;

bool Has(const char* s, const std::string& needle) { return std::string(s).find(needle) != std::string::npos; }

// The backend this test binary runs with (tests/backends.bzl: capi_test
// with GnuTLS, capi_test_openssl with KTM_TEST_TLS_BACKEND=openssl).
ktm_tls_backend TestBackend() {
  const char* b = getenv("KTM_TEST_TLS_BACKEND");
  return b && std::string(b) == "openssl" ? KTM_TLS_BACKEND_OPENSSL : KTM_TLS_BACKEND_GNUTLS;
}
ktm_tls_backend OtherBackend(ktm_tls_backend b) {
  return b == KTM_TLS_BACKEND_OPENSSL ? KTM_TLS_BACKEND_GNUTLS : KTM_TLS_BACKEND_OPENSSL;
}

struct Pki {
  TempDir dir;
  std::string path = dir.path + "/pki";
  Pki() { EXPECT_EQ(ktm_creds_generate(path.c_str(), "localhost", "127.0.0.1"), KTM_OK) << ktm_last_error(); }
  ktm_config* Config(ktm_role role, const char* hostname = nullptr, ktm_tls_backend b = TestBackend()) const {
    ktm_config* c = ktm_config_new();
    EXPECT_EQ(ktm_config_set_tls_backend(c, b), KTM_OK) << ktm_last_error();
    ktm_creds* creds = ktm_creds_load_dir(path.c_str(), role);
    EXPECT_NE(creds, nullptr) << ktm_last_error();
    EXPECT_EQ(ktm_config_set_creds(c, creds), KTM_OK);
    ktm_creds_free(creds);  // the config keeps its own reference
    if (hostname) ktm_config_set_hostname(c, hostname);
    ktm_config_set_io_timeout_ms(c, 10000);
    return c;
  }
};

TEST(CApi, MissingCredentialFilesAreNamed) {
  EXPECT_EQ(ktm_creds_load_dir("/nonexistent/creds", KTM_SERVER), nullptr);
  EXPECT_EQ(ktm_last_status(), KTM_E_SECURITY);
  EXPECT_TRUE(Has(ktm_last_error(), "/nonexistent/creds")) << ktm_last_error();
  EXPECT_TRUE(Has(ktm_last_error(), "ca-cert.pem")) << ktm_last_error();
  EXPECT_STREQ(ktm_status_name(ktm_last_status()), "security");
  // An explicit file that cannot be read is a local I/O error naming it
  // (a creds dir without its files, above, is a configuration refusal).
  Pki pki;
  const std::string ca = pki.path + "/ca-cert.pem", cert = pki.path + "/server-cert.pem";
  EXPECT_EQ(ktm_creds_load_files(ca.c_str(), cert.c_str(), "/nonexistent/key.pem", nullptr, KTM_SERVER), nullptr);
  EXPECT_EQ(ktm_last_status(), KTM_E_LOCAL_IO);
  EXPECT_TRUE(Has(ktm_last_error(), "/nonexistent/key.pem")) << ktm_last_error();
}

TEST(CApi, BadArgumentsAreUsageErrors) {
  ktm_config* c = ktm_config_new();
  EXPECT_EQ(ktm_config_set_channels(c, 0), KTM_E_USAGE);
  EXPECT_TRUE(Has(ktm_last_error(), "1..64")) << ktm_last_error();
  // Values a C caller can pass that name no enumerator (within each enum's
  // range, so the C++ test itself stays defined).
  EXPECT_EQ(ktm_config_set_ktls(c, static_cast<ktm_policy>(3)), KTM_E_USAGE);
  EXPECT_TRUE(Has(ktm_last_error(), "KTM_REQUIRE")) << ktm_last_error();
  EXPECT_EQ(ktm_config_set_digest(c, static_cast<ktm_digest>(3)), KTM_E_USAGE);
  // TLS (the default) without credentials says what to do.
  EXPECT_EQ(ktm_channel_connect("127.0.0.1:1", c), nullptr);
  EXPECT_EQ(ktm_last_status(), KTM_E_USAGE);
  EXPECT_TRUE(Has(ktm_last_error(), "ktm_config_set_creds")) << ktm_last_error();
  std::vector<uint8_t> mem(8192);
  EXPECT_EQ(ktm_migrate_source("127.0.0.1:1", c, mem.data(), mem.size(), 4096, nullptr, nullptr, nullptr, nullptr,
                               nullptr),
            KTM_E_USAGE);
  EXPECT_TRUE(Has(ktm_last_error(), "ops")) << ktm_last_error();
  EXPECT_EQ(ktm_config_set_tls(nullptr, 0), KTM_E_USAGE);
  ktm_config_free(c);
  ktm_config_free(nullptr);  // NULL is fine everywhere a handle is freed
  ktm_channel_free(nullptr);
  ktm_report_free(nullptr);
}

TEST(CApi, WrongHostnameIsRefusedOnBothSides) {
  Pki pki;
  ktm_listener* l = ktm_listen("127.0.0.1:0");
  ASSERT_NE(l, nullptr) << ktm_last_error();
  ktm_config* srv = pki.Config(KTM_SERVER);
  ktm_config* cli = pki.Config(KTM_CLIENT, "wrong.example");
  auto server = std::async(std::launch::async, [&] {
    ktm_channel* ch = ktm_channel_accept(l, srv, 10000);
    const ktm_status st = ch ? KTM_OK : ktm_last_status();
    ktm_channel_free(ch);
    return st;
  });
  ktm_channel* ch = ktm_channel_connect(ktm_listener_address(l), cli);
  EXPECT_EQ(ch, nullptr);
  EXPECT_EQ(ktm_last_status(), KTM_E_SECURITY);
  EXPECT_TRUE(Has(ktm_last_error(), "wrong.example")) << ktm_last_error();
  EXPECT_NE(server.get(), KTM_OK);  // the server sees the refusal, never a channel
  ktm_config_free(srv);
  ktm_config_free(cli);
  ktm_listener_free(l);
}

TEST(CApi, PeerGoneIsAPeerError) {
  Pki pki;
  ktm_listener* l = ktm_listen("127.0.0.1:0");
  ktm_config* srv = pki.Config(KTM_SERVER);
  ktm_config* cli = pki.Config(KTM_CLIENT);
  auto server = std::async(std::launch::async, [&] { return ktm_channel_accept(l, srv, 10000); });
  ktm_channel* ch = ktm_channel_connect(ktm_listener_address(l), cli);
  ASSERT_NE(ch, nullptr) << ktm_last_error();
  ktm_channel* peer = server.get();
  ASSERT_NE(peer, nullptr);
  ktm_channel_free(peer);  // gone without close_notify
  char buf[64];
  EXPECT_EQ(ktm_channel_read_all(ch, buf, sizeof(buf)), KTM_E_PEER);
  EXPECT_STRNE(ktm_last_error(), "");
  ktm_channel_free(ch);
  // Nobody listening at all.
  const std::string addr = ktm_listener_address(l);
  ktm_listener_free(l);
  ktm_config_set_connect_timeout_ms(cli, 2000);
  EXPECT_EQ(ktm_channel_connect(addr.c_str(), cli), nullptr);
  EXPECT_EQ(ktm_last_status(), KTM_E_PEER) << ktm_last_error();
  ktm_config_free(srv);
  ktm_config_free(cli);
}

struct Released {
  uint64_t count = 0, last = 0;
};

void OnRelease(void* user, uint64_t first, uint64_t last) {
  auto* r = static_cast<Released*>(user);
  r->count += last - first + 1;
  r->last = last;
}

// Plaintext (MSG_ZEROCOPY) and TLS: write ids, is_released, the callback,
// flush, and what arrived.
TEST(CApi, ZeroCopyWritesAreTrackedAndArriveIntact) {
  Pki pki;
  for (bool tls : {false, true}) {
    SCOPED_TRACE(tls ? "tls" : "plaintext");
    ktm_listener* l = ktm_listen("127.0.0.1:0");
    ktm_config* srv = pki.Config(KTM_SERVER);
    ktm_config* cli = pki.Config(KTM_CLIENT);
    if (!tls) {
      ktm_config_set_tls(srv, 0);
      ktm_config_set_tls(cli, 0);
    }
    constexpr size_t kChunk = 1 << 20, kCount = 16;
    std::vector<uint8_t> data(kChunk * kCount);
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 131 + 7);
    auto server = std::async(std::launch::async, [&] {
      std::vector<uint8_t> got(data.size());
      ktm_channel* ch = ktm_channel_accept(l, srv, 10000);
      if (!ch) return std::vector<uint8_t>();
      if (ktm_channel_read_all(ch, got.data(), got.size()) != KTM_OK) got.clear();
      size_t n = 1;
      char extra;
      ktm_channel_read(ch, &extra, 1, &n);  // the client's close_notify: 0 bytes
      if (n != 0) got.clear();
      ktm_channel_free(ch);
      return got;
    });
    ktm_channel* ch = ktm_channel_connect(ktm_listener_address(l), cli);
    ASSERT_NE(ch, nullptr) << ktm_last_error();
    EXPECT_STRNE(ktm_channel_path(ch), "");
    Released rel;
    ASSERT_EQ(ktm_channel_set_release_callback(ch, OnRelease, &rel), KTM_OK);
    uint64_t first = 0, last = 0;
    for (size_t i = 0; i < kCount; ++i) {
      ASSERT_EQ(ktm_channel_write(ch, data.data() + i * kChunk, kChunk, KTM_WRITE_ZERO_COPY, &first, &last), KTM_OK)
          << ktm_last_error();
    }
    ASSERT_EQ(ktm_channel_flush(ch), KTM_OK) << ktm_last_error();
    if (ktm_channel_is_zero_copy(ch) && !tls) {
      EXPECT_LE(first, last);  // zero copy: the writes had ids
      EXPECT_EQ(ktm_channel_is_released(ch, last), 1);
      EXPECT_EQ(rel.last, last);
      EXPECT_GE(rel.count, kCount);
    } else {
      EXPECT_GT(first, last);  // copied: nothing pending
    }
    ASSERT_EQ(ktm_channel_shutdown(ch, KTM_SHUT_WRITE), KTM_OK) << ktm_last_error();
    const std::vector<uint8_t> got = server.get();
    EXPECT_TRUE(got == data);
    ktm_channel_free(ch);
    ktm_config_free(srv);
    ktm_config_free(cli);
    ktm_listener_free(l);
  }
}

// ktm_channel_is_released(ch, id) promises that every write up to and
// including `id` is released. io_uring delivers notifications out of order:
// a SEND_ZC the socket refuses (EAGAIN, nothing pinned) is notified at once,
// while the write before it still has bytes pinned in the send queue of a
// peer that does not read. The later id is released, the earlier is not, so
// the C API must answer 0 for the later id until the earlier one is done.
TEST(CApi, IsReleasedCoversEveryEarlierWriteWithOutOfOrderCompletions) {
  using namespace std::chrono_literals;
  ktm::SocketOptions uring;
  uring.backend = ktm::SendBackend::kIoUring;
  auto p = ktm::testing::ConnectedPair("127.0.0.1:0", uring);
  ASSERT_EQ(p.client->backend(), ktm::SendBackend::kIoUring) << p.client->backend_reason();
  ktm::SocketChannel* client = p.client.get();
  ktm_channel* ch = ktm::WrapChannelForCApi(std::move(p.client), /*zero_copy=*/true);

  ktm::testing::Mapping data(8u << 20);
  ktm::testing::FillPattern(data.data(), data.size(), 17);
  constexpr size_t kWrite = 64 << 10;
  client->set_blocking(false);
  uint64_t accepted_last = 0;  // id of the last write the kernel took
  ktm::ZeroCopyIds refused;     // the request that found the socket full
  for (size_t off = 0;; off = (off + kWrite) % (data.size() - kWrite)) {
    iovec v{data.data() + off, kWrite};
    const ktm::WriteResult r = client->writev(std::span<const iovec>(&v, 1), ktm::kWriteZeroCopy);
    if (r.would_block) {
      refused = r.zc;
      break;
    }
    ASSERT_FALSE(r.zc.empty());
    accepted_last = r.zc.end - 1;
  }
  client->set_blocking(true);
  ASSERT_EQ(refused.end - refused.first, 1u) << "the refused request should have had one id";
  const uint64_t later = refused.first;
  ASSERT_GT(later, accepted_last);
  // Wait (bounded) for the refused request's notification: nothing was pinned.
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!client->is_released(ktm::ZeroCopyIds{later, later + 1}) && std::chrono::steady_clock::now() < deadline) {
    client->try_flush();
    std::this_thread::sleep_for(1ms);
  }
  ASSERT_TRUE(client->is_released(ktm::ZeroCopyIds{later, later + 1}));
  ASSERT_FALSE(client->is_released(ktm::ZeroCopyIds{accepted_last, accepted_last + 1}))
      << "the peer is not reading: the last accepted write must still be pinned";
  // Out of order for real: `later` is released, `accepted_last` < `later` is not.
  EXPECT_EQ(ktm_channel_is_released(ch, later), 0)
      << "write " << accepted_last << " is still held by the kernel";
  EXPECT_EQ(ktm_channel_is_released(ch, accepted_last), 0);

  // Once the peer reads, everything is released and the answer turns to 1.
  std::thread rx([&] { ktm::testing::DrainAndHash(*p.server); });
  ASSERT_EQ(ktm_channel_flush(ch), KTM_OK) << ktm_last_error();
  EXPECT_EQ(ktm_channel_is_released(ch, later), 1);
  EXPECT_EQ(ktm_channel_is_released(ch, accepted_last), 1);
  // An id never handed out is not released.
  EXPECT_EQ(ktm_channel_is_released(ch, later + 1000), 0);
  ASSERT_EQ(ktm_channel_shutdown(ch, KTM_SHUT_WRITE), KTM_OK) << ktm_last_error();
  rx.join();
  ktm_channel_free(ch);
}

// The failure path answers 0 and says why, like every other C API call.
TEST(CApi, IsReleasedFailureSetsTheLastError) {
  EXPECT_EQ(ktm_channel_is_released(nullptr, 0), 0);
  EXPECT_EQ(ktm_last_status(), KTM_E_USAGE);
  EXPECT_TRUE(Has(ktm_last_error(), "channel")) << ktm_last_error();
}

struct Image {
  std::vector<uint8_t>* mem;
  bool reported = false;
};

void CollectAll(void* user, ktm_page_list* out) {
  auto* img = static_cast<Image*>(user);
  if (img->reported) return;
  img->reported = true;
  std::vector<uint64_t> pages(img->mem->size() / 4096);
  for (size_t i = 0; i < pages.size(); ++i) pages[i] = i;
  ktm_page_list_append(out, pages.data(), pages.size());
}

struct Aligned {
  uint8_t* p;
  explicit Aligned(size_t n) : p(static_cast<uint8_t*>(aligned_alloc(4096, n))) {}
  ~Aligned() { free(p); }
};

TEST(CApi, MigrationIntoTheCallersBufferAndABufferTooSmall) {
  Pki pki;
  constexpr size_t kSize = 8u << 20;
  Aligned src_mem(kSize);
  std::vector<uint8_t> shadow(kSize);
  for (size_t i = 0; i < kSize; ++i) shadow[i] = src_mem.p[i] = static_cast<uint8_t>((i >> 12) ^ (i * 13));
  for (size_t dst_size : {kSize, kSize - 4096}) {
    SCOPED_TRACE(dst_size == kSize ? "fits" : "too small");
    ktm_listener* l = ktm_listen("127.0.0.1:0");
    ktm_config* srv = pki.Config(KTM_SERVER);
    ktm_config* cli = pki.Config(KTM_CLIENT);
    ktm_config_set_channels(cli, 2);
    ktm_config_set_digest(cli, KTM_DIGEST_SHA256);
    std::vector<uint8_t> dst(dst_size);
    std::string dst_err;
    auto server = std::async(std::launch::async, [&] {
      ktm_report* rep = nullptr;
      const ktm_status st =
          ktm_migrate_destination(l, srv, nullptr, dst.data(), dst.size(), 20000, nullptr, nullptr, &rep);
      if (st != KTM_OK) dst_err = ktm_last_error();
      return std::make_pair(st, rep);
    });
    Image img{&shadow};
    ktm_source_ops ops{CollectAll, nullptr, 0};
    ktm_report* rep = nullptr;
    const ktm_status st =
        ktm_migrate_source(ktm_listener_address(l), cli, src_mem.p, kSize, 4096, &ops, &img, nullptr, nullptr, &rep);
    const std::string src_err = st == KTM_OK ? "" : ktm_last_error();
    auto [dst_st, dst_rep] = server.get();
    if (dst_size == kSize) {
      ASSERT_EQ(st, KTM_OK) << src_err;
      ASSERT_EQ(dst_st, KTM_OK) << dst_err;
      EXPECT_EQ(std::memcmp(dst.data(), shadow.data(), kSize), 0);
      EXPECT_STREQ(ktm_report_digest(rep), ktm_report_digest(dst_rep));
      EXPECT_STREQ(ktm_report_digest_algorithm(dst_rep), "sha256");
      EXPECT_EQ(ktm_report_channel_count(rep), 2u);
      EXPECT_NE(ktm_report_channel_path(rep, 1), nullptr);
      EXPECT_EQ(ktm_report_channel_path(rep, 2), nullptr);
      EXPECT_EQ(ktm_report_image_bytes(dst_rep), kSize);
      EXPECT_TRUE(Has(ktm_report_json(rep), "\"digest_algorithm\":\"sha256\"")) << ktm_report_json(rep);
    } else {
      // Refused before any page, and both ends say the same thing.
      EXPECT_EQ(st, KTM_E_LOCAL_IO) << src_err;
      EXPECT_EQ(dst_st, KTM_E_LOCAL_IO) << dst_err;
      EXPECT_NE(dst_err.find("not enough space"), std::string::npos) << dst_err;
      EXPECT_NE(src_err.find("does not fit"), std::string::npos) << src_err;
      EXPECT_EQ(rep, nullptr);
    }
    ktm_report_free(rep);
    ktm_report_free(dst_rep);
    ktm_config_free(srv);
    ktm_config_free(cli);
    ktm_listener_free(l);
  }
}

// ktm_config_set_rekey_after reaches the channels (userspace TLS here),
// and the report's JSON says how often each channel changed keys.
TEST(CApi, RekeyAfterChangesKeysAndTheReportSaysSo) {
  Pki pki;
  constexpr size_t kSize = 8u << 20;
  Aligned src_mem(kSize);
  std::vector<uint8_t> shadow(kSize);
  for (size_t i = 0; i < kSize; ++i) shadow[i] = src_mem.p[i] = static_cast<uint8_t>((i >> 12) ^ (i * 7));
  ktm_listener* l = ktm_listen("127.0.0.1:0");
  ktm_config* srv = pki.Config(KTM_SERVER);
  ktm_config* cli = pki.Config(KTM_CLIENT);
  for (ktm_config* c : {srv, cli}) {
    ASSERT_EQ(ktm_config_set_ktls(c, KTM_OFF), KTM_OK);
    ASSERT_EQ(ktm_config_set_rekey_after(c, 256u << 10), KTM_OK);
  }
  ktm_config_set_channels(cli, 1);
  std::vector<uint8_t> dst(kSize);
  auto server = std::async(std::launch::async, [&] {
    ktm_report* rep = nullptr;
    const ktm_status st = ktm_migrate_destination(l, srv, nullptr, dst.data(), dst.size(), 20000, nullptr, nullptr, &rep);
    return std::make_pair(st, rep);
  });
  Image img{&shadow};
  ktm_source_ops ops{CollectAll, nullptr, 0};
  ktm_report* rep = nullptr;
  const ktm_status st =
      ktm_migrate_source(ktm_listener_address(l), cli, src_mem.p, kSize, 4096, &ops, &img, nullptr, nullptr, &rep);
  ASSERT_EQ(st, KTM_OK) << ktm_last_error();
  auto [dst_st, dst_rep] = server.get();
  ASSERT_EQ(dst_st, KTM_OK);
  EXPECT_EQ(std::memcmp(dst.data(), shadow.data(), kSize), 0);
  // 8 MiB at 256 KiB: the 8 updates a GnuTLS peer takes per window.
  // The detail names the library that re-keyed: the backend under test.
  const std::string lib = TestBackend() == KTM_TLS_BACKEND_OPENSSL ? "OpenSSL" : "GnuTLS";
  EXPECT_TRUE(Has(ktm_report_json(rep), "\"rekey\":{\"detail\":\"" + lib)) << ktm_report_json(rep);
  EXPECT_TRUE(Has(ktm_report_json(rep), "\"limit_bytes\":262144,\"limit_records\":16777216,"
                                       "\"possible\":true,\"received\":0,\"sent\":8}"))
      << ktm_report_json(rep);
  EXPECT_TRUE(Has(ktm_report_json(dst_rep), "\"received\":8,\"sent\":0}")) << ktm_report_json(dst_rep);
  EXPECT_TRUE(Has(ktm_report_json(rep), "\"rx_no_pad\":false")) << ktm_report_json(rep);
  ktm_report_free(rep);
  ktm_report_free(dst_rep);
  ktm_config_free(srv);
  ktm_config_free(cli);
  ktm_listener_free(l);
}

struct Scripted {
  uint8_t* mem;
  unsigned calls = 0;
};

void CollectScripted(void* user, ktm_page_list* out) {
  auto* s = static_cast<Scripted*>(user);
  std::vector<uint64_t> pages;
  ktm::testing::PageScript::Apply(s->calls++, s->mem, &pages);
  ktm_page_list_append(out, pages.data(), pages.size());
}

// The caller's buffer is reused memory (0xA5 everywhere) and the live image
// has zero pages in the first iteration and pages that turn from data to
// zero and back in later ones: KTM_OK must mean the buffer now holds the
// source's image, byte for byte, zero pages included.
TEST(CApi, ReusedBufferHoldsTheSourceImageIncludingZeroPages) {
  using ktm::testing::PageScript;
  Pki pki;
  for (int channels : {1, 3}) {
    SCOPED_TRACE(std::to_string(channels) + " channel(s)");
    ktm_listener* l = ktm_listen("127.0.0.1:0");
    ktm_config* srv = pki.Config(KTM_SERVER);
    ktm_config* cli = pki.Config(KTM_CLIENT);
    ktm_config_set_channels(cli, channels);
    ktm_config_set_max_iterations(cli, PageScript::kIterations);
    Aligned src_mem(PageScript::kBytes);
    std::vector<uint8_t> dst(PageScript::kBytes, 0xA5);
    std::string dst_err;
    auto server = std::async(std::launch::async, [&] {
      ktm_report* rep = nullptr;
      const ktm_status st =
          ktm_migrate_destination(l, srv, nullptr, dst.data(), dst.size(), 20000, nullptr, nullptr, &rep);
      if (st != KTM_OK) dst_err = ktm_last_error();
      return std::make_pair(st, rep);
    });
    Scripted script{src_mem.p};
    ktm_source_ops ops{CollectScripted, nullptr, 1};
    ktm_report* rep = nullptr;
    const ktm_status st = ktm_migrate_source(ktm_listener_address(l), cli, src_mem.p, PageScript::kBytes,
                                             PageScript::kPageSize, &ops, &script, nullptr, nullptr, &rep);
    const std::string src_err = st == KTM_OK ? "" : ktm_last_error();
    auto [dst_st, dst_rep] = server.get();
    ASSERT_EQ(st, KTM_OK) << src_err;
    ASSERT_EQ(dst_st, KTM_OK) << dst_err;
    EXPECT_EQ(script.calls, 5u);  // the whole script ran
    EXPECT_EQ(ktm_report_iterations(rep), PageScript::kIterations);
    EXPECT_STREQ(ktm_report_digest(rep), ktm_report_digest(dst_rep));
    size_t differing = 0, first = PageScript::kPages;
    for (size_t p = 0; p < PageScript::kPages; ++p) {
      const size_t off = p * PageScript::kPageSize;
      if (std::memcmp(dst.data() + off, src_mem.p + off, PageScript::kPageSize) != 0) {
        ++differing;
        first = std::min(first, p);
      }
    }
    EXPECT_EQ(differing, 0u) << "pages differing from the source, the first: " << first;
    ktm_report_free(rep);
    ktm_report_free(dst_rep);
    ktm_config_free(srv);
    ktm_config_free(cli);
    ktm_listener_free(l);
  }
}

}  // namespace

namespace {

// One channel pair (server config `srv`, client config `cli`): the
// client's channel, or NULL with the client's status in *cli_st and the
// server's in *srv_st.
struct Pair {
  ktm_channel *client = nullptr, *server = nullptr;
  ktm_status cli_st = KTM_OK, srv_st = KTM_OK;
  std::string cli_err, srv_err;
  ~Pair() {
    ktm_channel_free(client);
    ktm_channel_free(server);
  }
};

void Connect(ktm_config* srv, ktm_config* cli, Pair& p) {
  ktm_listener* l = ktm_listen("127.0.0.1:0");
  ASSERT_NE(l, nullptr) << ktm_last_error();
  auto server = std::async(std::launch::async, [&] {
    p.server = ktm_channel_accept(l, srv, 10000);
    if (!p.server) p.srv_st = ktm_last_status(), p.srv_err = ktm_last_error();
  });
  p.client = ktm_channel_connect(ktm_listener_address(l), cli);
  if (!p.client) p.cli_st = ktm_last_status(), p.cli_err = ktm_last_error();
  server.get();
  ktm_listener_free(l);
}

// Bytes written on one end arrive on the other, both ways.
void ExpectEcho(Pair& p) {
  ASSERT_NE(p.client, nullptr) << p.cli_err;
  ASSERT_NE(p.server, nullptr) << p.srv_err;
  const char ping[] = "ping from the client", pong[] = "pong from the server";
  char buf[64] = {};
  ASSERT_EQ(ktm_channel_write(p.client, ping, sizeof(ping), 0, nullptr, nullptr), KTM_OK) << ktm_last_error();
  ASSERT_EQ(ktm_channel_read_all(p.server, buf, sizeof(ping)), KTM_OK) << ktm_last_error();
  EXPECT_STREQ(buf, ping);
  ASSERT_EQ(ktm_channel_write(p.server, pong, sizeof(pong), 0, nullptr, nullptr), KTM_OK) << ktm_last_error();
  ASSERT_EQ(ktm_channel_read_all(p.client, buf, sizeof(pong)), KTM_OK) << ktm_last_error();
  EXPECT_STREQ(buf, pong);
}

}  // namespace

TEST(CApi, TlsBackendSetterRoundTrip) {
  ktm_config* c = ktm_config_new();
  EXPECT_EQ(ktm_config_get_tls_backend(c), KTM_TLS_BACKEND_GNUTLS);  // the default
  EXPECT_EQ(ktm_config_get_tls_backend(nullptr), KTM_TLS_BACKEND_GNUTLS);
  for (ktm_tls_backend b : {KTM_TLS_BACKEND_OPENSSL, KTM_TLS_BACKEND_GNUTLS}) {
    EXPECT_EQ(ktm_config_set_tls_backend(c, b), KTM_OK) << ktm_last_error();
    EXPECT_EQ(ktm_config_get_tls_backend(c), b);
  }
  // A value naming no backend is refused and changes nothing.
  EXPECT_EQ(ktm_config_set_tls_backend(c, static_cast<ktm_tls_backend>(0)), KTM_E_USAGE);
  EXPECT_TRUE(Has(ktm_last_error(), "KTM_TLS_BACKEND_OPENSSL")) << ktm_last_error();
  EXPECT_EQ(ktm_config_get_tls_backend(c), KTM_TLS_BACKEND_GNUTLS);
  EXPECT_EQ(ktm_config_set_tls_backend(nullptr, KTM_TLS_BACKEND_GNUTLS), KTM_E_USAGE);
  ktm_config_free(c);
}

TEST(CApi, PolicySettersRefuseBadItemsByName) {
  ktm_config* c = ktm_config_new();
  EXPECT_EQ(ktm_config_set_tls_versions(c, "1.3,1.1"), KTM_E_USAGE);
  EXPECT_TRUE(Has(ktm_last_error(), "'1.1'")) << ktm_last_error();
  EXPECT_EQ(ktm_config_set_tls_ciphers(c, "aes-128-gcm,rc4"), KTM_E_USAGE);
  EXPECT_TRUE(Has(ktm_last_error(), "'rc4'")) << ktm_last_error();
  EXPECT_EQ(ktm_config_set_tls_versions(c, nullptr), KTM_E_USAGE);
  EXPECT_EQ(ktm_config_add_tls_allow_client(c, ""), KTM_E_USAGE);
  EXPECT_EQ(ktm_config_set_tls_versions(c, "1.2"), KTM_OK) << ktm_last_error();
  EXPECT_EQ(ktm_config_set_tls_ciphers(c, "AES-256-GCM"), KTM_OK) << ktm_last_error();
  ktm_config_free(c);
}

// The neutral policy reaches the backend under test: the path line names
// the version and cipher the session took.
TEST(CApi, VersionsAndCiphersChooseTheSession) {
  Pki pki;
  ktm_config* srv = pki.Config(KTM_SERVER);
  ktm_config* cli = pki.Config(KTM_CLIENT);
  ASSERT_EQ(ktm_config_set_tls_versions(cli, "1.2"), KTM_OK);
  ASSERT_EQ(ktm_config_set_tls_ciphers(cli, "aes-256-gcm"), KTM_OK);
  Pair p;
  Connect(srv, cli, p);
  ExpectEcho(p);
  if (p.client) {
    EXPECT_TRUE(Has(ktm_channel_path(p.client), "TLS1.2")) << ktm_channel_path(p.client);
    EXPECT_TRUE(Has(ktm_channel_path(p.client), "AES-256-GCM")) << ktm_channel_path(p.client);
  }
  ktm_config_free(srv);
  ktm_config_free(cli);
}

// A bad backend override is the caller's usage error when the channel
// starts, before any connection.
TEST(CApi, BadPriorityOverrideIsAUsageError) {
  Pki pki;
  ktm_config* cli = pki.Config(KTM_CLIENT);
  ASSERT_EQ(ktm_config_set_priority(cli, "NO-SUCH-THING=1:+FOO"), KTM_OK);
  EXPECT_EQ(ktm_channel_connect("127.0.0.1:1", cli), nullptr);
  EXPECT_EQ(ktm_last_status(), KTM_E_USAGE) << ktm_last_error();
  ktm_config_free(cli);
}

// Peers on different libraries: the backend under test on one end, the
// other backend on the other, both ways round.
TEST(CApi, CrossBackendChannelsCarryDataBothWays) {
  Pki pki;
  for (const bool test_backend_serves : {true, false}) {
    SCOPED_TRACE(test_backend_serves ? "server on the backend under test" : "client on the backend under test");
    const ktm_tls_backend s = test_backend_serves ? TestBackend() : OtherBackend(TestBackend());
    ktm_config* srv = pki.Config(KTM_SERVER, nullptr, s);
    ktm_config* cli = pki.Config(KTM_CLIENT, nullptr, OtherBackend(s));
    Pair p;
    Connect(srv, cli, p);
    ExpectEcho(p);
    ktm_config_free(srv);
    ktm_config_free(cli);
  }
}

TEST(CApi, AllowListRefusesAnUnlistedClientOnBothEnds) {
  Pki pki;
  ktm_config* srv = pki.Config(KTM_SERVER);
  ktm_config* cli = pki.Config(KTM_CLIENT);
  ASSERT_EQ(ktm_config_add_tls_allow_client(srv, "CN=somebody-else*"), KTM_OK);
  {
    Pair p;
    Connect(srv, cli, p);
    EXPECT_EQ(p.server, nullptr);
    EXPECT_EQ(p.srv_st, KTM_E_SECURITY) << p.srv_err;
    EXPECT_TRUE(Has(p.srv_err.c_str(), "allow-list")) << p.srv_err;
    EXPECT_TRUE(Has(p.srv_err.c_str(), "CN=tls-migrate-client")) << p.srv_err;
    // TLS 1.3: the client's handshake ends before the server has checked
    // its certificate, so the refusal (access_denied) may come with the
    // first read instead.
    if (p.client) {
      char b;
      p.cli_st = ktm_channel_read_all(p.client, &b, 1);
      p.cli_err = ktm_last_error();
    }
    EXPECT_EQ(p.cli_st, KTM_E_SECURITY) << p.cli_err;
    EXPECT_TRUE(Has(p.cli_err.c_str(), "refused our certificate")) << p.cli_err;
  }
  // A second pattern that matches the client's CN lets it in.
  ASSERT_EQ(ktm_config_add_tls_allow_client(srv, "*client*"), KTM_OK);
  Pair p;
  Connect(srv, cli, p);
  ExpectEcho(p);
  ktm_config_free(srv);
  ktm_config_free(cli);
}

// Helpers for TLS tests: a TLS connection over loopback with one end in a
// thread, and options built from the test PKI.
#pragma once

#include <sys/socket.h>

#include <cstdlib>
#include <cstring>
#include <future>
#include <memory>
#include <string>
#include <mutex>
#include <thread>

#include "certs/credentials.h"
#include "channel/socket_channel.h"
#include "ktls/establish.h"
#include "tls/handshake.h"
#include "tests/pki.h"
#include "tests/test_util.h"
#include "util/sha256.h"

namespace ktm::testing {

// The backend every TLS test runs with: KTM_TEST_TLS_BACKEND (gnutls or
// openssl; tests/BUILD runs each TLS test target once per backend, the
// *_openssl targets setting it), GnuTLS when unset.
inline TlsBackend TestBackend() {
  const char* b = getenv("KTM_TEST_TLS_BACKEND");
  return b && *b ? ParseTlsBackend(b, "KTM_TEST_TLS_BACKEND") : TlsBackend::kGnutls;
}
// "gnutls"/"openssl", for the CLI's --tls-backend in tests that run it.
inline std::string TestBackendName() { return ToString(TestBackend()); }

inline TlsOptions ServerOptions(const CredentialFiles& f) {
  TlsOptions o;
  o.backend = TestBackend();
  o.role = TlsRole::kServer;
  o.creds = Credentials::Load(f, TlsRole::kServer);
  o.handshake_timeout = std::chrono::seconds(10);
  return o;
}
inline TlsOptions ServerOptions() {
  return ServerOptions(CredsDirFiles(Pki::Get().dir, TlsRole::kServer));
}

inline TlsOptions ClientOptions(const CredentialFiles& f, const std::string& name = "localhost") {
  TlsOptions o;
  o.backend = TestBackend();
  o.role = TlsRole::kClient;
  o.creds = Credentials::Load(f, TlsRole::kClient);
  o.peer_name = name;
  o.handshake_timeout = std::chrono::seconds(10);
  return o;
}
inline TlsOptions ClientOptions(const std::string& name = "localhost") {
  return ClientOptions(CredsDirFiles(Pki::Get().dir, TlsRole::kClient), name);
}

struct Policy {
  KtlsMode ktls = KtlsMode::kAuto;
  ZeroCopyMode zc = ZeroCopyMode::kAuto;
};

struct TlsEnd {
  std::unique_ptr<Channel> ch;
  TlsPathReport report;
  std::string error;  // set instead of ch when establishment failed
  int raw_fd = -1;    // a dup of the socket, for tests that inject bytes
};

// Accepts one connection on `l` and establishes TLS as a server.
inline std::future<TlsEnd> ServeOnce(Listener& l, TlsOptions opts, Policy pol = {}, bool keep_raw = false) {
  return std::async(std::launch::async, [&l, opts, pol, keep_raw] {
    TlsEnd end;
    try {
      SocketOptions so;
      so.zero_copy = ZeroCopyMode::kOff;
      auto sock = AcceptChannel(l, std::chrono::seconds(10), so);
      if (keep_raw) end.raw_fd = dup(sock->fd());
      end.ch = EstablishTls(sock->release_fd(), opts, pol.ktls, pol.zc, &end.report);
    } catch (const std::exception& e) {
      end.error = e.what();
    }
    return end;
  });
}

inline TlsEnd ConnectTls(const std::string& addr, const TlsOptions& opts, Policy pol = {}, bool keep_raw = false) {
  TlsEnd end;
  try {
    SocketOptions so;
    so.zero_copy = ZeroCopyMode::kOff;
    auto sock = SocketChannel::Connect(addr, std::chrono::seconds(10), so);
    if (keep_raw) end.raw_fd = dup(sock->fd());
    end.ch = EstablishTls(sock->release_fd(), opts, pol.ktls, pol.zc, &end.report);
  } catch (const std::exception& e) {
    end.error = e.what();
  }
  return end;
}

// Two handshaken sessions over loopback, before any channel is chosen
// (for tests of key install itself).
struct SessionPair {
  std::unique_ptr<TlsSession> client, server;
};
inline SessionPair HandshakeSessions() {
  Listener l = Listener::Listen("127.0.0.1:0");
  auto accepted = std::async(std::launch::async,
                             [&] { return HandshakeTls(l.AcceptFd(std::chrono::seconds(30)), ServerOptions()); });
  SessionPair p;
  p.client = HandshakeTls(ConnectStream(l.address(), std::chrono::seconds(10)), ClientOptions());
  p.server = accepted.get();
  return p;
}

// Sends `len` deterministic bytes in 1 MiB writes and closes the write side
// (close_notify). Returns the digest of what was sent.
inline Sha256::Digest SendPattern(Channel& ch, size_t len, uint64_t seed) {
  std::vector<uint8_t> buf(1 << 20);
  Sha256 h;
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 7;
  for (size_t off = 0; off < len; off += buf.size()) {
    size_t n = std::min(buf.size(), len - off);
    for (size_t i = 0; i + 8 <= n; i += 8) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      std::memcpy(&buf[i], &x, 8);
    }
    h.Update(buf.data(), n);
    ch.write_all(buf.data(), n, kWriteZeroCopy);
  }
  ch.flush();
  ch.shutdown(ShutdownHow::kWrite);
  return h.Final();
}

// Reads to EOF (close_notify); returns (bytes, digest).
inline std::pair<uint64_t, Sha256::Digest> ReceiveAll(Channel& ch) { return DrainAndHash(ch); }

// Full-duplex exchange: both ends send `len` bytes and receive the other's.
// Returns an empty string on success, else what went wrong.
inline std::string ExchangeBothWays(Channel& a, Channel& b, size_t len) {
  Sha256::Digest sent_a{}, sent_b{};
  std::pair<uint64_t, Sha256::Digest> got_a, got_b;
  std::string err;
  std::mutex mu;
  auto fail = [&](const char* who, const std::exception& e) {
    std::lock_guard<std::mutex> lock(mu);
    err += std::string(who) + ": " + e.what() + "; ";
  };
  std::thread ta([&] {
    try { sent_a = SendPattern(a, len, 1); } catch (const std::exception& e) { fail("a send", e); }
  });
  std::thread tb([&] {
    try { sent_b = SendPattern(b, len, 2); } catch (const std::exception& e) { fail("b send", e); }
  });
  std::thread ra([&] {
    try { got_a = ReceiveAll(a); } catch (const std::exception& e) { fail("a recv", e); }
  });
  try { got_b = ReceiveAll(b); } catch (const std::exception& e) { fail("b recv", e); }
  ta.join();
  tb.join();
  ra.join();
  if (!err.empty()) return err;
  if (got_b.first != len || got_b.second != sent_a) return "a->b data mismatch";
  if (got_a.first != len || got_a.second != sent_b) return "b->a data mismatch";
  return "";
}

}  // namespace ktm::testing

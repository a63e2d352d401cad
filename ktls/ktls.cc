#include "ktls/ktls.h"

#include <fcntl.h>
#include <linux/tls.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "channel/socket_channel.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif
#ifndef TCP_ULP
#define TCP_ULP 31
#endif

namespace ktm {
namespace {

constexpr unsigned char kRecordAlert = 21;
constexpr unsigned char kRecordHandshake = 22;
constexpr unsigned char kRecordData = 23;
constexpr unsigned char kHandshakeNewSessionTicket = 4;
constexpr unsigned char kHandshakeKeyUpdate = 24;

// gnutls_record_get_state() points these into the session's own memory:
// valid while the session lives, and never freed by us.
struct Keys {
  gnutls_datum_t mac{}, iv{}, key{};
  unsigned char seq[8];
};

void GetState(gnutls_session_t s, bool read, Keys& k) {
  CheckGnutls(gnutls_record_get_state(s, read ? 1 : 0, &k.mac, &k.iv, &k.key, k.seq),
              "gnutls_record_get_state");
}

// Fills the kernel's crypto_info for one direction. Returns its size, or 0
// with `why` set when the key material has an unexpected shape.
size_t FillCryptoInfo(gnutls_protocol_t v, gnutls_cipher_algorithm_t c, const Keys& k,
                      unsigned char* out, size_t out_len, std::string& why) {
  const bool tls13 = v == GNUTLS_TLS1_3;
  const uint16_t version = tls13 ? TLS_1_3_VERSION : TLS_1_2_VERSION;
  auto gcm = [&](auto info, uint16_t type, size_t keylen) -> size_t {
    static_assert(sizeof(info.salt) == 4 && sizeof(info.iv) == 8);
    info.info.version = version;
    info.info.cipher_type = type;
    // TLS 1.3: the 12-byte static IV splits into salt (4) and iv (8).
    // TLS 1.2: GnuTLS gives the 4-byte implicit salt; the explicit nonce is
    // the record sequence number, which is what GnuTLS puts on the wire.
    if (k.key.size != keylen || (tls13 ? k.iv.size != 12 : k.iv.size != 4)) {
      why = "unexpected key/IV sizes from gnutls_record_get_state";
      return 0;
    }
    std::memcpy(info.key, k.key.data, keylen);
    std::memcpy(info.salt, k.iv.data, 4);
    std::memcpy(info.iv, tls13 ? k.iv.data + 4 : k.seq, 8);
    std::memcpy(info.rec_seq, k.seq, 8);
    if (sizeof(info) > out_len) return 0;
    std::memcpy(out, &info, sizeof(info));
    return sizeof(info);
  };
  switch (c) {
    case GNUTLS_CIPHER_AES_128_GCM:
      return gcm(tls12_crypto_info_aes_gcm_128{}, TLS_CIPHER_AES_GCM_128, 16);
    case GNUTLS_CIPHER_AES_256_GCM:
      return gcm(tls12_crypto_info_aes_gcm_256{}, TLS_CIPHER_AES_GCM_256, 32);
    case GNUTLS_CIPHER_CHACHA20_POLY1305: {
      tls12_crypto_info_chacha20_poly1305 info{};
      info.info.version = version;
      info.info.cipher_type = TLS_CIPHER_CHACHA20_POLY1305;
      if (k.key.size != 32 || k.iv.size != 12) {
        why = "unexpected key/IV sizes from gnutls_record_get_state";
        return 0;
      }
      std::memcpy(info.key, k.key.data, 32);
      std::memcpy(info.iv, k.iv.data, 12);
      std::memcpy(info.rec_seq, k.seq, 8);
      std::memcpy(out, &info, sizeof(info));
      return sizeof(info);
    }
    default:
      why = "cipher not supported by kernel TLS";
      return 0;
  }
}

}  // namespace

std::optional<std::string> KtlsCipherUnsupported(gnutls_protocol_t v, gnutls_cipher_algorithm_t c) {
  if (v != GNUTLS_TLS1_2 && v != GNUTLS_TLS1_3) {
    return std::string("kernel TLS takes TLS 1.2 and 1.3 only, not ") + gnutls_protocol_get_name(v);
  }
  if (c != GNUTLS_CIPHER_AES_128_GCM && c != GNUTLS_CIPHER_AES_256_GCM &&
      c != GNUTLS_CIPHER_CHACHA20_POLY1305) {
    return std::string("cipher ") + gnutls_cipher_get_name(c) +
           " cannot be moved into the kernel (AES-128-GCM, AES-256-GCM, CHACHA20-POLY1305 can)";
  }
  return std::nullopt;
}

std::optional<std::string> ProbeKtlsUlp() {
  try {
    Listener l = Listener::Listen("127.0.0.1:0");
    SocketOptions o;
    o.zero_copy = ZeroCopyMode::kOff;
    auto c = SocketChannel::Connect(l.address(), std::chrono::seconds(2), o);
    auto srv = l.Accept(std::chrono::seconds(2), o);
    if (setsockopt(c->fd(), SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
      int e = errno;
      if (e == ENOENT) return std::string("kernel has no tls module: TCP_ULP returned ENOENT "
                                          "(modprobe tls, or a kernel with CONFIG_TLS)");
      return std::string("TCP_ULP \"tls\" refused: ") + std::strerror(e);
    }
    return std::nullopt;
  } catch (const Error& e) {
    return std::string("could not probe kernel TLS: ") + e.what();
  }
}

std::optional<std::string> InstallKtls(TlsSession& session) {
  gnutls_session_t s = session.get();
  if (auto why = KtlsCipherUnsupported(session.version(), session.cipher())) return why;
  if (gnutls_record_check_pending(s) > 0) {
    // Those bytes were decrypted by GnuTLS already; the kernel would never
    // see them. Moving now would lose data.
    return std::string("GnuTLS holds buffered records; cannot move the session without losing them");
  }
  Keys tx, rx;
  GetState(s, /*read=*/false, tx);
  GetState(s, /*read=*/true, rx);
  unsigned char tx_info[128], rx_info[128];
  std::string why;
  size_t tx_len = FillCryptoInfo(session.version(), session.cipher(), tx, tx_info, sizeof(tx_info), why);
  size_t rx_len = tx_len ? FillCryptoInfo(session.version(), session.cipher(), rx, rx_info, sizeof(rx_info), why) : 0;
  if (!tx_len || !rx_len) return why;

  const int fd = session.fd();
  if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
    int e = errno;
    if (e == ENOENT) return std::string("kernel has no tls module: TCP_ULP returned ENOENT "
                                        "(modprobe tls, or a kernel with CONFIG_TLS)");
    return std::string("TCP_ULP \"tls\" refused: ") + std::strerror(e);
  }
  // With the ULP attached but no keys the socket still passes bytes through
  // unchanged, so a TX refusal leaves userspace TLS usable.
  if (setsockopt(fd, SOL_TLS, TLS_TX, tx_info, tx_len) != 0) {
    return std::string("kernel refused TLS_TX for ") + session.version_name() + " " +
           session.cipher_name() + ": " + std::strerror(errno);
  }
  if (setsockopt(fd, SOL_TLS, TLS_RX, rx_info, rx_len) != 0) {
    int e = errno;
    throw Error(e, std::string("kernel accepted TLS_TX but refused TLS_RX (") + std::strerror(e) +
                       "): the connection is half in the kernel and cannot continue; retry with "
                       "--ktls off");
  }
  return std::nullopt;
}

std::map<std::string, uint64_t> ReadTlsStat() {
  std::map<std::string, uint64_t> m;
  std::ifstream f("/proc/net/tls_stat");
  std::string name;
  uint64_t v;
  while (f >> name >> v) m[name] = v;
  return m;
}

KtlsChannel::KtlsChannel(std::unique_ptr<TlsSession> session, KtlsPath path)
    : session_(std::move(session)), path_(path) {
  names_ = session_->version_name() + " " + session_->cipher_name();
  fd_ = session_->release_fd();
  int fl = fcntl(fd_.get(), F_GETFL);
  blocking_ = (fl & O_NONBLOCK) == 0;
}

KtlsChannel::~KtlsChannel() = default;

std::string KtlsChannel::describe() const {
  return names_ + ", kTLS " +
         (path_ == KtlsPath::kByGnutls ? "(enabled by GnuTLS)" : "(keys installed into the kernel, TX+RX)") +
         "; zero copy: the kernel encrypts straight from the caller's pages, writes are synchronous";
}

WriteResult KtlsChannel::writev(std::span<const iovec> iov, unsigned /*flags*/) {
  if (!fd_) throw Error(EBADF, "write on a closed channel");
  if (sent_close_notify_) throw Error(EPIPE, "write after close_notify");
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  for (;;) {
    // Never MSG_ZEROCOPY: a ULP socket rejects it with EOPNOTSUPP.
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n >= 0) return WriteResult{static_cast<size_t>(n), false, {}};
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN) {
      if (!blocking_) return WriteResult{0, true, {}};
      wait_io(true);
      continue;
    }
    if (e == EPIPE || e == ECONNRESET) {
      throw Error(e, "kTLS write failed: the peer closed or reset the connection");
    }
    ThrowErrno(e, "kTLS write");
  }
}

size_t KtlsChannel::RecvRecord(std::span<const iovec> iov, unsigned char* type) {
  *type = kRecordData;
  for (;;) {
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(unsigned char))];
    msghdr msg{};
    msg.msg_iov = const_cast<iovec*>(iov.data());
    msg.msg_iovlen = iov.size();
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    ssize_t n = ::recvmsg(fd_.get(), &msg, 0);
    if (n < 0) {
      int e = errno;
      if (e == EINTR) continue;
      if (e == EAGAIN) {
        if (!blocking_) return SIZE_MAX;
        wait_io(false);
        continue;
      }
      if (e == EBADMSG) {
        throw Error(e, "kTLS read: a TLS record failed authentication (forged or corrupted stream)");
      }
      if (e == EMSGSIZE || e == EINVAL) {
        throw Error(e, "kTLS read: malformed TLS record from the peer (not a TLS stream?)");
      }
      if (e == ECONNRESET) throw Error(e, "kTLS read: the peer reset the connection");
      ThrowErrno(e, "kTLS read");
    }
    *type = kRecordData;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level == SOL_TLS && cm->cmsg_type == TLS_GET_RECORD_TYPE) *type = *CMSG_DATA(cm);
    }
    return static_cast<size_t>(n);
  }
}

bool KtlsChannel::HandleControlRecord(unsigned char type, const uint8_t* p, size_t n) {
  if (type == kRecordAlert) {
    if (n >= 2 && p[1] == GNUTLS_A_CLOSE_NOTIFY) return true;
    const char* name =
        n >= 2 ? gnutls_alert_get_name(static_cast<gnutls_alert_description_t>(p[1])) : nullptr;
    throw Error(ECONNABORTED, std::string("peer sent TLS alert '") + (name ? name : "unknown") +
                                  "' (" + std::to_string(n >= 2 ? p[1] : -1) + ")");
  }
  if (type == kRecordHandshake) {
    // A record may carry several handshake messages: type(1) length(3) body.
    for (size_t off = 0; off + 4 <= n;) {
      const uint8_t msg_type = p[off];
      const size_t len = (size_t{p[off + 1]} << 16) | (size_t{p[off + 2]} << 8) | p[off + 3];
      if (msg_type == kHandshakeKeyUpdate) {
        throw Error(EOPNOTSUPP, "the peer re-keyed (TLS 1.3 KeyUpdate); this kernel TLS path cannot "
                                "follow it (needs kernel 6.14+ re-keying); use --ktls off");
      }
      if (msg_type != kHandshakeNewSessionTicket) {
        throw Error(EPROTO, "unexpected TLS handshake message type " + std::to_string(msg_type) +
                                " after the handshake");
      }
      ++tickets_ignored_;  // we never resume sessions
      off += 4 + len;
    }
    return false;
  }
  throw Error(EPROTO, "unexpected TLS record type " + std::to_string(type));
}

ReadResult KtlsChannel::readv(std::span<const iovec> iov) {
  if (!fd_) throw Error(EBADF, "read on a closed channel");
  size_t want = 0;
  for (const auto& v : iov) want += v.iov_len;
  if (want == 0) return {};
  auto copy_out = [&](const uint8_t* src, size_t n) {
    size_t done = 0;
    for (const auto& v : iov) {
      size_t k = std::min(v.iov_len, n - done);
      std::memcpy(v.iov_base, src + done, k);
      done += k;
      if (done == n) break;
    }
    return done;
  };
  if (pending_off_ < pending_end_) {
    size_t n = copy_out(scratch_.data() + pending_off_, std::min(want, pending_end_ - pending_off_));
    pending_off_ += n;
    return ReadResult{n, false};
  }
  if (saw_close_notify_) return {};
  // Max TLS plaintext per record is 2^14 bytes.
  constexpr size_t kMaxRecord = 16384;
  const bool direct = want >= kMaxRecord;
  for (;;) {
    unsigned char type;
    size_t n;
    if (direct) {
      n = RecvRecord(iov, &type);
    } else {
      scratch_.resize(kMaxRecord + 256);
      iovec s{scratch_.data(), scratch_.size()};
      n = RecvRecord(std::span<const iovec>(&s, 1), &type);
    }
    if (n == SIZE_MAX) return ReadResult{0, true};  // before n is used as a length
    const uint8_t* rec = direct ? static_cast<const uint8_t*>(iov[0].iov_base) : scratch_.data();
    if (direct && type != kRecordData && iov[0].iov_len < n) {
      // A control record (at most kMaxRecord bytes) spread across iovecs: gather it.
      scratch_.resize(kMaxRecord + 256);
      size_t got = 0;
      for (const auto& v : iov) {
        size_t k = std::min(v.iov_len, n - got);
        std::memcpy(scratch_.data() + got, v.iov_base, k);
        got += k;
      }
      rec = scratch_.data();
    }
    if (type == kRecordData) {
      if (n == 0) {
        throw Error(EPIPE, "TLS stream truncated: the peer closed the connection without "
                           "close_notify; the data may be incomplete");
      }
      if (direct) return ReadResult{n, false};
      size_t k = copy_out(rec, std::min(n, want));
      pending_off_ = k;
      pending_end_ = n;
      return ReadResult{k, false};
    }
    if (HandleControlRecord(type, rec, n)) {
      saw_close_notify_ = true;
      return {};
    }
  }
}

void KtlsChannel::shutdown(ShutdownHow how) {
  if (!fd_) return;
  if (how != ShutdownHow::kRead && !sent_close_notify_) {
    // close_notify is an alert record: level warning (1), description 0.
    unsigned char alert[2] = {1, GNUTLS_A_CLOSE_NOTIFY};
    iovec v{alert, sizeof(alert)};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(unsigned char))] = {};
    msghdr msg{};
    msg.msg_iov = &v;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_TLS;
    cm->cmsg_type = TLS_SET_RECORD_TYPE;
    cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
    *CMSG_DATA(cm) = kRecordAlert;
    while (::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
    sent_close_notify_ = true;
    ::shutdown(fd_.get(), SHUT_WR);
  }
  if (how != ShutdownHow::kWrite) ::shutdown(fd_.get(), SHUT_RD);
}

bool KtlsChannel::wait_readable(std::chrono::milliseconds timeout) {
  if (pending_off_ < pending_end_) return true;
  return WaitFdReadable(fd_.get(), timeout);
}

void KtlsChannel::close() { fd_.reset(); }

void KtlsChannel::set_blocking(bool blocking) {
  int fl = fcntl(fd_.get(), F_GETFL);
  fcntl(fd_.get(), F_SETFL, blocking ? (fl & ~O_NONBLOCK) : (fl | O_NONBLOCK));
  blocking_ = blocking;
}

void KtlsChannel::wait_io(bool for_write) {
  WaitFdReady(fd_.get(), for_write);
}

}  // namespace ktm

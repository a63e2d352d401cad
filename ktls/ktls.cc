#include "ktls/ktls.h"

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "base/error.h"
#include "ktls/uapi.h"
#include "base/fd_wait.h"
#include "channel/address.h"

namespace ktm {
namespace {

constexpr unsigned char kRecordAlert = 21;
constexpr unsigned char kAlertLevelFatal = 2;
constexpr unsigned char kAlertBadRecordMac = 20;
constexpr unsigned char kAlertDecodeError = 50;
constexpr unsigned char kRecordHandshake = 22;
constexpr unsigned char kRecordData = 23;
constexpr unsigned char kHandshakeNewSessionTicket = 4;

// A connected loopback TCP pair, for asking the kernel questions.
struct LoopbackPair {
  UniqueFd client, server;
};

LoopbackPair ConnectLoopback() {
  Listener l = Listener::Listen("127.0.0.1:0");
  LoopbackPair p;
  p.client = ConnectStream(l.address(), std::chrono::seconds(2));
  p.server = l.AcceptFd(std::chrono::seconds(2));
  return p;
}

// Whether the "tls" ULP is attached to `fd` already (AttachKtlsUlpEarly).
bool UlpIsTls(int fd) {
  char name[16] = {};
  socklen_t len = sizeof(name) - 1;
  return getsockopt(fd, SOL_TCP, TCP_ULP, name, &len) == 0 && std::strcmp(name, "tls") == 0;
}

// Attaches the "tls" ULP (or finds it attached); nullopt on success, else
// the reason.
std::optional<std::string> AttachUlp(int fd) {
  if (UlpIsTls(fd)) return std::nullopt;
  if (setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) == 0) return std::nullopt;
  const int e = errno;
  if (e == ENOENT) {
    return std::string("kernel has no tls module: TCP_ULP returned ENOENT (modprobe tls, or a kernel with "
                       "CONFIG_TLS)");
  }
  if (e == ENOTCONN) {
    // The kernel attaches TLS only to an ESTABLISHED socket: a peer that
    // sent everything and half-closed before our handshake finished (a short
    // stream) leaves it in CLOSE_WAIT. Nothing is wrong with the peer.
    // EstablishTls attaches the ULP before the handshake for this reason;
    // this is left for sockets that reach InstallKtls without it.
    return std::string("TCP_ULP \"tls\" refused (ENOTCONN): the peer had already finished sending and closed its "
                       "side before kernel TLS could be set up; the kernel takes TLS only on an established "
                       "connection");
  }
  return std::string("TCP_ULP \"tls\" refused: ") + std::strerror(e);
}

}  // namespace

std::optional<std::string> ProbeKtlsUlp() {
  try {
    LoopbackPair p = ConnectLoopback();
    return AttachUlp(p.client.get());
  } catch (const Error& e) {
    return std::string("could not probe kernel TLS: ") + e.what();
  }
}

std::string ProbeKernelCipher(const KernelCipher& row) {
  try {
    LoopbackPair p = ConnectLoopback();
    if (auto why = AttachUlp(p.client.get())) return "no (" + *why + ")";
    std::vector<uint8_t> info(row.info_size, 0);
    tls_crypto_info hdr{};
    hdr.version = TLS_1_3_VERSION;
    hdr.cipher_type = row.kernel_type;
    std::memcpy(info.data(), &hdr, sizeof(hdr));
    if (setsockopt(p.client.get(), SOL_TLS, TLS_TX, info.data(), info.size()) != 0) {
      return std::string("no (") + std::strerror(errno) + ")";
    }
    return "yes";
  } catch (const Error& e) {
    return std::string("unknown (") + e.what() + ")";
  }
}

void AttachKtlsUlpEarly(int fd) noexcept { (void)AttachUlp(fd); }

namespace {

const char* DirectionName(TlsDirection d) { return d == TlsDirection::kTransmit ? "TLS_TX" : "TLS_RX"; }

// Lays out direction `dir`'s exported keys for the kernel into `info`.
// The exported copy wipes itself on return.
bool FillDirection(const TlsSession& session, const KernelCipher& row, TlsDirection dir, CryptoInfo& info,
                   std::string& why) {
  const TrafficKeys keys = session.ExportKernelKeys(dir);
  return FillCryptoInfo(row, session.version(), keys, info, why);
}

// Hands `info` to the kernel for `dir`, then wipes it (the kernel has its
// own copy now, or refused it). nullopt on success, else the reason (and
// the errno in *err).
std::optional<std::string> SetDirection(const TlsSession& session, TlsDirection dir, CryptoInfo& info,
                                        int* err = nullptr) {
  const int rc = setsockopt(session.fd(), SOL_TLS, dir == TlsDirection::kTransmit ? TLS_TX : TLS_RX, info.data(),
                            info.size());
  const int e = errno;
  info.Wipe();
  if (rc == 0) return std::nullopt;
  if (err) *err = e;
  return std::string("kernel refused ") + DirectionName(dir) + " for " + session.version_name() + " " +
         session.cipher_name() + ": " + std::strerror(e);
}

}  // namespace

std::optional<std::string> InstallKtls(TlsSession& session) {
  if (session.buffered_plaintext() > 0) {
    // Those bytes were decrypted by the library already; the kernel would
    // never see them. Moving now would lose data.
    return std::string("the TLS library holds buffered records; cannot move the session without losing them");
  }
  const bool need_tx = !session.library_ktls(TlsDirection::kTransmit);
  const bool need_rx = !session.library_ktls(TlsDirection::kReceive);
  if (!need_tx && !need_rx) return std::nullopt;  // the library moved both
  if (auto why = KtlsCipherUnsupported(session.version(), session.cipher())) return why;
  const KernelCipher& row = *FindKernelCipher(session.cipher());
  // Every copy of the keys made here wipes itself on the way out (return or
  // throw): the exported TrafficKeys and the crypto_info built from them.
  CryptoInfo tx_info, rx_info;
  std::string why;
  if ((need_tx && !FillDirection(session, row, TlsDirection::kTransmit, tx_info, why)) ||
      (need_rx && !FillDirection(session, row, TlsDirection::kReceive, rx_info, why))) {
    return why;
  }
  // Attached already when the library took a direction (it attaches the
  // ULP itself) or AttachKtlsUlpEarly ran.
  if (auto why_ulp = AttachUlp(session.fd())) return why_ulp;
  // With the ULP attached but no keys the socket still passes bytes through
  // unchanged, so a TX refusal leaves userspace TLS usable.
  if (need_tx) {
    if (auto refused = SetDirection(session, TlsDirection::kTransmit, tx_info)) return refused;
  }
  if (!need_rx) return std::nullopt;
  int rx_errno = 0;
  const std::optional<std::string> rx_refused = SetDirection(session, TlsDirection::kReceive, rx_info, &rx_errno);
  if (!rx_refused) return std::nullopt;
  // The library's own kTLS send direction (need_tx false) is untouched: the
  // library still writes through it and reads in userspace, so this is a
  // reason for the fallback. A TX we set ourselves is not: no library
  // knows about it, and records would go out under two keys.
  if (!need_tx) return rx_refused;
  throw Error(ErrorKind::kInternal, rx_errno,
              "kernel accepted TLS_TX but refused TLS_RX (" + *rx_refused +
                  "): the connection is half in the kernel and cannot continue; retry with kTLS off",
              Remedy::kKtlsOff);
}

std::string KtlsOwnership::Describe() const {
  const std::string lib = LibraryName(library);
  auto how = [&](KtlsOwner o) -> std::string {
    switch (o) {
      case KtlsOwner::kLibrary: return "enabled by " + lib;
      case KtlsOwner::kUs: return "keys installed by us";
      case KtlsOwner::kNone: return "in userspace";
    }
    return "?";
  };
  if (send == receive) return "send and receive " + how(send);
  return "send " + how(send) + ", receive " + how(receive);
}

KtlsOwnership OwnershipAfterInstall(const TlsSession& session) {
  KtlsOwnership o;
  o.library = session.backend();
  o.send = session.library_ktls(TlsDirection::kTransmit) ? KtlsOwner::kLibrary : KtlsOwner::kUs;
  o.receive = session.library_ktls(TlsDirection::kReceive) ? KtlsOwner::kLibrary : KtlsOwner::kUs;
  return o;
}

std::map<std::string, uint64_t> ReadTlsStat() {
  std::map<std::string, uint64_t> m;
  std::ifstream f("/proc/net/tls_stat");
  std::string name;
  uint64_t v;
  while (f >> name >> v) m[name] = v;
  return m;
}

KtlsChannel::KtlsChannel(std::unique_ptr<TlsSession> session, const KtlsOwnership& owners,
                         uint64_t rekey_after_bytes)
    : owners_(owners) {
  names_ = session->version_name() + " " + session->cipher_name();
  SetUpKeyLifetime(*session, rekey_after_bytes);
  fd_ = session->release_fd();
  blocking_ = !IsNonBlocking(fd_.get());
  session.reset();  // no more I/O through it; its key copy goes now
  SetUpRxNoPad();
}

void KtlsChannel::SetUpKeyLifetime(TlsSession& session, uint64_t rekey_after_bytes) {
  version_ = session.version();
  cipher_ = session.cipher();
  tx_use_.set_limits(RecordLimit(cipher_), rekey_after_bytes);
  const KernelCipher* row = FindKernelCipher(cipher_);
  if (version_ != TlsVersion::kTls13 || !row) {
    rekey_detail_ = "TLS 1.2 has no key update";
    return;
  }
  const KtlsKernelFeatures& kf = ProbeKtlsKernelFeatures();
  kernel_rekey_ = kf.rekey;
  rekey_detail_ = kf.rekey ? "the kernel re-keys kTLS" : "this kernel cannot re-key kTLS (" + kf.rekey_detail + ")";
  tx_keys_ = TrafficKeySchedule(*row, cipher_, session.ExportKernelKeys(TlsDirection::kTransmit));
  rx_keys_ = TrafficKeySchedule(*row, cipher_, session.ExportKernelKeys(TlsDirection::kReceive));
  if (!tx_keys_.valid() || !rx_keys_.valid()) {
    kernel_rekey_ = false;
    rekey_detail_ = "the TLS library did not report its TLS 1.3 traffic secrets";
  }
}

void KtlsChannel::SetUpRxNoPad() {
  if (version_ != TlsVersion::kTls13) {
    rx_no_pad_detail_ = "off: TLS 1.2 records carry no padding to rule out";
    return;
  }
  const KtlsKernelFeatures& kf = ProbeKtlsKernelFeatures();
  if (!kf.rx_no_pad) {
    rx_no_pad_detail_ = "off: " + kf.rx_no_pad_detail;
    return;
  }
  // Our peers never pad; a peer that does costs the kernel a retry per
  // padded record (TlsRxNoPadViolation), never data.
  const int one = 1;
  if (setsockopt(fd_.get(), SOL_TLS, TLS_RX_EXPECT_NO_PAD, &one, sizeof(one)) == 0) {
    rx_no_pad_ = true;
    rx_no_pad_detail_ = "on: records are decrypted straight into the reader's buffer";
  } else {
    rx_no_pad_detail_ = std::string("off: TLS_RX_EXPECT_NO_PAD refused (") + strerrorname_np(errno) + ")";
  }
}

KtlsChannel::~KtlsChannel() = default;

std::string KtlsChannel::describe() const {
  // The key-install text predates per-direction owners; kept as it was.
  return names_ + ", kTLS " +
         (owners_.both_ours() ? std::string("(keys installed into the kernel, TX+RX)") : "(" + owners_.Describe() + ")") +
         "; zero copy: the kernel encrypts straight from the caller's pages, writes are synchronous";
}

ChannelStats KtlsChannel::stats() const {
  ChannelStats st;
  st.session_tickets_ignored = tickets_ignored_;
  st.rekey.applies = true;
  st.rekey.sent = updates_sent_.load();
  st.rekey.received = updates_received_.load();
  st.rekey.limit_records = tx_use_.limit_records();
  st.rekey.limit_bytes = tx_use_.limit_bytes();
  const std::string why_not = WhyNoTxRekey();
  st.rekey.can_rekey = why_not.empty();
  st.rekey.detail = why_not.empty() ? rekey_detail_ : why_not;
  st.rx_no_pad = rx_no_pad_;
  st.rx_no_pad_detail = rx_no_pad_detail_;
  return st;
}

// --- key lifetime ---------------------------------------------------------

std::string KtlsChannel::WhyNoTxRekey() const {
  if (version_ != TlsVersion::kTls13 || !kernel_rekey_) return rekey_detail_;
  if (!peer_follows_) return "the peer cannot follow a key update (it said so in the hello)";
  return "";
}

size_t KtlsChannel::BudgetTx(size_t want, bool last_words) {
  if (want == 0) return 0;
  // RFC 8446 4.6.3: answer a requested update before our next data.
  if (update_requested_.exchange(false)) SendKeyUpdate(kKeyUpdateNotRequested);
  uint64_t left = tx_use_.BytesLeft();
  if (left == 0) {
    if (const std::string why = WhyNoTxRekey(); !why.empty()) {
      if (last_words && !last_words_spent_) {
        // The record kept back for a KeyUpdate that cannot happen.
        last_words_spent_ = true;
        return static_cast<size_t>(std::min<uint64_t>(want, SendKeyUse::kMaxRecordPayload));
      }
      throw Error(ErrorKind::kSecurity, EKEYEXPIRED,
                  "the send key has protected " + std::to_string(tx_use_.records()) + " records (" +
                      std::to_string(tx_use_.bytes()) + " bytes), its limit, and cannot change: " + why +
                      "; nothing more is sent under it (run on a kernel that re-keys kTLS, 6.14+, or with kTLS off)",
                  Remedy::kKtlsOff);
    }
    if (tx_use_.RecordBytesLeft() > 0 && !pace_.may_send(KeyUpdatePace::Clock::now())) {
      // Only the byte limit is due, and the peer may not take another
      // update yet (a GnuTLS receiver refuses a 9th within a second): go on
      // under this key, up to its record limit, and ask again next write.
      left = tx_use_.RecordBytesLeft();
    } else {
      SendKeyUpdate(kKeyUpdateNotRequested);
      left = tx_use_.BytesLeft();
    }
  }
  return static_cast<size_t>(std::min<uint64_t>(want, left));
}

size_t KtlsChannel::prepare_direct_write(size_t want) {
  const size_t n = BudgetTx(want);
  tx_use_.Count(n);
  return n;
}

void KtlsChannel::SendKeyUpdate(unsigned char request) {
  // The next key first: if it cannot be made, nothing was sent and the
  // connection is still whole.
  CryptoInfo next;
  std::string why;
  if (!tx_keys_.Next(next, why)) throw Error(ErrorKind::kInternal, EINVAL, "TLS key update: " + why);
  const unsigned char msg[5] = {kHandshakeKeyUpdate, 0, 0, 1, request};
  SendControlRecord(kRecordHandshake, msg, sizeof(msg), "TLS KeyUpdate");
  if (setsockopt(fd_.get(), SOL_TLS, TLS_TX, next.data(), next.size()) != 0) {
    const int e = errno;
    throw Error(ErrorKind::kInternal, e,
                std::string("the kernel refused the next send key (") + strerrorname_np(e) +
                    ") after our KeyUpdate left: the connection cannot continue");
  }
  tx_use_.Reset();
  pace_.sent(KeyUpdatePace::Clock::now());
  ++updates_sent_;
}

void KtlsChannel::FollowKeyUpdate(unsigned char request) {
  if (version_ != TlsVersion::kTls13 || !kernel_rekey_) {
    throw Error(ErrorKind::kSecurity, EOPNOTSUPP,
                "the peer re-keyed (TLS 1.3 KeyUpdate) and this kernel TLS path cannot follow it: " +
                    rekey_detail_ + "; run with kTLS off, or on a kernel that re-keys kTLS (6.14+)",
                Remedy::kKtlsOff);
  }
  CryptoInfo next;
  std::string why;
  if (!rx_keys_.Next(next, why)) throw Error(ErrorKind::kInternal, EINVAL, "TLS key update: " + why);
  if (setsockopt(fd_.get(), SOL_TLS, TLS_RX, next.data(), next.size()) != 0) {
    const int e = errno;
    throw Error(ErrorKind::kInternal, e,
                std::string("the kernel refused the peer's next key (") + strerrorname_np(e) +
                    "): nothing more can be read from this connection");
  }
  ++updates_received_;
  if (request == kKeyUpdateRequested) update_requested_ = true;
}

WriteResult KtlsChannel::writev(std::span<const iovec> iov, unsigned flags) {
  if (!fd_) throw Error(ErrorKind::kInternal, EBADF, "write on a closed channel");
  if (sent_close_notify_) throw Error(ErrorKind::kInternal, EPIPE, "write after close_notify");
  size_t want = 0;
  for (const auto& v : iov) want += v.iov_len;
  // What the send key may still carry; the iovecs are cut there (a short
  // write, as a full socket would make) and the caller goes on after the
  // key update the next call makes.
  const size_t budget = BudgetTx(want, (flags & kWriteLastWords) != 0);
  std::vector<iovec> cut;
  if (budget < want) {
    size_t left = budget;
    for (const auto& v : iov) {
      if (left == 0) break;
      cut.push_back({v.iov_base, std::min(v.iov_len, left)});
      left -= cut.back().iov_len;
    }
    iov = cut;
  }
  msghdr msg{};
  msg.msg_iov = const_cast<iovec*>(iov.data());
  msg.msg_iovlen = iov.size();
  for (;;) {
    // Never MSG_ZEROCOPY: a ULP socket rejects it with EOPNOTSUPP.
    // MSG_DONTWAIT in blocking mode too, then wait for room up to the io
    // timeout: a blocking sendmsg cut short by SO_SNDTIMEO returns what it
    // queued before blocking, and the next call would wait the full timeout
    // again (see SocketChannel::writev).
    ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      tx_use_.Count(static_cast<size_t>(n));
      return WriteResult{static_cast<size_t>(n), false, {}};
    }
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN) {
      if (!blocking_) return WriteResult{0, true, {}};
      wait_io(/*for_write=*/true);  // throws Error(kTimeout) after the write timeout
      continue;
    }
    if (e == EPIPE || e == ECONNRESET) {
      throw Error(ErrorKind::kPeer, e, "kTLS write failed: the peer closed or reset the connection");
    }
    ThrowErrno(SocketErrorKind(e), e, "kTLS write");
  }
}

size_t KtlsChannel::RecvRecord(std::span<const iovec> iov, unsigned char* type, bool* record_end) {
  *type = kRecordData;
  *record_end = false;
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
        OnBlockingEagain(false);
        continue;
      }
      if (e == EBADMSG) {
        SendFatalAlertBestEffort(kAlertBadRecordMac);
        throw Error(ErrorKind::kIntegrity, e, "kTLS read: a TLS record failed authentication (forged or corrupted stream)");
      }
      if (e == EMSGSIZE || e == EINVAL) {
        SendFatalAlertBestEffort(kAlertDecodeError);
        throw Error(ErrorKind::kIntegrity, e, "kTLS read: malformed TLS record from the peer (not a TLS stream?)");
      }
      if (e == ECONNRESET) throw Error(ErrorKind::kPeer, e, "kTLS read: the peer reset the connection");
      if (e == EKEYEXPIRED) {
        // Only if a KeyUpdate was taken off the socket without TLS_RX being
        // set after it: not something this channel does.
        throw Error(ErrorKind::kInternal, e, "kTLS read: the peer's key changed and the next one was not set");
      }
      ThrowErrno(SocketErrorKind(e), e, "kTLS read");
    }
    bool record = false;
    *type = kRecordData;
    for (cmsghdr* cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
      if (cm->cmsg_level == SOL_TLS && cm->cmsg_type == TLS_GET_RECORD_TYPE) {
        *type = *CMSG_DATA(cm);
        record = true;
      }
    }
    // An empty application data record (legal in TLS) is not end of stream:
    // only a read that found no record at all is.
    if (n == 0 && record && *type == kRecordData) continue;
    // The kernel flags a read that took a record's last byte (tls_sw_recvmsg,
    // process_rx_list): a control record cut short by a small buffer lacks it.
    *record_end = (msg.msg_flags & MSG_EOR) != 0;
    return static_cast<size_t>(n);
  }
}

bool KtlsChannel::HandleControlRecord(unsigned char type, const uint8_t* p, size_t n) {
  if (type == kRecordAlert) {
    if (n >= 2 && p[1] == kAlertCloseNotify) return true;
    if (n < 2) throw Error(ErrorKind::kIntegrity, EPROTO, "malformed TLS alert record from the peer");
    throw AlertReceivedError(p[1], "a kTLS read");
  }
  if (type == kRecordHandshake) {
    // A record may carry several handshake messages: type(1) length(3) body.
    for (size_t off = 0; off + 4 <= n;) {
      const uint8_t msg_type = p[off];
      const size_t len = (size_t{p[off + 1]} << 16) | (size_t{p[off + 2]} << 8) | p[off + 3];
      if (msg_type == kHandshakeKeyUpdate) {
        // RFC 8446 5.1: a key change ends its record; the kernel has
        // paused decryption after this one until TLS_RX gets the next key.
        if (len != 1 || off + 5 != n || p[off + 4] > kKeyUpdateRequested) {
          SendFatalAlertBestEffort(kAlertDecodeError);
          throw Error(ErrorKind::kIntegrity, EPROTO, "malformed TLS KeyUpdate from the peer");
        }
        FollowKeyUpdate(p[off + 4]);
        return false;
      }
      if (msg_type != kHandshakeNewSessionTicket) {
        throw Error(ErrorKind::kIntegrity, EPROTO, "unexpected TLS handshake message type " + std::to_string(msg_type) +
                                " after the handshake");
      }
      ++tickets_ignored_;  // we never resume sessions
      off += 4 + len;
    }
    return false;
  }
  throw Error(ErrorKind::kIntegrity, EPROTO, "unexpected TLS record type " + std::to_string(type));
}

// Every read goes straight to the caller's buffers, whatever their size
// (scratch_ only gathers control records). The kernel decrypts a record in
// place there when the buffers hold all of it (TLS 1.3: with
// TLS_RX_EXPECT_NO_PAD); otherwise it decrypts into its own buffer, copies
// what fits and keeps the rest, decrypted, for the next read. And one
// recvmsg goes on to the next records while it has room and they have
// arrived. So a small read must not bring a big buffer: a scratch buffer
// under a 40-byte header read let the kernel go on into the page run's
// first record, which did not fit the room left and so was copied twice
// (into scratch, then out of it) instead of being decrypted in place. With
// reads sized as asked, a reader that takes a header and then a run of
// whole records (the migration's packets on kTLS, see
// kFeatureRecordWrites) gets the run decrypted in place, and the small
// header record costs one kernel copy of its few bytes. The price: many
// tiny reads from one big record are one syscall each.
ReadResult KtlsChannel::readv(std::span<const iovec> iov) {
  if (!fd_) throw Error(ErrorKind::kInternal, EBADF, "read on a closed channel");
  size_t want = 0;
  for (const auto& v : iov) want += v.iov_len;
  if (want == 0) return {};
  if (saw_close_notify_) return {};
  for (;;) {
    unsigned char type;
    bool record_end;
    const size_t n = RecvRecord(iov, &type, &record_end);
    if (n == SIZE_MAX) return ReadResult{0, true};  // before n is used as a length
    if (type == kRecordData) {
      if (n == 0) {
        throw Error(ErrorKind::kPeer, EPIPE, "TLS stream truncated: the peer closed the connection without "
                           "close_notify; the data may be incomplete");
      }
      return ReadResult{n, false};
    }
    const size_t len = GatherControlRecord(iov, n, record_end, type);
    if (HandleControlRecord(type, scratch_.data(), len)) {
      saw_close_notify_ = true;
      return {};
    }
  }
}

// A control record (alert, handshake) arrived in the caller's buffers:
// gathers it whole into scratch_, reading its rest when the buffers were
// smaller than it (the kernel keeps the rest and returns it next, alone).
// Returns its length.
size_t KtlsChannel::GatherControlRecord(std::span<const iovec> iov, size_t n, bool record_end, unsigned char type) {
  constexpr size_t kMaxRecord = 16384;  // TLS plaintext per record: 2^14
  scratch_.resize(kMaxRecord + 256);
  size_t got = 0;
  for (const auto& v : iov) {
    const size_t k = std::min(v.iov_len, n - got);
    std::memcpy(scratch_.data() + got, v.iov_base, k);
    got += k;
    if (got == n) break;
  }
  while (!record_end) {
    if (got == scratch_.size()) {
      throw Error(ErrorKind::kIntegrity, EMSGSIZE, "kTLS read: a TLS control record longer than 2^14 bytes");
    }
    iovec rest{scratch_.data() + got, scratch_.size() - got};
    unsigned char more_type;
    const size_t m = RecvRecord(std::span<const iovec>(&rest, 1), &more_type, &record_end);
    if (m == SIZE_MAX) {  // non-blocking: the rest is queued, so this is brief
      wait_io(/*for_write=*/false);
      continue;
    }
    if (more_type != type || m == 0) {
      throw Error(ErrorKind::kInternal, EPROTO, "kTLS read: a control record's rest did not follow it");
    }
    got += m;
  }
  return got;
}

void KtlsChannel::shutdown(ShutdownHow how) {
  if (how != ShutdownHow::kWrite) {
    // Never throws (channel.h). kBoth is the abort: no close_notify.
    if (fd_) (void)::shutdown(fd_.get(), how == ShutdownHow::kRead ? SHUT_RD : SHUT_RDWR);
    return;
  }
  if (!fd_) throw Error(ErrorKind::kInternal, EBADF, "shutdown on a closed channel");
  if (write_shut_) return;
  if (!sent_close_notify_) {
    SendCloseNotify();
    sent_close_notify_ = true;  // only now: it really left
  }
  ShutdownWriteOrThrow(fd_.get(), "the kTLS peer");
  write_shut_ = true;
}

// One control record for sendmsg on a kTLS socket: the bytes as the
// payload, the record type in a TLS_SET_RECORD_TYPE cmsg. Points into
// itself and `bytes`: neither moves nor outlives the send.
namespace {
struct ControlRecordMsg {
  ControlRecordMsg(unsigned char type, const unsigned char* bytes, size_t len)
      : v{const_cast<unsigned char*>(bytes), len} {
    msg.msg_iov = &v;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_TLS;
    cm->cmsg_type = TLS_SET_RECORD_TYPE;
    cm->cmsg_len = CMSG_LEN(sizeof(unsigned char));
    *CMSG_DATA(cm) = type;
  }
  ControlRecordMsg(const ControlRecordMsg&) = delete;
  ControlRecordMsg& operator=(const ControlRecordMsg&) = delete;

  iovec v;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(unsigned char))] = {};
  msghdr msg{};
};
}  // namespace

void KtlsChannel::SendFatalAlertBestEffort(unsigned char description) noexcept {
  unsigned char alert[2] = {kAlertLevelFatal, description};
  ControlRecordMsg m(kRecordAlert, alert, sizeof(alert));
  const msghdr& msg = m.msg;
  // The kernel marked the socket failed (sk_err = EBADMSG) when it refused
  // the record, and kTLS sends nothing while sk_err is set; reading
  // SO_ERROR takes that error off the socket. The send direction and its
  // key are intact. Never blocks: a full socket or a vanished peer leaves
  // the error we are about to throw as the whole story.
  int pending = 0;
  socklen_t len = sizeof(pending);
  (void)getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &pending, &len);
  (void)!::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
}

void KtlsChannel::SendCloseNotify() {
  // close_notify is an alert record: level warning (1), description 0.
  const unsigned char alert[2] = {1, kAlertCloseNotify};
  SendControlRecord(kRecordAlert, alert, sizeof(alert), "kTLS close_notify");
}

void KtlsChannel::SendControlRecord(unsigned char type, const unsigned char* bytes, size_t len, const char* what) {
  ControlRecordMsg m(type, bytes, len);
  const msghdr& msg = m.msg;
  for (;;) {
    const ssize_t n = ::sendmsg(fd_.get(), &msg, MSG_NOSIGNAL);
    if (n == static_cast<ssize_t>(len)) return;
    if (n >= 0) {
      throw Error(ErrorKind::kInternal, EIO, std::string(what) + ": the kernel took " + std::to_string(n) + " of " +
                                                 std::to_string(len) + " bytes");
    }
    const int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN) {
      if (blocking_) OnBlockingEagain(true);  // throws on the write timeout
      else wait_io(true);
      continue;
    }
    if (e == EPIPE || e == ECONNRESET) {
      throw Error(ErrorKind::kPeer, e, std::string(what) + " not sent: the peer closed or reset the connection");
    }
    ThrowErrno(SocketErrorKind(e), e, what);
  }
}

bool KtlsChannel::wait_readable(std::chrono::milliseconds timeout) {
  return WaitFdReadable(fd_.get(), timeout);
}

void KtlsChannel::close() noexcept { fd_.reset(); }

void KtlsChannel::set_blocking(bool blocking) {
  SetNonBlocking(fd_.get(), !blocking, "a kTLS channel");
  blocking_ = blocking;
}

void KtlsChannel::wait_io(bool for_write) {
  WaitFdReadyOrThrow(fd_.get(), for_write, io_timeout(for_write), "the kTLS peer");
}

void KtlsChannel::set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) {
  SetSocketTimeouts(fd_.get(), read, write);
  Channel::set_io_timeouts(read, write);
}

void KtlsChannel::OnBlockingEagain(bool for_write) {
  // A blocking socket says EAGAIN only when SO_RCVTIMEO/SO_SNDTIMEO expired.
  if (io_timeout(for_write).count() >= 0) throw IoTimeoutError(for_write, io_timeout(for_write), "the kTLS peer");
  wait_io(for_write);
}

}  // namespace ktm

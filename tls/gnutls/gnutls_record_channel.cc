#include "tls/gnutls/gnutls_record_channel.h"

#include <poll.h>
#include <sys/socket.h>

#include <algorithm>

#include "base/error.h"
#include "base/fd_wait.h"

namespace ktm {
namespace {
// Bytes corked before an uncork: big enough to fill several 16 KiB records
// per syscall, small enough that GnuTLS's cork buffer stays modest.
constexpr size_t kCorkBatch = 256 << 10;
}  // namespace

template <typename Op>
ssize_t GnutlsRecordChannel::RetryWrite(const Op& op) {
  AgainGuard again(*this, /*for_write=*/true);
  for (;;) {
    const ssize_t rc = Locked(op);
    if (rc == GNUTLS_E_INTERRUPTED) continue;
    if (rc != GNUTLS_E_AGAIN) return rc;
    again.OnAgain();
  }
}

GnutlsRecordChannel::GnutlsRecordChannel(std::unique_ptr<GnutlsSession> session, std::string why_userspace)
    : session_(std::move(session)), why_userspace_(std::move(why_userspace)) {
  blocking_ = !IsNonBlocking(session_->fd());
  SetNonBlocking(session_->fd(), true, "a TLS channel");  // see the class comment
  version_ = session_->version();
  tx_use_.set_limits(RecordLimit(session_->cipher()), session_->rekey_after_bytes());
}

GnutlsRecordChannel::~GnutlsRecordChannel() = default;

std::string GnutlsRecordChannel::describe() const {
  return session_->version_name() + " " + session_->cipher_name() +
         ", userspace TLS (GnuTLS records; " + why_userspace_ +
         "); zero copy off: GnuTLS reuses its ciphertext buffer";
}

ChannelStats GnutlsRecordChannel::stats() const {
  ChannelStats st;
  st.records_batched = batches_;
  FillUserspaceRekeyStats(st, tx_use_, session_->key_updates_sent(), session_->key_updates_received(), WhyNoRekey(),
                          TlsBackend::kGnutls);
  return st;
}

// --- key lifetime ---------------------------------------------------------

std::string GnutlsRecordChannel::WhyNoRekey() const {
  if (version_ != TlsVersion::kTls13) return "TLS 1.2 has no key update";
  if (!peer_follows_) return "the peer cannot follow a key update (it said so in the hello)";
  return "";
}

void GnutlsRecordChannel::CountTx(size_t n) {
  if (const uint64_t sent = session_->key_updates_sent(); sent != updates_seen_) {
    updates_seen_ = sent;
    tx_use_.Reset();
  }
  tx_use_.Count(n);
}

size_t GnutlsRecordChannel::BudgetTx(size_t want, const std::function<void()>& flush) {
  if (want == 0) return 0;
  // RFC 8446 4.6.3: answer a requested update before our next data. An
  // extra KeyUpdate (GnuTLS may have answered too) is harmless.
  if (version_ == TlsVersion::kTls13 && session_->TakeKeyUpdateRequest()) {
    flush();
    SendKeyUpdate();
  }
  uint64_t left = tx_use_.BytesLeft();
  if (left == 0) {
    const std::string why = WhyNoRekey();
    const uint64_t hard_left = tx_use_.RecordBytesLeft();
    if (why.empty() && hard_left > 0 && !pace_.may_send(KeyUpdatePace::Clock::now())) {
      // Only the byte limit is reached: go on under this key until the
      // peer may take another update (see KeyUpdatePace).
      return static_cast<size_t>(std::min<uint64_t>(want, hard_left));
    }
    flush();
    if (!why.empty()) {
      if (last_words_ && !last_words_spent_) {
        // The record kept back for a KeyUpdate that cannot happen.
        last_words_spent_ = true;
        return static_cast<size_t>(std::min<uint64_t>(want, 16384));
      }
      throw Error(ErrorKind::kSecurity, EKEYEXPIRED,
                  "the send key has protected " + std::to_string(tx_use_.records()) + " records (" +
                      std::to_string(tx_use_.bytes()) + " bytes), its limit, and cannot change: " + why +
                      "; nothing more is sent under it");
    }
    SendKeyUpdate();
    left = tx_use_.BytesLeft();
  }
  return static_cast<size_t>(std::min<uint64_t>(want, left));
}

void GnutlsRecordChannel::SendKeyUpdate() {
  // Flags 0: we change our key and do not ask the peer to change its own.
  const ssize_t rc = RetryWrite([&] { return gnutls_session_key_update(session_->native(), 0); });
  if (rc < 0) ThrowWriteError(rc, "key update");
  pace_.sent(KeyUpdatePace::Clock::now());
  updates_seen_ = session_->key_updates_sent();
  tx_use_.Reset();
}

bool GnutlsRecordChannel::PeerClosed() const {
  char c;
  const ssize_t n = ::recv(session_->fd(), &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE || errno == ENOTCONN));
}

void GnutlsRecordChannel::ThrowRecordError(ssize_t rc, const char* op) {
  int r = static_cast<int>(rc);
  if (r == GNUTLS_E_PREMATURE_TERMINATION) {
    throw Error(ErrorKind::kPeer, EPIPE, std::string("TLS stream truncated during ") + op +
                           ": the peer closed the connection without close_notify");
  }
  if (r == GNUTLS_E_FATAL_ALERT_RECEIVED || r == GNUTLS_E_WARNING_ALERT_RECEIVED) {
    throw AlertReceivedError(static_cast<uint8_t>(gnutls_alert_get(session_->native())), op);
  }
  if (r == GNUTLS_E_UNEXPECTED_PACKET_LENGTH && PeerClosed()) {
    // GnuTLS says this when the stream ends inside a record: a cut, not a
    // forgery.
    throw Error(ErrorKind::kPeer, EPIPE, std::string("TLS stream truncated in the middle of a record during ") + op +
                                             ": the peer or the path closed the connection");
  }
  if (r == GNUTLS_E_DECRYPTION_FAILED || r == GNUTLS_E_UNEXPECTED_PACKET_LENGTH ||
      r == GNUTLS_E_UNEXPECTED_PACKET || r == GNUTLS_E_UNSUPPORTED_VERSION_PACKET) {
    // Tell the peer why we stop (bad_record_mac for a record that fails
    // authentication), as TLS asks: otherwise it sees only a connection
    // closed without close_notify and cannot tell a refusal from a crash.
    // GnuTLS still sends alerts on a session a bad record invalidated.
    // Best effort: the error below is what matters here.
    (void)Locked([&] { return gnutls_alert_send_appropriate(session_->native(), r); });
    throw Error(ErrorKind::kIntegrity, EBADMSG, std::string("TLS record rejected during ") + op +
                             " (forged, corrupted or non-TLS data): " + gnutls_strerror(r));
  }
  if (r == GNUTLS_E_PUSH_ERROR || r == GNUTLS_E_PULL_ERROR) {
    throw Error(ErrorKind::kPeer, ECONNRESET, std::string("TLS ") + op + " failed: the peer reset the connection");
  }
  throw Error(ErrorKind::kInternal, EPROTO, std::string("TLS ") + op + " failed: " + gnutls_strerror(r));
}

void GnutlsRecordChannel::ThrowWriteError(ssize_t rc, const char* op) {
  try {
    ThrowRecordError(rc, op);
  } catch (const Error& e) {
    write_error_ = e;
    throw;
  }
}

WriteResult GnutlsRecordChannel::writev(std::span<const iovec> iov, unsigned flags) {
  if (session_->fd() < 0) throw Error(ErrorKind::kInternal, EBADF, "write on a closed channel");
  last_words_ = (flags & kWriteLastWords) != 0;
  if (write_error_) throw *write_error_;
  gnutls_session_t s = session_->native();
  if (!blocking_) {
    // One record at a time so would_block can be reported exactly.
    const iovec* first = nullptr;
    for (const auto& v : iov) {
      if (v.iov_len) { first = &v; break; }
    }
    if (!first) return {};
    // A pending record was budgeted when it was first tried.
    const size_t n = send_pending_ ? 0 : BudgetTx(first->iov_len, [] {});
    ssize_t rc = Locked([&] {
      return send_pending_ ? gnutls_record_send(s, nullptr, 0) : gnutls_record_send(s, first->iov_base, n);
    });
    if (rc == GNUTLS_E_AGAIN || rc == GNUTLS_E_INTERRUPTED) {
      send_pending_ = true;
      return WriteResult{0, true, {}};
    }
    send_pending_ = false;
    if (rc < 0) ThrowWriteError(rc, "write");
    CountTx(static_cast<size_t>(rc));
    return WriteResult{static_cast<size_t>(rc), false, {}};
  }
  return WriteBlocking(iov);
}

WriteResult GnutlsRecordChannel::WriteBlocking(std::span<const iovec> iov) {
  gnutls_session_t s = session_->native();
  size_t done = 0;
  size_t corked = 0;
  bool is_corked = false;
  auto flush = [&] {
    if (!is_corked) return;
    is_corked = false;
    // Not GNUTLS_RECORD_WAIT: that retries EAGAIN internally forever; the
    // socket timeout must surface as an error instead.
    const ssize_t rc = RetryWrite([&] { return gnutls_record_uncork(s, 0); });
    if (rc < 0) ThrowWriteError(rc, "write");
    ++batches_;
    corked = 0;
  };
  for (const auto& v : iov) {
    const char* p = static_cast<const char*>(v.iov_base);
    size_t left = v.iov_len;
    while (left > 0) {
      const size_t n = BudgetTx(std::min(left, kCorkBatch - corked), flush);
      if (!is_corked) {
        Locked([&] { gnutls_record_cork(s); });
        is_corked = true;
      }
      const ssize_t rc = RetryWrite([&] { return gnutls_record_send(s, p, n); });
      if (rc < 0) ThrowWriteError(rc, "write");
      CountTx(static_cast<size_t>(rc));
      p += rc;
      left -= static_cast<size_t>(rc);
      done += static_cast<size_t>(rc);
      corked += static_cast<size_t>(rc);
      if (corked >= kCorkBatch) flush();
    }
  }
  flush();
  return WriteResult{done, false, {}};
}

ReadResult GnutlsRecordChannel::readv(std::span<const iovec> iov) {
  if (session_->fd() < 0) throw Error(ErrorKind::kInternal, EBADF, "read on a closed channel");
  if (saw_close_notify_) return {};
  gnutls_session_t s = session_->native();
  size_t total = 0;
  AgainGuard again(*this, /*for_write=*/false);
  for (const auto& v : iov) {
    size_t off = 0;
    while (off < v.iov_len) {
      // After the first record, only take what GnuTLS already decrypted.
      if (total > 0 && Locked([&] { return gnutls_record_check_pending(s); }) == 0) return ReadResult{total, false};
      ssize_t rc = Locked([&] { return gnutls_record_recv(s, static_cast<char*>(v.iov_base) + off, v.iov_len - off); });
      if (rc == GNUTLS_E_INTERRUPTED) continue;
      if (rc == GNUTLS_E_AGAIN) {
        if (total > 0) return ReadResult{total, false};
        if (!blocking_) return ReadResult{0, true};
        again.OnAgain();
        continue;
      }
      if (rc == 0) {
        saw_close_notify_ = true;
        return ReadResult{total, false};
      }
      if (rc < 0) ThrowRecordError(rc, "read");
      off += static_cast<size_t>(rc);
      total += static_cast<size_t>(rc);
    }
  }
  return ReadResult{total, false};
}

void GnutlsRecordChannel::shutdown(ShutdownHow how) {
  if (how != ShutdownHow::kWrite) {
    // Never throws (channel.h). kBoth is the abort: no close_notify (it
    // could block on a full buffer, and another thread may be inside
    // GnuTLS right now); it wakes everyone blocked.
    if (session_->fd() >= 0) (void)::shutdown(session_->fd(), how == ShutdownHow::kRead ? SHUT_RD : SHUT_RDWR);
    return;
  }
  if (session_->fd() < 0) throw Error(ErrorKind::kInternal, EBADF, "shutdown on a closed channel");
  if (write_shut_) return;
  if (write_error_) throw *write_error_;
  if (!sent_close_notify_) {
    // A stalled peer gets the write timeout (AgainGuard), as a write would.
    const ssize_t rc = RetryWrite([&] { return gnutls_bye(session_->native(), GNUTLS_SHUT_WR); });
    if (rc < 0) ThrowWriteError(rc, "close_notify");
    sent_close_notify_ = true;
  }
  ShutdownWriteOrThrow(session_->fd(), "the TLS peer");
  write_shut_ = true;
}

bool GnutlsRecordChannel::wait_readable(std::chrono::milliseconds timeout) {
  if (Locked([&] { return gnutls_record_check_pending(session_->native()); }) > 0) return true;
  return WaitFdReadable(session_->fd(), timeout);
}

void GnutlsRecordChannel::close() noexcept { session_->release_fd().reset(); }

void GnutlsRecordChannel::set_blocking(bool blocking) {
  // The fd stays non-blocking (see the class comment); blocking reads and
  // writes wait in AgainGuard.
  blocking_ = blocking;
}

void GnutlsRecordChannel::wait_io(bool for_write) {
  WaitFdReadyOrThrow(session_->fd(), for_write, io_timeout(for_write), "the TLS peer");
}

void GnutlsRecordChannel::set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) {
  SetSocketTimeouts(session_->fd(), read, write);
  Channel::set_io_timeouts(read, write);
}

void GnutlsRecordChannel::AgainGuard::OnAgain() {
  // GNUTLS_E_AGAIN on a blocking socket means the socket timeout expired.
  // But GnuTLS 3.7 also answers it when the stream ends inside a record
  // (recv returned 0 mid-record) and, now and then, right after the peer
  // reset: a cut, not a stall. Only time that really passed is a timeout.
  // The socket is non-blocking, so "again" is normally just a full send
  // buffer or no data yet. It is suspect only when the socket is ready
  // (or, reading, at its end).
  const int fd = ch_.session_->fd();
  const bool ready = PollFd(fd, for_write_ ? POLLOUT : POLLIN, std::chrono::milliseconds(0)) != 0;
  if ((ready || !for_write_) && ch_.PeerClosed()) {
    throw Error(ErrorKind::kPeer, EPIPE,
                for_write_ ? std::string("TLS write failed: the peer closed or reset the connection")
                           : std::string("TLS stream truncated in the middle of a record: the peer or the path "
                                         "closed the connection"));
  }
  const auto timeout = ch_.io_timeout(for_write_);
  const auto elapsed = std::chrono::steady_clock::now() - start_;
  if (timeout.count() >= 0 && elapsed >= timeout) throw IoTimeoutError(for_write_, timeout, "the TLS peer");
  if (ready && ++fast_agains_ > 1000) {
    throw Error(ErrorKind::kPeer, EIO,
                std::string("TLS ") + (for_write_ ? "write" : "read") +
                    " keeps answering 'try again' on a blocking socket: the connection is broken");
  }
  // Not a timeout yet: wait for the socket, at most for what is left.
  const auto left = timeout.count() < 0 ? timeout
                                        : std::chrono::ceil<std::chrono::milliseconds>(timeout - elapsed);
  // A timeout names the io timeout, not the slice that was left of it.
  if (PollFd(fd, for_write_ ? POLLOUT : POLLIN, left) == 0) throw IoTimeoutError(for_write_, timeout, "the TLS peer");
}

}  // namespace ktm

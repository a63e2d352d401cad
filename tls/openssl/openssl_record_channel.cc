#include "tls/openssl/openssl_record_channel.h"

#include <openssl/err.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>

#include <algorithm>

#include "base/fd_wait.h"

namespace ktm {
namespace {
using Clock = std::chrono::steady_clock;

bool AlertReason(int reason) { return reason > SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256; }

bool ForgedReason(int r) {
  return r == SSL_R_DECRYPTION_FAILED_OR_BAD_RECORD_MAC || r == SSL_R_DECRYPTION_FAILED ||
         r == SSL_R_WRONG_VERSION_NUMBER || r == SSL_R_BAD_RECORD_TYPE || r == SSL_R_UNEXPECTED_RECORD ||
         r == SSL_R_UNEXPECTED_MESSAGE || r == SSL_R_PACKET_LENGTH_TOO_LONG ||
         r == SSL_R_ENCRYPTED_LENGTH_TOO_LONG || r == SSL_R_RECORD_LENGTH_MISMATCH || r == SSL_R_LENGTH_MISMATCH ||
         r == SSL_R_BAD_LENGTH || r == SSL_R_DATA_LENGTH_TOO_LONG || r == SSL_R_BAD_PACKET;
}
}  // namespace

template <typename Op>
OpensslRecordChannel::Outcome OpensslRecordChannel::Call(const Op& op) {
  std::lock_guard<std::mutex> lock(ssl_mu_);
  Outcome o;
  ERR_clear_error();
  {
    SigpipeGuard guard(session_->guard_sigpipe());
    o.rc = op(&o.n);
  }
  o.sys_errno = errno;
  o.err = o.rc > 0 ? SSL_ERROR_NONE : SSL_get_error(session_->native(), o.rc);
  if (o.err == SSL_ERROR_SSL || o.err == SSL_ERROR_SYSCALL) o.reason = DrainOpensslErrors(ERR_LIB_SSL, &o.detail);
  return o;
}

template <typename Op>
OpensslRecordChannel::Outcome OpensslRecordChannel::RetryWrite(const Op& op) {
  const auto since = Clock::now();
  for (;;) {
    Outcome o = Call(op);
    if (!o.again()) return o;
    WaitFor(o, /*for_write=*/true, since);
  }
}

OpensslRecordChannel::OpensslRecordChannel(std::unique_ptr<OpensslSession> session, std::string why_userspace)
    : session_(std::move(session)), why_userspace_(std::move(why_userspace)) {
  blocking_ = !IsNonBlocking(session_->fd());
  SetNonBlocking(session_->fd(), true, "a TLS channel");  // see the class comment
  version_ = session_->version();
  // A bare EOF is then reported like close_notify (SSL_ERROR_ZERO_RETURN)
  // instead of as a fatal error: without this OpenSSL 3.0 answers an EOF
  // with a decode_error alert, which the peer (or whoever is left on the
  // path) would read as "the destination refused our data" (integrity)
  // instead of a cut. readv() tells the two apart with
  // peer_sent_close_notify().
  SSL_set_options(session_->native(), SSL_OP_IGNORE_UNEXPECTED_EOF);
  library_tx_ktls_ = session_->library_ktls(TlsDirection::kTransmit);
  tx_use_.set_limits(RecordLimit(session_->cipher()), session_->rekey_after_bytes());
  updates_seen_ = session_->key_updates_sent();
}

OpensslRecordChannel::~OpensslRecordChannel() = default;

std::string OpensslRecordChannel::describe() const {
  std::string ktls;
  if (library_tx_ktls_) ktls += "; OpenSSL sends through kernel TLS it enabled itself";
  if (session_->library_ktls(TlsDirection::kReceive)) ktls += "; OpenSSL receives through kernel TLS";
  return session_->version_name() + " " + session_->cipher_name() + ", userspace TLS (OpenSSL records; " +
         why_userspace_ + ktls + "); zero copy off: OpenSSL reuses its ciphertext buffer";
}

ChannelStats OpensslRecordChannel::stats() const {
  ChannelStats st;
  FillUserspaceRekeyStats(st, tx_use_, session_->key_updates_sent(), session_->key_updates_received(), WhyNoRekey(),
                          TlsBackend::kOpenssl);
  return st;
}

// --- key lifetime ---------------------------------------------------------

std::string OpensslRecordChannel::WhyNoRekey() const {
  if (version_ != TlsVersion::kTls13) return "TLS 1.2 has no key update";
  if (library_tx_ktls_) return "OpenSSL sends through kernel TLS it enabled itself and cannot change that key";
  if (!peer_follows_) return "the peer cannot follow a key update (it said so in the hello)";
  return "";
}

void OpensslRecordChannel::CountTx(size_t n) {
  // OpenSSL may have answered a peer's request meanwhile: a new key.
  if (const uint64_t sent = session_->key_updates_sent(); sent != updates_seen_) {
    updates_seen_ = sent;
    tx_use_.Reset();
  }
  tx_use_.Count(n);
}

size_t OpensslRecordChannel::BudgetTx(size_t want) {
  if (want == 0) return 0;
  uint64_t left = tx_use_.BytesLeft();
  if (left > 0) return static_cast<size_t>(std::min<uint64_t>(want, left));
  const std::string why = WhyNoRekey();
  const uint64_t hard_left = tx_use_.RecordBytesLeft();
  if (why.empty() && hard_left > 0 && !pace_.may_send(KeyUpdatePace::Clock::now())) {
    // Only the byte limit is reached: go on until the peer may take
    // another update (see KeyUpdatePace).
    return static_cast<size_t>(std::min<uint64_t>(want, hard_left));
  }
  if (!why.empty()) {
    if (last_words_ && !last_words_spent_) {
      last_words_spent_ = true;  // the record kept back for an update that cannot happen
      return static_cast<size_t>(std::min<uint64_t>(want, SendKeyUse::kMaxRecordPayload));
    }
    throw Error(ErrorKind::kSecurity, EKEYEXPIRED,
                "the send key has protected " + std::to_string(tx_use_.records()) + " records (" +
                    std::to_string(tx_use_.bytes()) + " bytes), its limit, and cannot change: " + why +
                    "; nothing more is sent under it");
  }
  SendKeyUpdate();
  left = tx_use_.BytesLeft();
  return static_cast<size_t>(std::min<uint64_t>(want, left));
}

void OpensslRecordChannel::SendKeyUpdate() {
  SSL* s = session_->native();
  // Queues the update (our key only); SSL_do_handshake sends it now.
  Outcome o = Call([&](size_t*) { return SSL_key_update(s, SSL_KEY_UPDATE_NOT_REQUESTED); });
  if (o.rc != 1) ThrowWriteError(o, "key update");
  o = RetryWrite([&](size_t*) { return SSL_do_handshake(s); });
  if (o.rc != 1) ThrowWriteError(o, "key update");
  pace_.sent(KeyUpdatePace::Clock::now());
  updates_seen_ = session_->key_updates_sent();
  tx_use_.Reset();
}

// --- errors -----------------------------------------------------------------

void OpensslRecordChannel::ThrowRecordError(const Outcome& o, const char* op) {
  if (o.reason == SSL_R_UNEXPECTED_EOF_WHILE_READING || (o.err == SSL_ERROR_SYSCALL && o.sys_errno == 0)) {
    throw Error(ErrorKind::kPeer, EPIPE, std::string("TLS stream truncated during ") + op +
                                             ": the peer closed the connection without close_notify");
  }
  if (o.err == SSL_ERROR_SYSCALL) {
    if (o.sys_errno == EPIPE || o.sys_errno == ECONNRESET || o.sys_errno == ENOTCONN) {
      throw Error(ErrorKind::kPeer, ECONNRESET, std::string("TLS ") + op + " failed: the peer reset the connection");
    }
    throw Error(ErrorKind::kPeer, o.sys_errno, std::string("TLS ") + op + " failed: " + strerror(o.sys_errno));
  }
  if (AlertReason(o.reason)) throw AlertReceivedError(static_cast<uint8_t>(o.reason - SSL_AD_REASON_OFFSET), op);
  if (ForgedReason(o.reason)) {
    // OpenSSL has sent the peer the matching alert (bad_record_mac...).
    throw Error(ErrorKind::kIntegrity, EBADMSG, std::string("TLS record rejected during ") + op +
                                                    " (forged, corrupted or non-TLS data): " + o.detail);
  }
  throw Error(ErrorKind::kInternal, EPROTO,
              std::string("TLS ") + op + " failed: " + (o.detail.empty() ? "OpenSSL gave no reason" : o.detail));
}

void OpensslRecordChannel::ThrowWriteError(const Outcome& o, const char* op) {
  try {
    ThrowRecordError(o, op);
  } catch (const Error& e) {
    write_error_ = e;
    throw;
  }
}

void OpensslRecordChannel::WaitFor(const Outcome& o, bool for_write, Clock::time_point since) {
  const short events = o.err == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN;
  const auto timeout = io_timeout(for_write);
  if (timeout.count() < 0) {
    PollFd(session_->fd(), events, timeout);
    return;
  }
  const auto left = std::chrono::ceil<std::chrono::milliseconds>(timeout - (Clock::now() - since));
  // A timeout names the io timeout, not the slice that was left of it.
  if (left.count() <= 0 || PollFd(session_->fd(), events, left) == 0) {
    throw IoTimeoutError(for_write, timeout, "the TLS peer");
  }
}

// --- data -------------------------------------------------------------------

WriteResult OpensslRecordChannel::writev(std::span<const iovec> iov, unsigned flags) {
  if (session_->fd() < 0) throw Error(ErrorKind::kInternal, EBADF, "write on a closed channel");
  last_words_ = (flags & kWriteLastWords) != 0;
  if (write_error_) throw *write_error_;
  if (blocking_) return WriteBlocking(iov);
  // One record at a time so would_block can be reported exactly.
  const iovec* first = nullptr;
  for (const auto& v : iov) {
    if (v.iov_len) {
      first = &v;
      break;
    }
  }
  if (!first) return {};
  // A pending record was budgeted when it was first tried.
  const size_t n = send_pending_ ? std::min(pending_len_, first->iov_len) : BudgetTx(first->iov_len);
  SSL* s = session_->native();
  const Outcome o = Call([&](size_t* w) { return SSL_write_ex(s, first->iov_base, n, w); });
  if (o.again()) {
    send_pending_ = true;
    pending_len_ = n;
    return WriteResult{0, true, {}};
  }
  send_pending_ = false;
  if (o.rc != 1) ThrowWriteError(o, "write");
  CountTx(o.n);
  return WriteResult{o.n, false, {}};
}

WriteResult OpensslRecordChannel::WriteBlocking(std::span<const iovec> iov) {
  SSL* s = session_->native();
  size_t done = 0;
  for (const auto& v : iov) {
    const char* p = static_cast<const char*>(v.iov_base);
    size_t left = v.iov_len;
    while (left > 0) {
      const size_t n = BudgetTx(left);
      // Each call sends one record; the wait counts from the last progress.
      const Outcome o = RetryWrite([&](size_t* w) { return SSL_write_ex(s, p, n, w); });
      if (o.rc != 1) ThrowWriteError(o, "write");
      CountTx(o.n);
      p += o.n;
      left -= o.n;
      done += o.n;
    }
  }
  return WriteResult{done, false, {}};
}

ReadResult OpensslRecordChannel::readv(std::span<const iovec> iov) {
  if (session_->fd() < 0) throw Error(ErrorKind::kInternal, EBADF, "read on a closed channel");
  if (saw_close_notify_) return {};
  SSL* s = session_->native();
  size_t total = 0;
  const auto since = Clock::now();
  for (const auto& v : iov) {
    size_t off = 0;
    while (off < v.iov_len) {
      // After the first record, only take what OpenSSL already decrypted.
      if (total > 0 && Call([&](size_t*) { return SSL_pending(s); }).rc <= 0) return ReadResult{total, false};
      const Outcome o =
          Call([&](size_t* n) { return SSL_read_ex(s, static_cast<char*>(v.iov_base) + off, v.iov_len - off, n); });
      if (o.rc == 1) {
        off += o.n;
        total += o.n;
        continue;
      }
      if (o.again()) {
        if (total > 0) return ReadResult{total, false};
        if (!blocking_) return ReadResult{0, true};
        WaitFor(o, /*for_write=*/false, since);
        continue;
      }
      if (o.err == SSL_ERROR_ZERO_RETURN) {
        if (!session_->peer_sent_close_notify()) {
          // The stream ended without close_notify, between records or in
          // the middle of one: a cut (what GnutlsRecordChannel reports),
          // never forgery.
          throw Error(ErrorKind::kPeer, EPIPE,
                      "TLS stream truncated during read: the peer or the path closed the connection without "
                      "close_notify");
        }
        saw_close_notify_ = true;
        return ReadResult{total, false};
      }
      ThrowRecordError(o, "read");
    }
  }
  return ReadResult{total, false};
}

// --- shutdown and the rest --------------------------------------------------

void OpensslRecordChannel::shutdown(ShutdownHow how) {
  if (how != ShutdownHow::kWrite) {
    // Never throws (channel.h). kBoth is the abort: no close_notify; it
    // wakes everyone blocked.
    if (session_->fd() >= 0) (void)::shutdown(session_->fd(), how == ShutdownHow::kRead ? SHUT_RD : SHUT_RDWR);
    return;
  }
  if (session_->fd() < 0) throw Error(ErrorKind::kInternal, EBADF, "shutdown on a closed channel");
  if (write_shut_) return;
  if (write_error_) throw *write_error_;
  if (!sent_close_notify_) {
    // 0 or 1: our close_notify is out (we do not wait for the peer's).
    SSL* s = session_->native();
    const Outcome o = RetryWrite([&](size_t*) {
      const int rc = SSL_shutdown(s);
      return rc >= 0 ? 1 : rc;
    });
    if (o.rc != 1) ThrowWriteError(o, "close_notify");
    sent_close_notify_ = true;
  }
  ShutdownWriteOrThrow(session_->fd(), "the TLS peer");
  write_shut_ = true;
}

bool OpensslRecordChannel::wait_readable(std::chrono::milliseconds timeout) {
  SSL* s = session_->native();
  if (Call([&](size_t*) { return SSL_pending(s); }).rc > 0) return true;
  return WaitFdReadable(session_->fd(), timeout);
}

void OpensslRecordChannel::close() noexcept { session_->release_fd().reset(); }

void OpensslRecordChannel::wait_io(bool for_write) {
  WaitFdReadyOrThrow(session_->fd(), for_write, io_timeout(for_write), "the TLS peer");
}

void OpensslRecordChannel::set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) {
  SetSocketTimeouts(session_->fd(), read, write);
  Channel::set_io_timeouts(read, write);
}

}  // namespace ktm

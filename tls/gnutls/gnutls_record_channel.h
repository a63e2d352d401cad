// GnutlsRecordChannel: userspace TLS records (GnuTLS) on an fd GnuTLS owns.
//
// This is the fallback when the session cannot move into the kernel. GnuTLS
// encrypts each record into its own buffer and reuses that buffer for the
// next record, so the caller's pages are copied once here and zero copy is
// impossible: the channel never advertises kFeatureZeroCopyWrite and every
// write is synchronous (the buffer may be reused when writev returns).
//
// Blocking writes cork records and uncork once per batch, so several records
// leave in one syscall. Non-blocking writes follow GnuTLS's rule: after
// would_block the next writev must start with the same bytes again (GnuTLS
// has already encrypted them and only finishes sending them).
//
// Key lifetime (TLS 1.3), the same policy as KtlsChannel: the session never
// re-keys by itself (GNUTLS_NO_AUTO_REKEY); this channel counts the records
// and bytes it sends under the current key and sends a KeyUpdate before
// RecordLimit() records or TlsOptions::rekey_after_bytes bytes, and before
// its next data when the peer asked for one. GnuTLS follows the peer's
// KeyUpdates. Where the key cannot change (TLS 1.2, or a peer that said it
// cannot follow: set_peer_follows_key_updates(false)), writes past the
// limit fail with Error(kSecurity) instead of going out under a worn-out
// key. Threads: one reader and one writer may run at once.
//
// GnuTLS 3.7 is not safe when one thread changes a key (a KeyUpdate sent,
// or one received and followed) while another encrypts or decrypts on the
// same session: full-duplex re-keying corrupted records and crashed in
// tests. So every GnuTLS call on the session runs under one mutex, and none
// of them blocks: the socket is non-blocking underneath (blocking() is this
// channel's behaviour, not the fd's), and waiting for the socket happens
// outside the mutex, so a reader waiting for data never holds up the writer.
#pragma once

#include <mutex>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "base/error.h"
#include "channel/channel.h"
#include "tls/gnutls/gnutls_session.h"

namespace ktm {

class GnutlsRecordChannel : public Channel {
 public:
  // `why_userspace` is reported by describe() (e.g. why kTLS was not used).
  GnutlsRecordChannel(std::unique_ptr<GnutlsSession> session, std::string why_userspace);
  ~GnutlsRecordChannel() override;

  unsigned features() const override { return kFeatureShutdown | kFeatureEncrypted; }
  std::string describe() const override;
  ChannelStats stats() const override;
  WriteResult writev(std::span<const iovec> iov, unsigned flags) override;
  ReadResult readv(std::span<const iovec> iov) override;
  void shutdown(ShutdownHow how) override;
  void close() noexcept override;
  void set_blocking(bool blocking) override;
  bool blocking() const override { return blocking_; }
  bool wait_readable(std::chrono::milliseconds timeout) override;
  void set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) override;
  void set_peer_follows_key_updates(bool follows) override { peer_follows_ = follows; }
  uint64_t send_budget() const override { return WhyNoRekey().empty() ? UINT64_MAX : tx_use_.BytesLeft(); }

  GnutlsSession& session() { return *session_; }
  // Syscall-level batching visible to tests: records sent and uncorks done.
  uint64_t records_batched() const { return batches_; }

 protected:
  void wait_io(bool for_write) override;

 private:
  // writev() in blocking mode: corks records and uncorks once per batch.
  WriteResult WriteBlocking(std::span<const iovec> iov);
  [[noreturn]] void ThrowRecordError(ssize_t rc, const char* op);
  // ThrowRecordError for the write side, remembering the error: GnuTLS
  // invalidates the session after a failed send, so later writes and
  // shutdown(kWrite) throw this again instead of "invalid session".
  [[noreturn]] void ThrowWriteError(ssize_t rc, const char* op);
  // Key lifetime (writer's state; peer_follows_ may be set from anywhere).
  // Why the send key cannot change ("" when it can).
  std::string WhyNoRekey() const;
  // Before `want` bytes of data: answers a peer's request and sends a due
  // KeyUpdate, calling `flush` first so corked data leaves under the key
  // it was counted against; returns how many bytes may go now. Throws
  // Error(kSecurity) (after `flush`) when the key is exhausted for good.
  size_t BudgetTx(size_t want, const std::function<void()>& flush);
  bool last_words_ = false;        // this write has kWriteLastWords
  bool last_words_spent_ = false;  // ...and used the kept-back record
  // `n` bytes sent; restarts the count if GnuTLS changed the key meanwhile
  // (it answers a peer's request on its own when it can).
  void CountTx(size_t n);
  void SendKeyUpdate();
  // Whether the socket is at end of stream (nothing left, peer closed).
  bool PeerClosed() const;
  // Runs a blocking GnuTLS write operation until it stops saying "again"
  // (interrupted, or AgainGuard decides). Returns its final result.
  template <typename Op>
  ssize_t RetryWrite(const Op& op);
  // GNUTLS_E_AGAIN in blocking mode, within one read or write call: tells a
  // real timeout (time passed) from a cut connection.
  class AgainGuard {
   public:
    AgainGuard(GnutlsRecordChannel& ch, bool for_write)
        : ch_(ch), for_write_(for_write), start_(std::chrono::steady_clock::now()) {}
    void OnAgain();

   private:
    GnutlsRecordChannel& ch_;
    bool for_write_;
    std::chrono::steady_clock::time_point start_;
    int fast_agains_ = 0;
  };
  std::unique_ptr<GnutlsSession> session_;
  std::string why_userspace_;
  bool blocking_ = true;
  bool send_pending_ = false;  // a record is encrypted but not fully sent
  bool saw_close_notify_ = false;
  bool sent_close_notify_ = false;  // set only once gnutls_bye succeeded
  bool write_shut_ = false;         // shutdown(kWrite) completed
  std::optional<Error> write_error_;  // the first failure of the write side
  uint64_t batches_ = 0;
  TlsVersion version_ = TlsVersion::kOther;
  SendKeyUse tx_use_;  // under the current send key
  uint64_t updates_seen_ = 0;               // key_updates_sent() when the count restarted
  std::atomic<bool> peer_follows_{true};
  KeyUpdatePace pace_;
  // Held for each GnuTLS call on the session, never while waiting.
  mutable std::mutex gnutls_mu_;
  // Runs one GnuTLS call under gnutls_mu_.
  template <typename Op>
  auto Locked(const Op& op) const {
    std::lock_guard<std::mutex> lock(gnutls_mu_);
    return op();
  }
};

}  // namespace ktm

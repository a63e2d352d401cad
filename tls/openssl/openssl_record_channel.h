// OpensslRecordChannel: userspace TLS records (OpenSSL) on an fd OpenSSL
// owns. The same contract as GnutlsRecordChannel (see its header), with
// OpenSSL's particulars:
//
// - Each SSL_write makes one record (SSL_MODE_ENABLE_PARTIAL_WRITE) and
//   OpenSSL sends each record with its own write(2): OpenSSL has no cork,
//   so records_batched stays 0. Zero copy is impossible for the same reason
//   as with GnuTLS (OpenSSL encrypts into its own reused buffer); every
//   write is synchronous.
// - Non-blocking writes: after would_block the next writev must start with
//   the same bytes again (OpenSSL has encrypted them already).
// - Key lifetime (TLS 1.3): the channel counts what it sends under the
//   current key and starts a KeyUpdate (SSL_key_update, not requesting the
//   peer's) before RecordLimit() records or rekey_after_bytes bytes, paced
//   by KeyUpdatePace. OpenSSL follows the peer's updates and answers a
//   request by itself. No update where the key cannot change (TLS 1.2, a
//   peer that said it cannot follow, or a send direction OpenSSL moved
//   into the kernel itself): writes past the limit fail with
//   Error(kSecurity) then.
// - When OpenSSL enabled kTLS for a direction itself (SSL_OP_ENABLE_KTLS),
//   SSL_read/SSL_write still carry the data; the kernel does the crypto.
//
// Threads: one reader and one writer may run at once. An SSL object is not
// safe for concurrent use, so every OpenSSL call runs under one mutex, and
// none blocks: the socket is non-blocking underneath (blocking() is this
// channel's behaviour) and waiting happens outside the mutex.
//
// Known limit: a peer's KeyUpdate that *requests* ours, arriving while a
// write of ours is stalled half-sent on a full socket, makes OpenSSL fail
// the session (it answers from inside SSL_read and cannot interleave that
// record with the pending one). Neither backend's channel requests
// updates; only foreign peers could.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "base/error.h"
#include "channel/channel.h"
#include "tls/openssl/openssl_session.h"

namespace ktm {

class OpensslRecordChannel : public Channel {
 public:
  // `why_userspace` is reported by describe() (e.g. why kTLS was not used).
  OpensslRecordChannel(std::unique_ptr<OpensslSession> session, std::string why_userspace);
  ~OpensslRecordChannel() override;

  unsigned features() const override { return kFeatureShutdown | kFeatureEncrypted; }
  std::string describe() const override;
  ChannelStats stats() const override;
  WriteResult writev(std::span<const iovec> iov, unsigned flags) override;
  ReadResult readv(std::span<const iovec> iov) override;
  void shutdown(ShutdownHow how) override;
  void close() noexcept override;
  void set_blocking(bool blocking) override { blocking_ = blocking; }
  bool blocking() const override { return blocking_; }
  bool wait_readable(std::chrono::milliseconds timeout) override;
  void set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) override;
  void set_peer_follows_key_updates(bool follows) override { peer_follows_ = follows; }
  uint64_t send_budget() const override { return WhyNoRekey().empty() ? UINT64_MAX : tx_use_.BytesLeft(); }

  OpensslSession& session() { return *session_; }

 protected:
  void wait_io(bool for_write) override;

 private:
  // One OpenSSL call's outcome, taken under the mutex right after it.
  struct Outcome {
    int rc = 0;
    size_t n = 0;         // bytes moved (SSL_read_ex / SSL_write_ex)
    int err = 0;          // SSL_get_error, SSL_ERROR_NONE on success
    int sys_errno = 0;    // errno after the call
    int reason = 0;       // first ERR_LIB_SSL reason code
    std::string detail;   // the error queue as text
    bool again() const { return err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE; }
  };
  // Runs op(&n) under the mutex with a clean error queue and SIGPIPE kept
  // away (SigpipeGuard).
  template <typename Op>
  Outcome Call(const Op& op);
  // Waits outside the mutex for what `o` wants, at most what is left of
  // the io timeout since `since`; throws the timeout error.
  void WaitFor(const Outcome& o, bool for_write, std::chrono::steady_clock::time_point since);
  // Retries a write-side call until done, waiting as needed.
  template <typename Op>
  Outcome RetryWrite(const Op& op);
  [[noreturn]] void ThrowRecordError(const Outcome& o, const char* op);
  // ThrowRecordError for the write side, remembering the error: OpenSSL
  // refuses further writes after a fatal one, so later writes and
  // shutdown(kWrite) throw this again.
  [[noreturn]] void ThrowWriteError(const Outcome& o, const char* op);
  WriteResult WriteBlocking(std::span<const iovec> iov);
  // Key lifetime: see GnutlsRecordChannel (the same policy).
  std::string WhyNoRekey() const;
  size_t BudgetTx(size_t want);
  void CountTx(size_t n);
  void SendKeyUpdate();

  std::unique_ptr<OpensslSession> session_;
  std::string why_userspace_;
  bool blocking_ = true;
  bool library_tx_ktls_ = false;
  bool send_pending_ = false;  // a record is encrypted but not fully sent
  size_t pending_len_ = 0;     // ...from a write of this many bytes
  bool saw_close_notify_ = false;
  bool sent_close_notify_ = false;
  bool write_shut_ = false;
  bool last_words_ = false, last_words_spent_ = false;
  std::optional<Error> write_error_;
  TlsVersion version_ = TlsVersion::kOther;
  SendKeyUse tx_use_;
  uint64_t updates_seen_ = 0;
  std::atomic<bool> peer_follows_{true};
  KeyUpdatePace pace_;
  // Held for each OpenSSL call on the session, never while waiting.
  mutable std::mutex ssl_mu_;
};

}  // namespace ktm

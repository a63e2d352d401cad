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
#pragma once

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

  GnutlsSession& session() { return *session_; }
  // Syscall-level batching visible to tests: records sent and uncorks done.
  uint64_t records_batched() const { return batches_; }

 protected:
  void wait_io(bool for_write) override;

 private:
  [[noreturn]] void ThrowRecordError(ssize_t rc, const char* op);
  // ThrowRecordError for the write side, remembering the error: GnuTLS
  // invalidates the session after a failed send, so later writes and
  // shutdown(kWrite) throw this again instead of "invalid session".
  [[noreturn]] void ThrowWriteError(ssize_t rc, const char* op);
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
};

}  // namespace ktm

// Moving a TLS session into the kernel (kTLS), and the kTLS channel.
//
// Debian's GnuTLS is built without kTLS, so after the handshake we install
// the keys ourselves: TCP_ULP "tls", then TLS_TX and TLS_RX laid out by the
// kernel cipher table (cipher_table.h) from the session's exported traffic
// keys. After that plain sendmsg()/recvmsg() on the fd carry TLS records the
// kernel encrypts and decrypts. OpenSSL (SSL_OP_ENABLE_KTLS) moves some
// directions itself (3.0: TLS 1.2 both, TLS 1.3 send only); we install the
// others, and from then on the channel owns every direction alike.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "channel/channel.h"
#include "base/unique_fd.h"
#include "ktls/cipher_table.h"
#include "ktls/rekey.h"
#include "tls/tls_session.h"

namespace ktm {

// Whether this kernel offers the "tls" ULP, tested on a loopback TCP
// connection. Returns nullopt when available, else the reason, e.g.
// "kernel has no tls module: TCP_ULP returned ENOENT".
std::optional<std::string> ProbeKtlsUlp();

// Whether this kernel takes TLS_TX with `row`'s cipher: sets it, with
// zeroed keys, on a loopback connection with the ULP. "yes", or "no (why)".
std::string ProbeKernelCipher(const KernelCipher& row);

// Attaches the "tls" ULP to a connected TCP socket before its TLS handshake,
// best effort (a failure shows again, with its reason, in InstallKtls).
// Why before: the kernel attaches the ULP only to an ESTABLISHED socket, and
// a peer may send its whole (short) stream, close_notify and its FIN right
// after its own handshake, before ours has returned: the socket is then in
// CLOSE_WAIT and TCP_ULP fails with ENOTCONN, although the keys could still
// be installed and every record read. Without keys the ULP passes bytes
// through unchanged, so the handshake (and a userspace fallback) run as if
// it were absent. Never throws.
void AttachKtlsUlpEarly(int fd) noexcept;

// Installs, on the session's fd, the directions the TLS library did not move
// into the kernel itself (TlsSession::library_ktls; with GnuTLS both,
// with OpenSSL 3.0 and TLS 1.3 receive only, with OpenSSL and TLS 1.2
// none), attaching the ULP unless AttachKtlsUlpEarly or the library already
// did. Returns nullopt on success, or the reason nothing was installed.
// Also refuses (a reason) when the library holds decrypted records nobody
// has read, even with nothing left to install: a kTLS channel reads the fd
// itself and would lose them.
// Failure cases: a direction the library took stays the library's, and a
// refusal of the one we install leaves the session usable through its
// userspace record channel (the library goes on handling its own
// direction), so that is a reason, not an error. Only when we install both
// and the kernel takes TX but refuses RX can the connection no longer be
// used in any mode: that throws Error(kInternal).
std::optional<std::string> InstallKtls(TlsSession& session);

// Who moved one direction of a session into the kernel.
enum class KtlsOwner { kNone, kLibrary, kUs };

// Both directions' owners, and the library (for "enabled by OpenSSL").
struct KtlsOwnership {
  KtlsOwner send = KtlsOwner::kNone;
  KtlsOwner receive = KtlsOwner::kNone;
  TlsBackend library = TlsBackend::kGnutls;

  bool both_ours() const { return send == KtlsOwner::kUs && receive == KtlsOwner::kUs; }
  bool both_library() const { return send == KtlsOwner::kLibrary && receive == KtlsOwner::kLibrary; }
  // Per direction, for reports: "send enabled by OpenSSL, receive keys
  // installed by us"; "send and receive enabled by OpenSSL" when both
  // have one owner. kNone directions say "in userspace".
  std::string Describe() const;
};
// The owners once InstallKtls has succeeded on `session`: the library for
// the directions it took, us for the rest.
KtlsOwnership OwnershipAfterInstall(const TlsSession& session);

// /proc/net/tls_stat as name -> value (empty when the file is absent).
std::map<std::string, uint64_t> ReadTlsStat();

// KtlsChannel: the kernel holds the keys; plaintext goes to the fd.
//
// Writes: sendmsg() encrypts from the caller's pages before it returns, so
// writes are synchronous (reuse the buffer at once) and involve no userspace
// copy. MSG_ZEROCOPY is never passed (the kernel rejects it on kTLS
// sockets). kFeatureZeroCopyWrite is advertised in that sense: no copy, but
// no ids to wait for either.
// Reads: application data is returned; close_notify is a clean EOF; any
// other alert is an Error naming it; TLS 1.3 NewSessionTicket is consumed
// and ignored. EOF without close_notify is reported as truncation.
//
// Either direction may have been moved into the kernel by the TLS library
// (OpenSSL) or by InstallKtls: the channel treats both alike, since after
// the move only the kernel and this channel touch the socket.
//
// Key updates (TLS 1.3, see rekey.h): a peer's KeyUpdate is followed (the
// next receive key set with TLS_RX) where the kernel can re-key, and is an
// Error(kSecurity) where it cannot. The send key changes (KeyUpdate sent,
// then TLS_TX) before RecordLimit() records or `rekey_after_bytes` bytes,
// and before the next data when the peer asked for it. Updates for the
// byte limit keep KeyUpdatePace (tls_types.h: a GnuTLS peer takes at most 8
// a second); the record limit never waits. Where it cannot
// change (TLS 1.2, a kernel without re-keying, a peer that cannot follow),
// writes past the limit fail with Error(kSecurity) instead of going out
// under a worn-out key. Threads: one reader and one writer may run at once
// (the reader only flags a requested update; the writer sends it).
// The library does not re-key a direction it moved into the kernel either
// (OpenSSL neither follows nor sends KeyUpdate under kTLS), so this channel
// re-keys every direction, whoever installed it, from the session's
// exported traffic secrets (ExportKernelKeys(dir).secret(): for a library
// direction the exported key and sequence number may be stale, the secret
// is not).
class KtlsChannel : public Channel {
 public:
  // Takes the session's fd and names, then frees the session: the TLS
  // library's own copy of the traffic keys goes with it, since the kernel
  // holds them now (TLS 1.3: this channel keeps the traffic secrets, to
  // derive the next keys from). `owners`: who moved each direction (both
  // must be in the kernel), for describe(). rekey_after_bytes: change the
  // send key after this many bytes as well (0: only at the cipher's record
  // limit).
  KtlsChannel(std::unique_ptr<TlsSession> session, const KtlsOwnership& owners, uint64_t rekey_after_bytes = 0);
  ~KtlsChannel() override;

  unsigned features() const override {
    return kFeatureShutdown | kFeatureEncrypted | kFeatureZeroCopyWrite | kFeatureRecordWrites;
  }
  std::string describe() const override;
  ChannelStats stats() const override;
  int splice_fd() const override { return fd_.get(); }
  WriteResult writev(std::span<const iovec> iov, unsigned flags) override;
  ReadResult readv(std::span<const iovec> iov) override;
  void shutdown(ShutdownHow how) override;
  void close() noexcept override;
  void set_blocking(bool blocking) override;
  bool blocking() const override { return blocking_; }
  bool wait_readable(std::chrono::milliseconds timeout) override;
  void set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) override;
  size_t prepare_direct_write(size_t want) override;
  void set_peer_follows_key_updates(bool follows) override { peer_follows_ = follows; }
  uint64_t send_budget() const override { return WhyNoTxRekey().empty() ? UINT64_MAX : tx_use_.BytesLeft(); }

  int fd() const { return fd_.get(); }
  uint64_t session_tickets_ignored() const { return tickets_ignored_; }

 protected:
  void wait_io(bool for_write) override;

 private:
  UniqueFd fd_;
  KtlsOwnership owners_;
  bool blocking_ = true;
  bool saw_close_notify_ = false;
  bool sent_close_notify_ = false;  // set only once its sendmsg succeeded
  bool write_shut_ = false;         // shutdown(kWrite) completed
  uint64_t tickets_ignored_ = 0;
  std::string names_;
  // A control record (alert, ticket, KeyUpdate) is gathered here whole,
  // even when it came in pieces into a reader's small buffer. Application
  // data never passes through it (see readv), so nothing is pending.
  std::vector<uint8_t> scratch_;

  // Key lifetime. The send side's state belongs to the writer; the reader
  // touches only rx_keys_ and the atomics.
  TlsVersion version_ = TlsVersion::kOther;
  TlsCipher cipher_ = TlsCipher::kOther;
  TrafficKeySchedule tx_keys_, rx_keys_;
  bool kernel_rekey_ = false;
  std::string rekey_detail_;
  SendKeyUse tx_use_;                       // under the current send key
  KeyUpdatePace pace_;                      // updates for the byte limit wait for it
  bool last_words_spent_ = false;           // kWriteLastWords used its record
  std::atomic<bool> update_requested_{false};
  std::atomic<bool> peer_follows_{true};
  std::atomic<uint64_t> updates_sent_{0}, updates_received_{0};
  bool rx_no_pad_ = false;
  std::string rx_no_pad_detail_;

  void SetUpKeyLifetime(TlsSession& session, uint64_t rekey_after_bytes);
  void SetUpRxNoPad();
  // Why the send key cannot change ("" when it can).
  std::string WhyNoTxRekey() const;
  // Before `want` bytes of data: sends a requested or due KeyUpdate;
  // returns how many bytes may go now. Throws when the key is exhausted.
  // last_words: kWriteLastWords (may use the kept-back record, once).
  size_t BudgetTx(size_t want, bool last_words = false);
  // Sends KeyUpdate(request) under the current key, then sets TLS_TX to
  // the next. Throws on failure (after the KeyUpdate left, fatally).
  void SendKeyUpdate(unsigned char request);
  // A peer's KeyUpdate (its body byte): sets TLS_RX to its next key.
  void FollowKeyUpdate(unsigned char request);
  // Sends one record of `type` holding `len` bytes, waiting for room up
  // to the write timeout.
  void SendControlRecord(unsigned char type, const unsigned char* bytes, size_t len, const char* what);

  // One recvmsg. Returns bytes, the record type and whether the read took
  // the record's last byte, or SIZE_MAX when a non-blocking read would block.
  size_t RecvRecord(std::span<const iovec> iov, unsigned char* type, bool* record_end);
  size_t GatherControlRecord(std::span<const iovec> iov, size_t n, bool record_end, unsigned char type);
  // Sends the close_notify alert record. Throws kPeer when the peer has
  // gone, kTimeout when it does not read within the write timeout.
  void SendCloseNotify();
  // Tells the peer, best effort and without blocking, why we stop reading:
  // a fatal alert (bad_record_mac, decode_error) after the kernel refused
  // one of its records, as the userspace channel does. Without it the peer
  // sees a connection closed without close_notify and cannot tell a
  // refusal of its data from a crash.
  void SendFatalAlertBestEffort(unsigned char description) noexcept;
  // EAGAIN in blocking mode: the socket timeout expired.
  void OnBlockingEagain(bool for_write);
  // Handles a non-data record held in [p, p+n). Returns true for EOF.
  bool HandleControlRecord(unsigned char type, const uint8_t* p, size_t n);
};

}  // namespace ktm

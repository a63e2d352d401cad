// The Channel interface: a byte stream with explicit buffer-lifetime rules.
//
// Every transport layer (plain socket, userspace TLS, kernel TLS) implements
// this interface, and the migration transport only ever talks to it. The one
// thing that makes this more than read()/write() is zero copy: a write made
// with kWriteZeroCopy on a channel that has kFeatureZeroCopyWrite may leave
// the caller's pages pinned in the kernel after writev() returns. Such a
// write gets a range of write ids (WriteResult::zc), and the caller must not
// modify or free those pages until the ids are released (is_released(),
// flush(), or the release callback says so). Writes without the flag, and
// every write on a channel without the feature, are synchronous: the buffer
// may be reused as soon as writev() returns.
//
// kTLS channels advertise kFeatureZeroCopyWrite in the weaker sense that
// the kernel encrypts straight from the caller's pages (no userspace copy),
// but they return no ids: their writes are synchronous.
//
// Threading: one thread may write (writev/flush/shutdown) while another
// reads (readv); otherwise a Channel is used by one thread at a time.
// Callbacks run on the thread that called the method which observed the
// completion.
//
// Errors: methods throw ktm::Error (kind, errno, an actionable sentence). In
// non-blocking mode "would block" is not an error: partial methods report it
// in their result; the *_all variants wait for readiness instead.
#pragma once

#include <sys/uio.h>

#include <chrono>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>

namespace ktm {

// Write flags (bit set).
inline constexpr unsigned kWriteZeroCopy = 1u << 0;  // may hand pages to the kernel
// The channel's last words before it is abandoned (a migration's ABORT): a
// TLS channel whose send key is spent and cannot change may still carry
// this one short message (at most one record, once) in the record it
// keeps back for a key update, so the peer learns why instead of seeing a
// vanished sender.
inline constexpr unsigned kWriteLastWords = 1u << 1;

// Feature bits a channel advertises; test with has_feature(), not type checks.
enum Feature : unsigned {
  kFeatureZeroCopyWrite = 1u << 0,  // kWriteZeroCopy avoids the userspace copy
  kFeatureShutdown = 1u << 1,       // shutdown() half-closes
  kFeatureEncrypted = 1u << 2,      // bytes on the wire are encrypted
  // Each writev() ends the TLS records it makes (kTLS: full 16 KiB records,
  // the tail short), and a read whose buffers hold whole records gets them
  // decrypted in place, without a copy. A writer should put a small header
  // and the bulk data after it in separate writes, so the bulk arrives in
  // records of its own. Without the bit, fewer, larger writes are better
  // (userspace TLS corks them into records; plain sockets: fewer syscalls).
  kFeatureRecordWrites = 1u << 3,
};

// A half-open range [first, end) of zero-copy write ids. Empty when the
// write was copied synchronously (below threshold, or no zero copy).
struct ZeroCopyIds {
  uint64_t first = 0;
  uint64_t end = 0;
  bool empty() const { return first == end; }
};

struct WriteResult {
  size_t bytes = 0;          // bytes the kernel accepted
  bool would_block = false;  // non-blocking mode only: nothing accepted
  ZeroCopyIds zc;            // ids pinning the caller's pages, if any
};

struct ReadResult {
  size_t bytes = 0;          // 0 with !would_block means end of stream
  bool would_block = false;  // non-blocking mode only
  bool eof() const { return bytes == 0 && !would_block; }
};

// Outcome of a flush. `complete` is false only for try_flush() that had to
// stop because completions were not yet available.
struct FlushResult {
  bool complete = true;
  uint64_t released = 0;      // write ids released during this call
  bool any_zero_copied = false;  // any id released since the last flush avoided the copy
};

// Called when zero-copy writes are released: inclusive range of write ids,
// and whether the kernel ended up copying them anyway. Each id is reported
// exactly once.
using ReleaseCallback = std::function<void(uint64_t first, uint64_t last, bool copied)>;

// Zero-copy bookkeeping of one channel (see ZeroCopyTracker).
struct ZeroCopyCounters {
  uint64_t sends = 0;            // sendmsg(MSG_ZEROCOPY) calls that queued data
  uint64_t released = 0;         // of those, released by the kernel
  uint64_t zero_copied = 0;      // released with the copy really avoided
  uint64_t copied = 0;           // released with SO_EE_CODE_ZEROCOPY_COPIED
  uint64_t completion_records = 0;  // error-queue notifications processed
  uint64_t enobufs_retries = 0;  // ENOBUFS answered by draining + retrying
  uint64_t below_threshold = 0;  // zero-copy requests sent by copy (too small)
  uint64_t outstanding() const { return sends - released; }
};

// Neutral counters a channel reports about itself, for reports and tests;
// no caller needs to know the channel's concrete type.
struct ChannelStats {
  bool has_zero_copy_counters = false;  // the counters below are meaningful
  ZeroCopyCounters zc;
  std::string backend;                  // "sendmsg" / "io_uring" where zero copy is issued
  uint64_t fixed_sends = 0;             // io_uring registered-buffer sends
  uint64_t max_in_flight = 0;           // io_uring: most sends awaiting their result at once
  uint64_t records_batched = 0;         // userspace TLS: uncorked batches sent
  uint64_t session_tickets_ignored = 0; // kTLS: NewSessionTicket records skipped
  // TLS key lifetime (RFC 8446 4.6.3, 5.5): meaningful when rekey.applies.
  struct Rekey {
    bool applies = false;             // a TLS channel that counts its records
    uint64_t sent = 0;                // KeyUpdates we sent (our send key changed)
    uint64_t received = 0;            // KeyUpdates the peer sent that we followed
    uint64_t limit_records = 0;       // our send key changes before this many records...
    uint64_t limit_bytes = 0;         // ...or this many bytes (0: no byte limit)
    bool can_rekey = false;           // this channel can change keys (kTLS: the kernel can)
    std::string detail;               // why not, or how ("kernel re-keys kTLS")
  } rekey;
  // kTLS receive: TLS_RX_EXPECT_NO_PAD (decrypt straight into the reader's buffer).
  bool rx_no_pad = false;
  std::string rx_no_pad_detail;
};

enum class ShutdownHow { kRead, kWrite, kBoth };

class Channel {
 public:
  virtual ~Channel() = default;
  Channel() = default;
  Channel(const Channel&) = delete;
  Channel& operator=(const Channel&) = delete;

  virtual unsigned features() const = 0;
  bool has_feature(Feature f) const { return (features() & f) != 0; }

  // Human-readable description of the path this channel takes, e.g.
  // "tcp 127.0.0.1:4444, MSG_ZEROCOPY on (threshold 10240 bytes)".
  virtual std::string describe() const = 0;

  // Counters for reports and tests (see ChannelStats).
  virtual ChannelStats stats() const { return {}; }

  // An fd that carries this channel's plaintext when read and written
  // directly (so splice(2) can move it without a userspace copy): the
  // socket of a plain or kernel-TLS channel, -1 when the bytes must pass
  // through readv/writev (userspace TLS). Reads from it may fail with EINVAL
  // or EIO when a kernel-TLS control record (alert, session ticket) is next:
  // readv() then consumes that record. The channel keeps owning the fd.
  // Before reading from it, take what pending_read() says the channel
  // already holds with readv(): those bytes are no longer in the socket.
  virtual int splice_fd() const { return -1; }

  // For callers that write straight to splice_fd(): call before each
  // write of up to `want` bytes to it. The channel first does what must
  // precede more data (a TLS key update that is due or that the peer
  // asked for) and returns how many of those bytes may go now (at least 1
  // when want > 0); the caller writes at most that many and calls again
  // for the rest. Counts them as written (write fewer, and the next key
  // update merely comes early). Throws Error(kSecurity) when the send key
  // is exhausted and cannot change. Not thread-safe against writev().
  virtual size_t prepare_direct_write(size_t want) { return want; }

  // TLS: whether the peer can follow a KeyUpdate from us (the migration
  // hello says; default true, as TLS 1.3 requires of every peer). When
  // false the channel never sends one and refuses to write past its key's
  // limit instead.
  virtual void set_peer_follows_key_updates(bool follows) { (void)follows; }

  // TLS: bytes this channel can still send before its send key is spent,
  // when that key cannot change (TLS 1.2, kTLS on a kernel that cannot
  // re-key, a peer that cannot follow); UINT64_MAX when it can change or
  // the channel has no key limit. A writer of framed messages checks it
  // before a message, so the channel never fails in the middle of one and
  // its last words (kWriteLastWords) land on a message boundary.
  virtual uint64_t send_budget() const { return UINT64_MAX; }

  // Plaintext the channel has already taken from the socket and not yet
  // returned (GnuTLS records; kTLS keeps none: a record partly read stays
  // in the kernel, decrypted, where splice(2) from splice_fd() finds it).
  virtual size_t pending_read() const { return 0; }

  // Partial write of the iovec. Blocking mode: blocks until at least one
  // byte is accepted. Non-blocking mode: returns would_block if none was.
  // Buffer ownership: see the file comment (zc ids pin the pages).
  // Throws on connection errors and on errors reported asynchronously by
  // earlier zero-copy writes.
  virtual WriteResult writev(std::span<const iovec> iov, unsigned flags) = 0;

  // Partial read. Blocking mode: blocks until at least one byte or EOF.
  // Non-blocking mode: returns would_block if nothing is available.
  // The caller owns the buffers; they are filled when this returns.
  virtual ReadResult readv(std::span<const iovec> iov) = 0;

  // Writes the whole iovec, waiting for writability in non-blocking mode.
  // Returns the union of the zero-copy ids the writes produced.
  ZeroCopyIds writev_all(std::span<const iovec> iov, unsigned flags);
  ZeroCopyIds write_all(const void* buf, size_t len, unsigned flags = 0);

  // Reads exactly the iovec's total length, waiting as needed. Returns false
  // if the stream ended cleanly before the first byte; throws an Error
  // ("truncated") if it ended part-way.
  bool readv_all(std::span<const iovec> iov);
  bool read_all(void* buf, size_t len);

  // Blocks until every zero-copy write issued so far is released. After it
  // returns the caller may reuse every buffer it has written. Channels
  // without zero copy return at once. Throws if a write failed in the kernel.
  virtual FlushResult flush() { return {}; }

  // Like flush() but never blocks: processes the completions already
  // available and returns complete=false if some writes are still pinned.
  virtual FlushResult try_flush() { return flush(); }

  // True when every id in `ids` is released (always true when empty).
  virtual bool is_released(ZeroCopyIds ids) const { return ids.empty(); }

  // Installs the release callback (replacing any previous one).
  virtual void set_release_callback(ReleaseCallback cb) { (void)cb; }

  // Declares a region the caller will write from again and again (the
  // image), so a backend that can pin it once (io_uring registered buffers)
  // does so instead of pinning per send. Returns false when the channel has
  // no use for it. Throws if pinning was attempted and refused (limits).
  virtual bool register_region(const void* base, size_t len) {
    (void)base, (void)len;
    return false;
  }

  // Waits up to `timeout` until a read would not block (data, EOF or an
  // error is there). Counts data a TLS layer has already decrypted.
  virtual bool wait_readable(std::chrono::milliseconds timeout) = 0;

  // Shutdown and close: the one rule every channel follows.
  //
  // kWrite: orderly half-close, the end of stream the peer must see (TLS
  // channels send close_notify first, then the TCP FIN). Blocking: may wait
  // up to the write timeout for a peer that does not read. If that end
  // cannot be sent it THROWS Error: kPeer when the peer has closed or reset
  // the connection, kTimeout when it stopped reading, kInternal on a closed
  // channel. A channel records close_notify as sent only once it was sent;
  // after a failure its writes keep failing with the connection's error.
  // Idempotent once it has succeeded.
  // kRead: stop reading (a blocked reader returns end of stream).
  // kBoth: abort: both directions shut at once, nothing more is sent (no
  // close_notify), and every thread blocked on the channel wakes up with an
  // error or end of stream. Safe to call from another thread for that.
  // kRead and kBoth NEVER throw: they only stop this end, nothing has to
  // reach the peer, so no failure is left that a caller could act on (a
  // connection already reset, a closed channel: nothing to do). Callers
  // therefore need no try/catch around them.
  virtual void shutdown(ShutdownHow how) = 0;

  // Releases the fd. Pending zero-copy writes are not waited for: call
  // flush() first if the pages matter. Sends nothing (no close_notify:
  // shutdown(kWrite) first for an orderly end). Idempotent; NEVER throws.
  virtual void close() noexcept = 0;

  // Bounds every wait of the blocking methods (read, write, flush, and the
  // *_all helpers): when no byte moves (and no zero-copy completion arrives)
  // for `timeout`, the call throws Error(kTimeout) saying what it waited
  // for. Negative: wait forever (the default). Channels apply it to their
  // socket too (SO_RCVTIMEO/SO_SNDTIMEO), so a blocking syscall cannot
  // outlive it. Sets both directions.
  // What "no byte moves" means for a write: measured from the moment the
  // channel found no room to queue a byte, not from the start of a syscall
  // that queued part of the data and then blocked. So a peer that stops
  // reading ends a write_all about `timeout` after its last accepted byte
  // (never a multiple of it: a short count that a timer cut off is not
  // taken as fresh progress), while a slow peer that keeps reading keeps it
  // alive.
  void set_io_timeout(std::chrono::milliseconds timeout) { set_io_timeouts(timeout, timeout); }
  // The two bounds apart: `read` for reads (and wait_readable-style waits
  // inside them), `write` for writes and flushes (a flush waits for the peer
  // to read). A relay whose reads may idle for long (a migration's quiet
  // return path) still must not let a peer that stops reading hold its
  // writes forever.
  virtual void set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) {
    read_timeout_ = read;
    write_timeout_ = write;
  }
  std::chrono::milliseconds io_timeout(bool for_write) const { return for_write ? write_timeout_ : read_timeout_; }

  // Switches O_NONBLOCK semantics for the partial methods.
  virtual void set_blocking(bool blocking) = 0;
  virtual bool blocking() const = 0;

 protected:
  // Waits until the channel is readable (or writable), at most io_timeout(for_write)
  // (then Error(kTimeout)). Used by the *_all helpers in non-blocking mode.
  virtual void wait_io(bool for_write) = 0;

  std::chrono::milliseconds read_timeout_{-1};
  std::chrono::milliseconds write_timeout_{-1};
};

}  // namespace ktm

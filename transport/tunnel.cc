#include "transport/tunnel.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <map>
#include <set>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

#include "base/error.h"
#include "base/fd_wait.h"
#include "base/le.h"
#include "base/unique_fd.h"
#include "channel/address.h"
#include "transport/admission.h"
#include "transport/protocol.h"
#include "util/stream_digest.h"

namespace ktm {
namespace {

using Clock = std::chrono::steady_clock;

// The tunnel header: its encoding lives with the other wire formats.
using wire::DecodeTunnelHeader;
using wire::EncodeTunnelHeader;
using wire::kTunnelHeaderSize;
using wire::TunnelHeader;

// Writes all of [p, p+n) to a plain socket (MSG_NOSIGNAL: a vanished peer
// is an error, not SIGPIPE). The socket's SO_SNDTIMEO is `timeout`: EAGAIN
// on it means no byte moved for that long.
void SendAll(int fd, const uint8_t* p, size_t n, std::chrono::milliseconds timeout, const char* what) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) throw IoTimeoutError(/*for_write=*/true, timeout, what);
    if (w < 0) ThrowErrno(SocketErrorKind(errno), errno, std::string("write to ") + what);
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// --- dead-peer detection (TunnelOptions::dead_peer_timeout) ---------------

bool IsTcpSocket(int fd) {
  int domain = 0;
  socklen_t len = sizeof(domain);
  return getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) == 0 && (domain == AF_INET || domain == AF_INET6);
}

void SetIntOpt(int fd, int level, int name, int value, const char* what) {
  if (setsockopt(fd, level, name, &value, sizeof(value)) != 0) {
    ThrowErrno(ErrorKind::kLocalIo, errno, std::string("cannot set ") + what + " (--dead-peer-timeout)");
  }
}

// Sets `s` on a TCP socket before its handshake (a listener: Linux copies
// these options to every socket accept() returns). No-op when off or not
// TCP (a UNIX socket has no silent path to detect).
void ApplyDeadPeer(int fd, const DeadPeerSettings& s) {
  if (!s.on || !IsTcpSocket(fd)) return;
  SetIntOpt(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE");
  SetIntOpt(fd, IPPROTO_TCP, TCP_KEEPIDLE, s.keepidle_s, "TCP_KEEPIDLE");
  SetIntOpt(fd, IPPROTO_TCP, TCP_KEEPINTVL, s.keepintvl_s, "TCP_KEEPINTVL");
  SetIntOpt(fd, IPPROTO_TCP, TCP_KEEPCNT, s.keepcnt, "TCP_KEEPCNT");
  SetIntOpt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, static_cast<int>(s.user_timeout_ms), "TCP_USER_TIMEOUT");
}

// What the kernel holds for a connection's socket (the proof that the
// settings reached it, accepted sockets included), for its log line.
std::string ReadBackDeadPeer(int fd) {
  if (fd < 0 || !IsTcpSocket(fd)) return "not a TCP socket";
  int v[5] = {};
  const std::pair<int, int> opts[5] = {{SOL_SOCKET, SO_KEEPALIVE}, {IPPROTO_TCP, TCP_KEEPIDLE},
                                       {IPPROTO_TCP, TCP_KEEPINTVL}, {IPPROTO_TCP, TCP_KEEPCNT},
                                       {IPPROTO_TCP, TCP_USER_TIMEOUT}};
  for (int i = 0; i < 5; ++i) {
    socklen_t len = sizeof(v[i]);
    if (getsockopt(fd, opts[i].first, opts[i].second, &v[i], &len) != 0) return std::string("unreadable: ") + strerror(errno);
  }
  DeadPeerSettings s{v[0] != 0 && v[4] != 0, v[1], v[2], v[3], static_cast<unsigned>(v[4])};
  return s.Describe();
}

// Why a connection failed, when the kernel gave up on its tunnel peer
// (nullopt otherwise). The kernel closes the socket (TCP_CLOSE) and reports
// ETIMEDOUT, but the record layers may rename that (GnuTLS says "reset"),
// and an RST also closes it. What tells them apart: on a live connection a
// keepalive reply arrives at least every timeout/2 (keepidle), so nothing
// received for 3/4 of the timeout means the peer went silent.
std::optional<std::string> DeadPeerDiagnosis(int fd, std::chrono::seconds timeout, int err) {
  tcp_info ti{};
  socklen_t len = sizeof(ti);
  if (timeout.count() <= 0 || fd < 0 || getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) != 0 ||
      ti.tcpi_state != TCP_CLOSE) {
    return std::nullopt;
  }
  const std::string sec = std::to_string(timeout.count()) + " s (--dead-peer-timeout)";
  if (ti.tcpi_last_ack_recv >= static_cast<uint64_t>(timeout.count()) * 750) {
    return "the tunnel peer stopped answering: no TCP acknowledgement or keepalive reply for " + sec +
           "; the path is down or the peer host is gone";
  }
  if (err == ETIMEDOUT) {
    return "the tunnel peer accepted no data for " + sec +
           ": it answered, but its TCP receive window stayed closed (TCP_USER_TIMEOUT)";
  }
  return std::nullopt;
}

// A pipe for splice(2), 1 MiB so one splice carries many full 16 KiB
// records (each splice into a kTLS socket ends its records).
class Pipe {
 public:
  Pipe() {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) ThrowErrno(ErrorKind::kInternal, errno, "pipe");
    r_.reset(fds[0]);
    w_.reset(fds[1]);
    (void)fcntl(w_.get(), F_SETPIPE_SZ, 1 << 20);  // best effort: the default 64 KiB also works
  }
  int r() const { return r_.get(); }
  int w() const { return w_.get(); }

 private:
  UniqueFd r_, w_;
};

constexpr size_t kChunk = 1 << 20;

// The reason given to connections aborted by a stop request: not a failure.
constexpr const char* kStopping = "aborted: the tunnel is stopping";

ssize_t SpliceRetry(int in, int out, size_t len, unsigned flags) {
  for (;;) {
    ssize_t n = splice(in, nullptr, out, nullptr, len, flags);
    if (n < 0 && errno == EINTR) continue;
    return n < 0 ? -errno : n;
  }
}

// Moves everything in the pipe to `out`.
// `out`'s SO_SNDTIMEO is `timeout`: EAGAIN means no byte moved for that long.
void DrainPipe(Pipe& pipe, size_t n, int out, std::chrono::milliseconds timeout, const char* what) {
  while (n > 0) {
    // No SPLICE_F_MORE: a kTLS socket may then hold a short record open
    // waiting for more, and an interactive stream (a 1-byte request) would
    // stall. Large splices fill whole records anyway.
    const ssize_t m = SpliceRetry(pipe.r(), out, n, SPLICE_F_MOVE);
    if (m == -EAGAIN) throw IoTimeoutError(/*for_write=*/true, timeout, what);
    if (m < 0) ThrowErrno(SocketErrorKind(static_cast<int>(-m)), static_cast<int>(-m), std::string("splice to ") + what);
    n -= static_cast<size_t>(m);
  }
}

// --stream-digest on the splice path: hashes the `n` bytes now in `pipe`
// without consuming them (tee(2) into `copy`, then read the copy). The
// caller splices exactly n bytes into an otherwise empty pipe and drains all
// of them before the next splice, and `copy` is at least as large as `pipe`,
// so one tee duplicates all n; anything else is reported, never hashed short.
void HashPipe(Pipe& pipe, Pipe& copy, size_t n, StreamDigest& d, std::vector<uint8_t>& buf) {
  const ssize_t t = tee(pipe.r(), copy.w(), n, 0);
  if (t < 0) ThrowErrno(ErrorKind::kInternal, errno, "tee (--stream-digest)");
  if (static_cast<size_t>(t) != n) {
    throw Error(ErrorKind::kInternal, EIO,
                "tee (--stream-digest) duplicated " + std::to_string(t) + " of " + std::to_string(n) + " bytes");
  }
  buf.resize(kChunk);
  for (size_t left = n; left > 0;) {
    const ssize_t r = ::read(copy.r(), buf.data(), std::min(left, buf.size()));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) ThrowErrno(ErrorKind::kInternal, r < 0 ? errno : EIO, "read of the --stream-digest copy");
    d.Update(buf.data(), static_cast<size_t>(r));
    left -= static_cast<size_t>(r);
  }
}

// A digest pipe no smaller than `pipe` (see HashPipe).
std::unique_ptr<Pipe> DigestPipeFor(const Pipe& pipe) {
  auto copy = std::make_unique<Pipe>();
  const int want = fcntl(pipe.w(), F_GETPIPE_SZ);
  if (want > 0 && fcntl(copy->w(), F_GETPIPE_SZ) < want && fcntl(copy->w(), F_SETPIPE_SZ, want) < want) {
    ThrowErrno(ErrorKind::kLocalIo, errno, "cannot size the --stream-digest pipe to " + std::to_string(want) + " bytes");
  }
  return copy;
}

// How the local side's stream ended.
enum class LocalEnd { kEof, kReset };

// A pump stops moving data once its connection was aborted (ConnAbort),
// whatever its sockets still accept. Measured in the kTLS VM (Linux 6.1):
// after the kernel gave up on a dead peer and the other direction's pump
// took the socket's error, splices into the kTLS socket went on succeeding,
// so a pump fed by a busy local peer ran on for seconds (86 MiB) before the
// connection could end.
void StopIfAborted(const std::atomic<bool>& aborted) {
  if (aborted.load()) throw Error(ErrorKind::kPeer, ECONNABORTED, "the connection was aborted");
}

// Moves everything in the pipe into the channel's own fd (kTLS or plain
// socket), never more at a time than the channel allows: a kTLS send key
// changes (TLS 1.3 KeyUpdate) between two splices when it is due or the
// peer asked for it, and where it cannot change the channel throws
// Error(kSecurity) at its limit, so no byte is sent past it. `bytes` counts
// what was sent as it goes (a failure part-way reports the true count).
void DrainPipeToChannel(Pipe& pipe, size_t n, Channel& ch, std::chrono::milliseconds timeout,
                        std::atomic<uint64_t>& bytes) {
  const int out = ch.splice_fd();
  while (n > 0) {
    // Counted by the channel as sent: spend all of it before asking again,
    // so the count stays exact (the 6.1 policy test counts the bytes).
    size_t allowed = ch.prepare_direct_write(n);
    while (allowed > 0) {
      const ssize_t m = SpliceRetry(pipe.r(), out, allowed, SPLICE_F_MOVE);
      if (m == -EAGAIN) throw IoTimeoutError(/*for_write=*/true, timeout, "the tunnel peer");
      if (m < 0) ThrowErrno(SocketErrorKind(static_cast<int>(-m)), static_cast<int>(-m), "splice to the tunnel peer");
      allowed -= static_cast<size_t>(m);
      n -= static_cast<size_t>(m);
      bytes += static_cast<uint64_t>(m);
    }
  }
}

// local plaintext socket -> channel, until local EOF or reset (ECONNRESET:
// the local peer closed with data unread; RunConnection decides whether that
// is a failure).
// `digest`: hashes what is read from the local connection (nullptr: off).
LocalEnd PumpToChannel(int local, Channel& ch, std::chrono::milliseconds write_timeout, std::atomic<uint64_t>& bytes,
                       StreamDigest* digest, const std::atomic<bool>& aborted) {
  const int out = ch.splice_fd();
  if (out >= 0) {
    Pipe pipe;
    std::unique_ptr<Pipe> copy = digest ? DigestPipeFor(pipe) : nullptr;
    std::vector<uint8_t> dbuf;
    for (;;) {
      const ssize_t n = SpliceRetry(local, pipe.w(), kChunk, SPLICE_F_MOVE);
      if (n == 0) return LocalEnd::kEof;
      if (n == -ECONNRESET) return LocalEnd::kReset;
      if (n < 0) ThrowErrno(SocketErrorKind(static_cast<int>(-n)), static_cast<int>(-n), "splice from the local connection");
      StopIfAborted(aborted);
      if (digest) HashPipe(pipe, *copy, static_cast<size_t>(n), *digest, dbuf);
      DrainPipeToChannel(pipe, static_cast<size_t>(n), ch, write_timeout, bytes);
    }
  }
  std::vector<uint8_t> buf(256 << 10);
  for (;;) {
    ssize_t n = ::recv(local, buf.data(), buf.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno == ECONNRESET) return LocalEnd::kReset;
    if (n < 0) ThrowErrno(SocketErrorKind(errno), errno, "read from the local connection");
    if (n == 0) return LocalEnd::kEof;
    StopIfAborted(aborted);
    if (digest) digest->Update(buf.data(), static_cast<size_t>(n));
    ch.write_all(buf.data(), static_cast<size_t>(n), 0);
    bytes += static_cast<uint64_t>(n);
  }
}

// channel -> local plaintext socket, until the channel's clean end of
// stream (close_notify). Returns bytes moved.
// `digest`: hashes what is handed to the local connection (nullptr: off).
uint64_t PumpFromChannel(Channel& ch, int local, std::chrono::milliseconds write_timeout, std::atomic<uint64_t>& bytes,
                         StreamDigest* digest, const std::atomic<bool>& aborted) {
  const int in = ch.splice_fd();
  std::vector<uint8_t> buf;
  auto via_channel = [&]() -> bool {  // one read through the channel; false at EOF
    buf.resize(64 << 10);
    iovec v{buf.data(), buf.size()};
    ReadResult r = ch.readv(std::span<const iovec>(&v, 1));
    if (r.eof()) return false;
    StopIfAborted(aborted);
    if (digest) digest->Update(buf.data(), r.bytes);
    SendAll(local, buf.data(), r.bytes, write_timeout, "the local connection");
    bytes += r.bytes;
    return true;
  };
  if (in >= 0) {
    // What the channel already holds (e.g. bytes that arrived in the same
    // kTLS record read as the tunnel header) goes first, then the socket.
    while (ch.pending_read() > 0) {
      if (!via_channel()) return bytes.load();
    }
    Pipe pipe;
    std::unique_ptr<Pipe> copy = digest ? DigestPipeFor(pipe) : nullptr;
    std::vector<uint8_t> dbuf;
    const bool encrypted = ch.has_feature(kFeatureEncrypted);
    for (;;) {
      const ssize_t n = SpliceRetry(in, pipe.w(), kChunk, SPLICE_F_MOVE);
      if (n > 0) {
        StopIfAborted(aborted);
        if (digest) HashPipe(pipe, *copy, static_cast<size_t>(n), *digest, dbuf);
        DrainPipe(pipe, static_cast<size_t>(n), local, write_timeout, "the local connection");
        bytes += static_cast<uint64_t>(n);
        continue;
      }
      if (n == 0) {
        if (!encrypted) return bytes.load();
        throw Error(ErrorKind::kPeer, EPIPE, "TLS stream truncated: the tunnel peer closed without close_notify");
      }
      // kTLS: a control record (close_notify, alert, session ticket) is next;
      // the channel reads and handles it, then splicing goes on.
      if (encrypted && (n == -EINVAL || n == -EIO)) {
        if (!via_channel()) return bytes.load();
        continue;
      }
      ThrowErrno(SocketErrorKind(static_cast<int>(-n)), static_cast<int>(-n), "splice from the tunnel peer");
    }
  }
  while (via_channel()) {
  }
  return bytes.load();
}

// Threads joined as soon as they have finished: a tunnel that runs for
// weeks must not keep an exited but unjoined thread (and its stack) for
// every connection or stray it ever saw.
class ReapingThreads {
 public:
  ~ReapingThreads() { JoinAll(); }

  void Start(std::function<void()> run) {
    auto done = std::make_shared<std::atomic<bool>>(false);
    std::lock_guard<std::mutex> l(mu_);
    threads_.push_back({std::thread([run = std::move(run), done] {
                          run();
                          done->store(true);
                        }),
                        done});
  }

  // Joins the threads that have finished (each is at most returning).
  void ReapFinished() {
    std::list<Entry> finished;
    {
      std::lock_guard<std::mutex> l(mu_);
      for (auto it = threads_.begin(); it != threads_.end();) {
        auto next = std::next(it);
        if (it->done->load()) finished.splice(finished.end(), threads_, it);
        it = next;
      }
    }
    for (auto& e : finished) e.thread.join();
  }

  void JoinAll() {
    std::list<Entry> all;
    {
      std::lock_guard<std::mutex> l(mu_);
      all.swap(threads_);
    }
    for (auto& e : all) e.thread.join();
  }

 private:
  struct Entry {
    std::thread thread;
    std::shared_ptr<std::atomic<bool>> done;
  };
  std::mutex mu_;
  std::list<Entry> threads_;
};

// Connection threads and their results; the accept loops own one.
class ConnSet {
 public:
  // `ended`: called (on the connection's thread) after each connection has
  // ended and released its sockets; the accept loop's Wake().
  ConnSet(const TunnelOptions& opts, std::function<void()> ended) : opts_(opts), ended_(std::move(ended)) {}
  ~ConnSet() { threads_.JoinAll(); }

  void Start(std::function<TunnelConnReport()> run) {
    threads_.Start([this, run = std::move(run)] {
      TunnelConnReport r;
      try {
        r = run();
      } catch (const std::exception& e) {
        r.error = e.what();
      }
      if (opts_.on_conn_done) opts_.on_conn_done(r);
      {
        std::lock_guard<std::mutex> g(mu_);
        report_.connections++;
        report_.failed += (r.error.empty() || r.error == kStopping) ? 0 : 1;
        report_.bytes_up += r.bytes_up;
        report_.bytes_down += r.bytes_down;
        report_.conns.push_back(r);
      }
      if (ended_) ended_();
    });
  }

  // Joins the connection threads that have ended (called by the accept loops).
  void Reap() { threads_.ReapFinished(); }

  uint64_t finished() {
    std::lock_guard<std::mutex> l(mu_);
    return report_.connections;
  }

  // A running connection registers how to abort it (both sockets shut), so
  // a stop request can end it; it unregisters before its state goes away.
  uint64_t Register(std::function<void()> abort) {
    std::lock_guard<std::mutex> l(mu_);
    aborts_[next_abort_id_] = std::move(abort);
    return next_abort_id_++;
  }
  void Unregister(uint64_t id) {
    std::lock_guard<std::mutex> l(mu_);
    aborts_.erase(id);
  }

  // Waits for the running connections; with `abort_running` (a stop
  // request) they are aborted first. Returns the report of all of them.
  TunnelReport Finish(bool abort_running) {
    if (abort_running) {
      std::lock_guard<std::mutex> l(mu_);
      for (auto& [id, abort] : aborts_) abort();
    }
    threads_.JoinAll();
    std::lock_guard<std::mutex> l(mu_);
    return report_;
  }

 private:
  const TunnelOptions& opts_;
  std::function<void()> ended_;
  std::mutex mu_;
  TunnelReport report_;
  std::map<uint64_t, std::function<void()>> aborts_;
  uint64_t next_abort_id_ = 0;
  ReapingThreads threads_;  // last: joined before the state they use goes
};

// How a connection's plaintext is carried, for its report.
std::string DataPathName(Channel& ch) {
  if (ch.splice_fd() < 0) return "userspace TLS records (256 KiB corked batches)";
  return ch.has_feature(kFeatureEncrypted) ? "splice (kTLS: the kernel encrypts, no userspace copy)"
                                           : "splice (plaintext)";
}

// The first failure of one connection, and aborting it: both sockets are
// shut, so both directions' pumps return. Thread safe.
//
// A failure resets the local connection (RST, no FIN before it): the local
// tool must see its stream broken, never a clean end of stream where data
// was lost (a send key at its limit on a kernel that cannot re-key, a
// truncated TLS stream, a stalled peer). So the local socket gets SO_LINGER
// 0 and only SHUT_RD (which sends nothing and wakes a blocked local read);
// the RST leaves when RunConnection closes it. A pump blocked writing to a
// local peer that does not read is bounded by the io timeout.
class ConnAbort {
 public:
  // `tls_fd`: the channel's socket, for the dead-peer diagnosis (-1: none).
  ConnAbort(int local, Channel& ch, int tls_fd, std::chrono::seconds dead_peer_timeout)
      : local_(local), ch_(ch), tls_fd_(tls_fd), dead_peer_timeout_(dead_peer_timeout) {}

  // `reset_local`: end the local connection with RST (failures); else with
  // shutdown(SHUT_RDWR) (a stop request: prompt, every pump wakes).
  void Abort(const std::string& why, bool reset_local = true) {
    {
      std::lock_guard<std::mutex> l(mu_);
      if (error_.empty()) error_ = why;
    }
    aborted_ = true;
    if (reset_local) {
      const linger rst{1, 0};
      (void)setsockopt(local_, SOL_SOCKET, SO_LINGER, &rst, sizeof(rst));  // best effort (no-op on UNIX sockets)
      ::shutdown(local_, SHUT_RD);
    } else {
      ::shutdown(local_, SHUT_RDWR);
    }
    ch_.shutdown(ShutdownHow::kBoth);  // never throws (channel.h)
  }

  // A pump failed: aborts with `why`, unless the connection was aborted
  // already (the failure is then a consequence of that).
  // `where` + e.what() is the reason, unless the kernel gave up on the
  // tunnel peer: that is said instead, whatever the layer above made of it.
  void Failed(const std::string& where, const std::exception& e) {
    if (aborted_) return;
    const auto* err = dynamic_cast<const Error*>(&e);
    const std::optional<std::string> dead = DeadPeerDiagnosis(tls_fd_, dead_peer_timeout_, err ? err->code() : 0);
    Abort(dead ? *dead : where + e.what());
  }

  bool aborted() const { return aborted_; }
  const std::atomic<bool>& aborted_flag() const { return aborted_; }

  std::string error() {
    std::lock_guard<std::mutex> l(mu_);
    return error_;
  }

 private:
  const int local_;
  Channel& ch_;
  const int tls_fd_;
  const std::chrono::seconds dead_peer_timeout_;
  std::mutex mu_;
  std::string error_;
  std::atomic<bool> aborted_{false};
};

// What moved through one connection, in both directions.
struct ConnFlow {
  std::atomic<uint64_t> to_ch{0}, from_ch{0};
  std::unique_ptr<StreamDigest> to_ch_digest, from_ch_digest;  // --stream-digest; nullptr: off
  // Set once the tunnel peer's stream has ended cleanly and all of it has
  // been handed to the local peer.
  std::atomic<bool> far_ended{false};
};

// channel -> local, on its own thread: the tunnel peer's close_notify
// becomes a half-close of the local connection.
void FromChannel(Channel& ch, int local, std::chrono::milliseconds io_timeout, ConnFlow& flow, ConnAbort& abort) {
  try {
    PumpFromChannel(ch, local, io_timeout, flow.from_ch, flow.from_ch_digest.get(), abort.aborted_flag());
    // An abort can end the channel's stream too: then no FIN, the local
    // connection is reset (ConnAbort).
    if (abort.aborted()) return;
    flow.far_ended = true;  // before the local peer can see the end (and reset)
    ::shutdown(local, SHUT_WR);  // close_notify -> half-close
  } catch (const std::exception& e) {
    abort.Failed("from the tunnel peer: ", e);
  }
}

// local -> channel: the local EOF becomes close_notify. Returns the
// report's note ("" for none).
std::string ToChannel(int local, Channel& ch, std::chrono::milliseconds io_timeout, ConnFlow& flow, ConnAbort& abort) {
  try {
    const LocalEnd end = PumpToChannel(local, ch, io_timeout, flow.to_ch, flow.to_ch_digest.get(), abort.aborted_flag());
    if (end == LocalEnd::kReset && !flow.far_ended) {
      // Data may still be on its way to a local peer that is gone: the
      // reset goes on to the other side.
      abort.Abort("the local peer reset the connection while the tunnel peer was still sending");
      return "";
    }
    ch.shutdown(ShutdownHow::kWrite);  // local EOF -> close_notify + SHUT_WR
    if (end == LocalEnd::kReset) {
      return "the local peer reset the connection after the tunnel peer's stream had ended and been handed "
             "over (it closed without reading everything it was sent)";
    }
  } catch (const std::exception& e) {
    abort.Failed("to the tunnel peer: ", e);
  }
  return "";
}

// Runs one tunnel connection: both directions until both ended. `up` is
// local->channel on the source side, channel->local on the destination side.
TunnelConnReport RunConnection(UniqueFd local, OpenedChannel tls, uint64_t seq, bool source_side,
                               const TunnelOptions& opts, ConnSet& set) {
  const std::chrono::milliseconds io_timeout = opts.io_timeout;
  TunnelConnReport rep;
  rep.seq = seq;
  rep.peer = tls.peer;
  rep.path = tls.path;
  Channel& ch = *tls.channel;
  rep.data_path = DataPathName(ch);
  rep.dead_peer = opts.dead_peer_timeout.count() > 0 ? ReadBackDeadPeer(tls.fd) : "off";
  if (opts.log) {
    opts.log("tunnel: connection " + std::to_string(seq) + ": dead-peer detection on its TLS socket: " + rep.dead_peer);
  }
  // Writes may not stall forever, on either socket and on every data path
  // (splice, kTLS, userspace TLS records); reads may idle (a return path is
  // quiet for long stretches).
  const auto no_limit = std::chrono::milliseconds(-1);
  SetSocketTimeouts(local.get(), no_limit, io_timeout);
  ch.set_io_timeouts(no_limit, io_timeout);
  const auto t0 = Clock::now();
  ConnFlow flow;
  if (opts.stream_digest) {
    flow.to_ch_digest = std::make_unique<StreamDigest>();
    flow.from_ch_digest = std::make_unique<StreamDigest>();
  }
  ConnAbort abort(local.get(), ch, tls.fd, opts.dead_peer_timeout);
  const uint64_t abort_id = set.Register([&] { abort.Abort(kStopping, /*reset_local=*/false); });
  std::thread reader([&] { FromChannel(ch, local.get(), io_timeout, flow, abort); });
  rep.note = ToChannel(local.get(), ch, io_timeout, flow, abort);
  reader.join();
  set.Unregister(abort_id);
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  rep.bytes_up = source_side ? flow.to_ch.load() : flow.from_ch.load();
  rep.bytes_down = source_side ? flow.from_ch.load() : flow.to_ch.load();
  if (opts.stream_digest) {
    rep.digest_up = (source_side ? flow.to_ch_digest : flow.from_ch_digest)->Hex();
    rep.digest_down = (source_side ? flow.from_ch_digest : flow.to_ch_digest)->Hex();
  }
  rep.rekey = ch.stats().rekey;
  rep.error = abort.error();
  return rep;
}

// The startup line's account of dead-peer detection; throws Error(kUsage)
// for a timeout the diagnosis cannot serve (TunnelOptions).
std::string DeadPeerLine(std::chrono::seconds timeout) {
  if (timeout.count() < 0 || timeout.count() == 1) {
    throw Error(ErrorKind::kUsage, EINVAL, "the dead-peer timeout must be 0 (off) or at least 2 s");
  }
  if (timeout.count() <= 0) return "off (--dead-peer-timeout 0)";
  return "within " + std::to_string(timeout.count()) + " s (--dead-peer-timeout): " +
         DeadPeerSettingsFor(timeout).Describe();
}

bool Stopping(const TunnelOptions& o, ConnSet& conns) {
  if (o.stop && o.stop->load()) return true;
  return o.max_connections && conns.finished() >= o.max_connections;
}

void Log(const TunnelOptions& o, const std::string& s) {
  if (o.log) o.log(s);
}

// Waits for a connection in slices, so a stop request is seen. Failing
// accepts follow the one policy of channel/acceptor.h.
std::optional<UniqueFd> AcceptOrStop(Acceptor& acceptor, const TunnelOptions& o, ConnSet& conns) {
  while (!Stopping(o, conns)) {
    conns.Reap();
    if (auto a = acceptor.Next(std::chrono::milliseconds(100))) return std::move(a->fd);
  }
  return std::nullopt;
}

AdmissionOptions HeaderAdmission(const TunnelOptions& opts) {
  AdmissionOptions ao;
  ao.security = opts.security;
  ao.intro_size = kTunnelHeaderSize;
  ao.intro_name = "tunnel header";
  ao.timeout = opts.hello_timeout;
  ao.max_pending = opts.max_pending;
  ao.log = opts.log;
  ao.prefix = "tunnel: ";
  return ao;
}

// The destination's authenticated connections, each forwarded to the target
// strictly in the source's order (per session, by the header's seq); a gap
// older than order_timeout is skipped (logged). Used by the accept loop's
// thread only.
class OrderedForwarder {
 public:
  OrderedForwarder(const TunnelOptions& opts, ConnSet& conns) : opts_(opts), conns_(conns) {}

  // Queues an admitted connection, or logs why it was rejected.
  void Add(Admitted& a) {
    try {
      if (a.error) throw *a.error;
      const TunnelHeader h = DecodeTunnelHeader(a.intro.data());
      // Said before it may wait for its turn: tests (and operators) see
      // which connections are authenticated and queued.
      Log(opts_, "tunnel: connection " + std::to_string(h.seq) + " authenticated (from " + a.peer + ")");
      ready_[{h.session, h.seq}] = Ready{std::move(a.oc), h, Clock::now()};
    } catch (const Error& e) {
      Log(opts_, "tunnel: rejected connection from " + a.peer + ": " + e.what());
    }
  }

  // Forwards every ready connection whose turn it is.
  void ForwardReady() {
    while (std::optional<Ready> go = NextInTurn()) Forward(std::move(*go));
  }

 private:
  struct Ready {
    OpenedChannel tls;
    TunnelHeader hdr;
    Clock::time_point at;
  };

  // Takes the next connection whose turn it is, if any.
  std::optional<Ready> NextInTurn() {
    for (auto it = ready_.begin(); it != ready_.end(); ++it) {
      uint64_t& next = next_seq_[it->first.first];
      if (it->first.second < next) {
        // Its turn was given away (order timeout): forwarding it now would
        // hand the tool a connection out of order; nothing waits for it.
        Log(opts_, "tunnel: connection " + std::to_string(it->first.second) + " of session " +
                       wire::UuidString(it->first.first) + " arrived after later ones were forwarded; closing it");
        it->second.tls.channel->shutdown(ShutdownHow::kBoth);
        ready_.erase(it);
        return NextInTurn();
      }
      if (it->second.hdr.first_open > next) {
        // Connections next..first_open-1 ended at the source before they
        // got here (e.g. with the tunnel end this one replaced): none of
        // them can come, so none is waited for.
        Log(opts_, "tunnel: session " + wire::UuidString(it->first.first) + ": connections " + std::to_string(next) +
                       ".." + std::to_string(it->second.hdr.first_open - 1) +
                       " ended at the source before reaching this tunnel end; not waiting for them");
        next = it->second.hdr.first_open;
      }
      if (it->first.second > next && Clock::now() - it->second.at > opts_.order_timeout) {
        Log(opts_, "tunnel: connection " + std::to_string(next) + " of session " + wire::UuidString(it->first.first) +
                       " never arrived; forwarding " + std::to_string(it->first.second) + " and later ones");
        next = it->first.second;
      }
      if (it->first.second == next) {
        std::optional<Ready> go = std::move(it->second);
        ready_.erase(it);
        ++next;
        return go;
      }
    }
    return std::nullopt;
  }

  // Connects to the target and starts the connection's thread. The target
  // connect completes before the next one starts: that is what keeps
  // QEMU's main channel first.
  void Forward(Ready go) {
    UniqueFd target;
    try {
      target = ConnectStream(opts_.target, opts_.connect_timeout);
    } catch (const Error& e) {
      Log(opts_, std::string("tunnel: cannot forward connection ") + std::to_string(go.hdr.seq) + ": " + e.what());
      go.tls.channel->shutdown(ShutdownHow::kBoth);
      return;
    }
    Log(opts_, "tunnel: connection " + std::to_string(go.hdr.seq) + " from " + go.tls.peer + " -> " + opts_.target);
    auto state = std::make_shared<Ready>(std::move(go));
    auto tfd = std::make_shared<UniqueFd>(std::move(target));
    const TunnelOptions& opts = opts_;
    ConnSet& conns = conns_;
    conns_.Start([state, tfd, &opts, &conns]() {
      return RunConnection(std::move(*tfd), std::move(state->tls), state->hdr.seq, /*source_side=*/false, opts,
                           conns);
    });
  }

  const TunnelOptions& opts_;
  ConnSet& conns_;
  std::map<std::pair<wire::Uuid, uint64_t>, Ready> ready_;
  std::map<wire::Uuid, uint64_t> next_seq_;
};

// The source side's connections that have not ended yet, by sequence
// number: the lowest goes into each header (TunnelHeader::first_open), so
// the destination never waits for a connection that ended before reaching
// it. Thread safe.
class OpenSeqs {
 public:
  void Add(uint64_t seq) {
    std::lock_guard<std::mutex> l(mu_);
    open_.insert(seq);
  }
  // The lowest open one (a connection asking is itself open).
  uint64_t First() {
    std::lock_guard<std::mutex> l(mu_);
    return open_.empty() ? 0 : *open_.begin();
  }
  // Ends `seq` when its connection's thread ends, however it ends.
  struct Closer {
    OpenSeqs& set;
    uint64_t seq;
    ~Closer() {
      std::lock_guard<std::mutex> l(set.mu_);
      set.open_.erase(seq);
    }
  };

 private:
  std::mutex mu_;
  std::set<uint64_t> open_;
};

}  // namespace

DeadPeerSettings DeadPeerSettingsFor(std::chrono::seconds timeout) {
  DeadPeerSettings s;
  const long t = static_cast<long>(timeout.count());
  if (t <= 0) return s;
  s.on = true;
  s.keepidle_s = static_cast<int>(std::max(1L, t / 2));
  s.keepintvl_s = static_cast<int>(std::max(1L, (t - s.keepidle_s) / 10));
  // Probes after the first until the timeout (the kernel caps it at 127).
  s.keepcnt = static_cast<int>(std::clamp((t - s.keepidle_s + s.keepintvl_s - 1) / s.keepintvl_s, 1L, 127L));
  s.user_timeout_ms = static_cast<unsigned>(t * 1000);
  return s;
}

std::string DeadPeerSettings::Describe() const {
  if (!on) return "off";
  return "SO_KEEPALIVE on, TCP_KEEPIDLE " + std::to_string(keepidle_s) + " s, TCP_KEEPINTVL " +
         std::to_string(keepintvl_s) + " s, TCP_KEEPCNT " + std::to_string(keepcnt) + ", TCP_USER_TIMEOUT " +
         std::to_string(user_timeout_ms) + " ms";
}

TunnelReport RunTunnelSource(const TunnelOptions& opts) {
  const std::string dead_peer = DeadPeerLine(opts.dead_peer_timeout);
  Listener l = Listener::Listen(opts.listen);
  Log(opts, "tunnel: listening on " + l.address() + " (plaintext, local), forwarding over " +
                (opts.security.tls ? "TLS" : "PLAINTEXT") + " to " + opts.target + "; dead-peer detection " + dead_peer);
  const wire::Uuid session = wire::RandomUuid();
  Acceptor::Options ao;
  ao.log = opts.log;
  ao.prefix = "tunnel: ";
  Acceptor acceptor(l, std::move(ao));
  OpenSeqs open;  // outlives conns: every connection thread ends in Finish()
  ConnSet conns(opts, [&acceptor] { acceptor.Wake(); });
  for (uint64_t seq = 0;; ++seq) {
    std::optional<UniqueFd> local = AcceptOrStop(acceptor, opts, conns);
    if (!local) break;
    const std::string from = SockName(local->get(), true);
    Log(opts, "tunnel: connection " + std::to_string(seq) + " from " + from);
    auto fd = std::make_shared<UniqueFd>(std::move(*local));
    open.Add(seq);
    conns.Start([&opts, &conns, &open, fd, seq, session]() -> TunnelConnReport {
      const OpenSeqs::Closer closer{open, seq};
      // Dead-peer detection before the handshake: it bounds that too.
      UniqueFd sock = ConnectStream(opts.target, opts.connect_timeout);
      ApplyDeadPeer(sock.get(), DeadPeerSettingsFor(opts.dead_peer_timeout));
      OpenedChannel tls = OpenConnectedChannel(std::move(sock), opts.security);
      uint8_t hdr[kTunnelHeaderSize];
      EncodeTunnelHeader({session, seq, open.First()}, hdr);
      tls.channel->write_all(hdr, sizeof(hdr));
      return RunConnection(std::move(*fd), std::move(tls), seq, /*source_side=*/true, opts, conns);
    });
  }
  return conns.Finish(opts.stop && opts.stop->load());
}

TunnelReport RunTunnelDestination(const TunnelOptions& opts) {
  const std::string dead_peer = DeadPeerLine(opts.dead_peer_timeout);
  Listener l = Listener::Listen(opts.listen);
  // Set on the listener: accept() copies them to every connection, so they
  // are in place before its handshake.
  ApplyDeadPeer(l.fd(), DeadPeerSettingsFor(opts.dead_peer_timeout));
  Log(opts, "tunnel: listening on " + l.address() + " for " + (opts.security.tls ? "TLS" : "PLAINTEXT") +
                " tunnel connections, forwarding to " + opts.target + "; dead-peer detection " + dead_peer);
  // Pending: handshake + header, each on its own thread with its own
  // deadline (admission.h); then ready, until it is that connection's turn.
  Admission admission(l, HeaderAdmission(opts));
  ConnSet conns(opts, [&admission] { admission.Wake(); });
  OrderedForwarder forwarder(opts, conns);
  while (!Stopping(opts, conns)) {
    admission.Poll(std::chrono::milliseconds(100));  // also the order_timeout's tick
    conns.Reap();
    for (Admitted& a : admission.TakeFinished()) forwarder.Add(a);
    forwarder.ForwardReady();
  }
  return conns.Finish(opts.stop && opts.stop->load());
}

}  // namespace ktm

// The tunnel: unmodified migration tools (QEMU, anything that migrates over
// a TCP or UNIX socket) get encrypted transport without a change of theirs.
//
//   tool (source) --plaintext--> RunTunnelSource ==TLS/kTLS==> RunTunnelDestination --plaintext--> tool (destination)
//
// Every local connection accepted by the source side becomes one TLS
// connection; the destination side forwards each authenticated one to its
// local target. Order is part of the contract: QEMU's destination takes the
// first connection it accepts as the main stream and the following ones as
// multifd channels, but TLS handshakes finish in any order. So the source
// numbers connections in the order it accepted them (a 40-byte tunnel header,
// inside TLS, so authenticated) and the destination connects to its target
// strictly in that order, each connect complete before the next.
//
// Both directions flow (QEMU has a return path). A half-close propagates:
// local EOF -> TLS close_notify -> shutdown(SHUT_WR) on the far side. A reset
// or error on one side aborts the matching connection on the other, with one
// exception: a reset by the local peer after the tunnel peer's stream has
// ended, all of it handed over, ends the connection with close_notify and a
// note, not as a failure (nothing was lost in transit; the local application
// chose not to read everything it was sent).
//
// Data path: with kTLS, plaintext moves with splice(2) socket -> pipe ->
// socket in both directions: the kernel encrypts and decrypts, no userspace
// copy (a non-data TLS record on the receive side, e.g. a session ticket, is
// consumed through the channel and splicing goes on). Without kTLS, userspace
// TLS with large corked records (256 KiB batches), never a record per small
// write.
//
// Key lifetime (TLS 1.3): each splice into a kTLS socket is first cleared
// with Channel::prepare_direct_write, so the send key changes (KeyUpdate)
// before its record limit or SecurityConfig::tls_options.rekey_after_bytes,
// and a peer's KeyUpdate (which stops splice reads like any control record)
// is followed by the channel. On a kernel that cannot re-key (before 6.14)
// a connection whose send key reaches its limit fails with a kSecurity
// error and its local connection is reset: nothing is sent past the limit.
// Every failed connection ends its local connection with a reset (RST), so
// the tool never mistakes a broken stream for its end; a stop request shuts
// it down instead.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "transport/endpoint.h"

namespace ktm {

struct TunnelConnReport {
  uint64_t seq = 0;
  std::string peer;        // the TLS peer
  std::string path;        // TLS path and why (as for migrations)
  std::string data_path;   // "splice (kTLS)", "userspace TLS records", ...
  uint64_t bytes_up = 0;   // source side -> destination side (plaintext bytes)
  uint64_t bytes_down = 0; // destination side -> source side
  double seconds = 0;
  std::string error;       // "" when both directions ended cleanly
  // Set on a connection that did not fail but has something to say: the
  // local peer reset it after the tunnel peer's stream had ended and every
  // byte of it had been handed to the local peer (the local application
  // closed without reading all of it: QEMU 7.2's multifd destination does
  // this now and then with a trailing empty packet).
  std::string note;
  // With TunnelOptions::stream_digest: XXH3-128 of every plaintext byte each
  // way as it passed this end ("xxh3:" + 32 hex digits), else "". The same
  // connection's digests on the two ends are equal when the tunnel delivered
  // exactly what it was given (compare by seq).
  std::string digest_up, digest_down;
  // TLS key lifetime of this connection's channel (channel.h), as it ended:
  // KeyUpdates sent (our send key changed) and received (followed), the
  // limit in force, whether the key can change and why not. On the splice
  // path the send key changes between two splices (kTLS on a kernel that
  // re-keys, 6.14+); where it cannot change, the connection fails at the
  // limit (error: "the send key has protected ...") and its local
  // connection is reset: a byte stream has no point at which to pause.
  ChannelStats::Rekey rekey;
  // Dead-peer detection as read back from this connection's TLS socket
  // (DeadPeerSettings::Describe), "off", or why it could not be read.
  std::string dead_peer;
};

struct TunnelReport {
  uint64_t connections = 0;
  uint64_t failed = 0;
  uint64_t bytes_up = 0, bytes_down = 0;
  std::vector<TunnelConnReport> conns;
};

struct TunnelOptions {
  // Source side: local plaintext listen address; destination side: the
  // TLS listen address.
  std::string listen;
  // Source side: the destination tunnel (HOST:PORT); destination side: the
  // local target to forward to (HOST:PORT or unix:PATH).
  std::string target;
  SecurityConfig security;
  std::chrono::milliseconds connect_timeout{10000};
  // Destination side, per pending connection: the TLS handshake within
  // this, handshake and tunnel header within twice this of the accept.
  std::chrono::milliseconds hello_timeout{10000};
  // A write that makes no progress for this long aborts that connection
  // (reads may idle: a migration's return path is quiet for long stretches).
  std::chrono::milliseconds io_timeout{30000};
  // Dead-peer detection on every TLS-side TCP socket (both ends; 0: off).
  // A tunnel peer that stops answering, with the path silently gone (no
  // RST: pulled cable, dead switch), is declared dead by the kernel about
  // this long after its last sign of life (any segment received), also on
  // a connection quiet both ways and during the handshake: SO_KEEPALIVE
  // probes a quiet connection, TCP_USER_TIMEOUT ends one whose data stays
  // unacknowledged (DeadPeerSettingsFor). The connection then fails with a
  // sentence saying so, its local connection is reset at once (as for any
  // failure) and the tunnel goes on accepting connections. Linux also ends
  // a connection whose peer keeps its receive window closed for this long
  // (TCP_USER_TIMEOUT): a peer that answers but accepts no data.
  // At least 2 s when set (the diagnosis needs keepalive replies at least
  // every timeout/2 on a live connection); RunTunnel* throw Error(kUsage)
  // for 1 s or a negative value.
  std::chrono::seconds dead_peer_timeout{20};
  // Destination side: connections in handshake/header at once; beyond
  // this the overflow rule of transport/admission.h drops one (logged).
  size_t max_pending = 32;
  // Destination side: how long to wait for a missing earlier connection
  // before forwarding the later ones anyway (logged).
  std::chrono::milliseconds order_timeout{10000};
  std::function<void(const std::string&)> log;
  // Called when a connection has ended (both directions).
  std::function<void(const TunnelConnReport&)> on_conn_done;
  // Set to stop: the listener closes and connections still running are
  // aborted (both sockets shut) and joined.
  const std::atomic<bool>* stop = nullptr;
  // Stop by itself after this many connections have ended (0 = never).
  uint64_t max_connections = 0;
  // Hash every byte each way (TunnelConnReport::digest_up/down). Costs one
  // XXH3 pass over the data; on the splice path also a tee(2) of each chunk
  // into a second pipe and a read of that copy.
  bool stream_digest = false;
};

// The TCP socket options behind TunnelOptions::dead_peer_timeout. With
// TCP_USER_TIMEOUT set, Linux's keepalive timer ends the connection at its
// first firing after a probe went unanswered and the user timeout has
// passed since the last segment received (TCP_KEEPCNT is then unused; it
// is set to the same bound for kernels that ignore the user timeout). The
// first probe goes after keepidle_s of silence, then one per keepintvl_s:
// idle = timeout/2 and intvl = max(1, (timeout - idle)/10) put a firing at
// or within intvl (1 s for timeouts up to 29 s) after the timeout.
struct DeadPeerSettings {
  bool on = false;
  int keepidle_s = 0, keepintvl_s = 0, keepcnt = 0;
  unsigned user_timeout_ms = 0;
  // "SO_KEEPALIVE on, TCP_KEEPIDLE 10 s, ..." or "off".
  std::string Describe() const;
};
DeadPeerSettings DeadPeerSettingsFor(std::chrono::seconds timeout);

// Run until `stop` is set or max_connections have ended. Throw Error only for
// setup failures (listen, credentials); per-connection failures are
// reported through on_conn_done and counted.
TunnelReport RunTunnelSource(const TunnelOptions& opts);
TunnelReport RunTunnelDestination(const TunnelOptions& opts);

}  // namespace ktm

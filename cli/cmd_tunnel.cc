// tls-migrate tunnel: kernel TLS under an unmodified migration tool's
// connections (source side and destination side).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "cli/args.h"
#include "cli/cmd_common.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "cli/report.h"
#include "transport/tunnel.h"

namespace ktm::cli {
namespace {

const char* kTunnelHelp = R"(Usage:
  tls-migrate tunnel --listen unix:PATH|HOST:PORT --connect HOST:PORT [options]       (source side)
  tls-migrate tunnel --tls-listen HOST:PORT --forward unix:PATH|HOST:PORT [options]   (destination side)

Encrypts an unmodified migration tool's connections (QEMU, or anything that
migrates over TCP or UNIX sockets) with kernel TLS where the kernel has it.
The source side accepts the tool's plaintext connections on --listen and
opens one TLS connection per accepted connection to the destination side,
which forwards each authenticated connection to --forward. The destination
side connects to its target strictly in the order the source side accepted
(QEMU takes its first connection as the main stream and the rest as multifd
channels), each connect complete before the next. Both directions flow; a
half-close and a reset propagate. With kTLS the bytes move with splice(2),
no userspace copy; otherwise userspace TLS with large records.

  --listen ADDR         source side: where the tool connects (plaintext, local)
  --connect HOST:PORT   source side: the destination side's --tls-listen
  --tls-listen HOST:PORT  destination side: where the source side connects
  --forward ADDR        destination side: the tool's incoming address
  --max-connections N   exit after N connections have ended (default: run until SIGINT/SIGTERM)
  --io-timeout SEC      a write that makes no progress for SEC seconds aborts its
                        connection (default 30; reads may idle: a return path is quiet)
  --timeout SEC         connect timeout (default 10)
  --dead-peer-timeout SEC  declare a silent tunnel peer dead about SEC seconds
                        after its last sign of life (default 20; 0 = off; else
                        at least 2). Set on every TLS-side TCP socket of both
                        ends before the handshake: SO_KEEPALIVE probes a quiet
                        connection (first probe after SEC/2 of silence) and
                        TCP_USER_TIMEOUT ends one whose data stays
                        unacknowledged. When the path between the ends dies
                        silently (no RST: pulled cable, dead switch), the
                        connection fails with "the tunnel peer stopped
                        answering", its local connection is reset at once (the
                        tool sees its socket fail; QEMU postcopy pauses and can
                        recover) and the tunnel keeps accepting. A peer that
                        keeps its TCP receive window closed for SEC also ends
                        the connection (Linux's TCP_USER_TIMEOUT)
  --stream-digest       hash every byte each way (XXH3-128) and print the digests
                        per connection: run it on both ends and compare them by
                        connection number to prove the tunnel delivered exactly
                        what the tool sent (costs one extra pass over the data;
                        on the splice path a tee(2) copy)

Per connection it prints the path (kTLS or userspace TLS and why), the data
path (splice or records), bytes each way and time; at exit a summary (and
--json). Exit codes as for send/recv; 0 after SIGINT/SIGTERM or
--max-connections, 1 if any connection failed.
)";

std::atomic<bool> g_stop{false};
void OnStopSignal(int) { g_stop = true; }

// Serializes the lines of the connection threads and the summary.
std::mutex g_print_mu;

// Library log lines on stderr. --quiet keeps what an operator must see:
// refusals, failures, and a listener backing off for lack of descriptors
// (and its recovery).
void LogLine(bool quiet, const std::string& s) {
  if (quiet && s.find("rejected") == std::string::npos && s.find("cannot") == std::string::npos &&
      s.find("accept") == std::string::npos) {
    return;
  }
  std::lock_guard<std::mutex> l(g_print_mu);
  std::fprintf(stderr, "tls-migrate %s\n", s.c_str());
}

// One line per ended connection: path, data path, bytes each way, time.
void PrintConnDone(const TunnelConnReport& r) {
  std::lock_guard<std::mutex> l(g_print_mu);
  const std::string digests =
      r.digest_up.empty() ? "" : "; stream digest up " + r.digest_up + ", down " + r.digest_down;
  const std::string keys = !r.rekey.applies ? ""
                           : "; key updates sent " + std::to_string(r.rekey.sent) + ", received " +
                                 std::to_string(r.rekey.received) +
                                 (r.rekey.can_rekey ? "" : " (re-keying off: " + r.rekey.detail + ")");
  std::fprintf(stderr, "tls-migrate tunnel: connection %llu %s: %s; %s; up %s, down %s in %.2f s%s%s%s\n",
               (unsigned long long)r.seq, r.error.empty() ? "done" : ("FAILED (" + r.error + ")").c_str(),
               r.path.c_str(), r.data_path.c_str(), Human(double(r.bytes_up)).c_str(),
               Human(double(r.bytes_down)).c_str(), r.seconds, digests.c_str(), keys.c_str(),
               r.note.empty() ? "" : ("; note: " + r.note).c_str());
}

// The options of either side (`source`: --listen/--connect) from the flags.
TunnelOptions MakeTunnelOptions(const Args& a, bool source) {
  TunnelOptions o;
  o.listen = source ? a.get("listen") : a.get("tls-listen");
  o.target = source ? a.get("connect") : a.get("forward");
  o.dead_peer_timeout = std::chrono::seconds(a.number("dead-peer-timeout", 20, 0, 3600));
  if (o.dead_peer_timeout.count() == 1) {
    // Below 2 s a live connection's keepalive replies (every SEC/2, at
    // least 1 s) could not be told from silence.
    throw Error(ErrorKind::kUsage, EINVAL, "--dead-peer-timeout must be 0 (off) or at least 2 seconds");
  }
  o.security = BuildSecurity(a, source ? TlsRole::kClient : TlsRole::kServer, source ? HostOf(o.target) : "");
  o.io_timeout = IoTimeout(a);
  o.connect_timeout = std::chrono::seconds(a.number("timeout", 10, 1, 86400));
  o.max_connections = a.number("max-connections", 0, 0, UINT32_MAX);
  o.stream_digest = a.flag("stream-digest");
  o.stop = &g_stop;
  o.log = [quiet = a.flag("quiet")](const std::string& s) { LogLine(quiet, s); };
  o.on_conn_done = PrintConnDone;
  return o;
}

nlohmann::json TunnelJson(const TunnelReport& rep, const TunnelOptions& o, bool source) {
  nlohmann::json conns = nlohmann::json::array();
  for (const auto& c : rep.conns) {
    conns.push_back({{"seq", c.seq}, {"peer", c.peer}, {"path", c.path}, {"data_path", c.data_path},
                     {"bytes_up", c.bytes_up}, {"bytes_down", c.bytes_down}, {"seconds", c.seconds},
                     {"error", c.error}, {"note", c.note}, {"dead_peer", c.dead_peer}, {"ktls", c.path.find("kTLS (") != std::string::npos}});
    if (c.rekey.applies) {
      conns.back()["rekey"] = {{"sent", c.rekey.sent},
                               {"received", c.rekey.received},
                               {"limit_records", c.rekey.limit_records},
                               {"limit_bytes", c.rekey.limit_bytes},
                               {"possible", c.rekey.can_rekey},
                               {"detail", c.rekey.detail}};
    }
    if (!c.digest_up.empty()) {
      conns.back()["digest_up"] = c.digest_up;
      conns.back()["digest_down"] = c.digest_down;
    }
  }
  return {{"role", source ? "tunnel-source" : "tunnel-destination"},
          {"connections", rep.connections},
          {"failed", rep.failed},
          {"bytes_up", rep.bytes_up},
          {"bytes_down", rep.bytes_down},
          {"tls", TlsJson(o.security)},
          {"conns", conns}};
}

}  // namespace

int CmdTunnel(int argc, char** argv) {
  Args a(argc, argv, 2,
         Join({"listen", "connect", "tls-listen", "forward", "max-connections", "io-timeout", "timeout",
               "dead-peer-timeout"},
              kSecValue),
         Join({"stream-digest"}, kSecBool));
  if (a.flag("help")) {
    std::printf("%s%s", kTunnelHelp, kSecurityHelp);
    return 0;
  }
  const bool source = a.has("listen") && a.has("connect");
  const bool dest = a.has("tls-listen") && a.has("forward");
  if (source == dest) {
    throw Error(ErrorKind::kUsage, EINVAL,
                "tunnel needs either --listen ADDR --connect HOST:PORT (source side) or --tls-listen HOST:PORT "
                "--forward ADDR (destination side); see --help");
  }
  CheckJsonPath(a);
  const TunnelOptions o = MakeTunnelOptions(a, source);
  signal(SIGINT, OnStopSignal);
  signal(SIGTERM, OnStopSignal);
  const TunnelReport rep = source ? RunTunnelSource(o) : RunTunnelDestination(o);
  {
    std::lock_guard<std::mutex> l(g_print_mu);
    std::fprintf(stderr, "tls-migrate tunnel: %llu connection(s) ended, %llu failed; up %s, down %s; %s\n",
                 (unsigned long long)rep.connections, (unsigned long long)rep.failed,
                 Human(double(rep.bytes_up)).c_str(), Human(double(rep.bytes_down)).c_str(),
                 TlsLibraryLine(o.security).c_str());
  }
  if (a.has("json")) WriteJsonFile(a.get("json"), TunnelJson(rep, o, source));
  std::fflush(stdout);
  std::fflush(stderr);
  // Connections still open at a stop request were aborted (not failures).
  _exit(rep.failed ? kExitFailed : kExitOk);
}

}  // namespace ktm::cli

// tls-migrate: move a memory image between hosts over several encrypted
// channels, with kernel TLS where the kernel has it.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include "base/error.h"
#include "base/path.h"
#include "base/proc.h"
#include "base/version.h"
#include "certs/generate.h"
#include "channel/socket_channel.h"
#include "channel/zero_copy_sender.h"
#include "cli/args.h"
#include "cli/bench.h"
#include "cli/exit_codes.h"
#include "cli/loopback.h"
#include "cli/report.h"
#include "ktls/cipher_table.h"
#include "ktls/ktls.h"
#include "tls/handshake.h"
#include "transport/migration.h"
#include "transport/tunnel.h"
#include "util/sha256.h"

namespace ktm::cli {
namespace {

const char* kMainHelp = R"(tls-migrate: move a memory image between hosts over encrypted channels,
with the TLS session moved into the kernel (kTLS) where the kernel can take it.

Usage:
  tls-migrate recv  --listen HOST:PORT --output FILE [certificate flags] [options]
  tls-migrate send  --connect HOST:PORT (--input FILE | --size N) [--live ...] [options]
  tls-migrate certs generate --out DIR --hostname NAME [--ip ADDR]...
  tls-migrate probe
  tls-migrate demo  [--size N] [--channels N] [--live] [--no-tls] [--json FILE]
  tls-migrate bench [--size N] [--channels 1,4] [--json FILE] [--png FILE]
  tls-migrate tunnel --listen ADDR --connect HOST:PORT [certificate flags]      (source side)
  tls-migrate tunnel --tls-listen HOST:PORT --forward ADDR [certificate flags]  (destination side)

Run 'tls-migrate COMMAND --help' for the options of each command.

Exit codes: 0 ok; 1 migration failed (peer vanished, reset, timeout); 2 usage;
3 certificates/TLS/policy; 4 integrity (invalid packet, digest mismatch); 5 local I/O.
)";

const char* kSecurityHelp = R"(
Certificate flags (QEMU's layout: ca-cert.pem, [ca-crl.pem], server-cert.pem,
server-key.pem, client-cert.pem, client-key.pem):
  --tls-creds DIR       credentials directory ('tls-migrate certs generate' makes one)
  --tls-ca FILE         CA certificate (instead of --tls-creds)
  --tls-cert FILE       own certificate
  --tls-key FILE        own private key
  --tls-crl FILE        certificate revocation list
  --tls-hostname NAME   name the destination's certificate must hold (send;
                        default: the HOST of --connect)
  --tls-priority STR    GnuTLS priority string (default: TLS 1.3, 1.2 allowed, AEAD only)
  --no-verify-peer      do not verify the peer's certificate (DANGEROUS)
  --no-tls              plaintext (DANGEROUS: guest memory in the clear)

Transport options:
  --ktls auto|require|off       move TLS into the kernel (default auto: if possible)
  --zero-copy auto|require|off  MSG_ZEROCOPY on plaintext, kernel encryption from the
                                pages with kTLS; impossible with userspace TLS (default auto)
  --backend sendmsg|io_uring    how plaintext zero-copy sends are issued: sendmsg(MSG_ZEROCOPY)
                                or io_uring SEND_ZC (default sendmsg); kTLS sockets refuse
                                SEND_ZC, so TLS channels always use sendmsg and say why
  --json FILE           write a machine-readable summary ('-' for stdout)
  --quiet               no progress bar
)";

const char* kSendHelp = R"(Usage: tls-migrate send --connect HOST:PORT (--input FILE | --size N) [options]

Streams an image to a 'tls-migrate recv' over several channels, each its own
TLS session. With --live a writer thread keeps changing the memory while it is
migrated (precopy): iterations re-send dirty pages until few are left or
--max-iterations is reached, then the writer stops and a final pass runs; the
destination's image must equal the source memory at that moment.

  --connect HOST:PORT   destination (IPv6: [ADDR]:PORT)
  --input FILE          image file to send
  --size N              send N bytes of generated memory instead (e.g. 256M, 4G)
  --channels N          parallel channels (default 4)
  --live                keep modifying the memory during the migration
  --dirty-rate R        bytes per second the live writer dirties (default 64M)
  --max-iterations K    precopy iterations before forcing the final pass (default 30)
  --max-downtime MS     with --live: start the final pass once the dirty pages can
                        be sent within MS ms at the last iteration's page rate
                        (like QEMU's downtime-limit; default: when <= 1/256 of the
                        image is dirty). The summary prints expected vs actual.
  --digest ALG          end-to-end image digest: xxh3 (default, XXH3-128, fast) or
                        sha256 (cryptographic); kept page by page while pages move,
                        so the switch-over does not rehash the image
  --register-buffers    with --backend io_uring: pin the image once as registered buffers
  --timeout SEC         connect timeout (default 10)
  --io-timeout SEC      no progress on a channel for SEC seconds ends the migration
                        (exit 1; default 30, 0 = wait forever). The wait for the
                        destination's confirmation adds 1 s per 64 MiB of image.
)";

const char* kRecvHelp = R"(Usage: tls-migrate recv --listen HOST:PORT --output FILE [options]

Receives one migration. Pages go into a temporary file beside FILE, which is
renamed to FILE only after the final iteration barrier and a check of the
image digest (XXH3-128, or SHA-256 if the source asks) against the source's.
A failed or aborted migration never leaves a file under FILE. Connections that fail the TLS handshake or belong to another
migration are rejected and logged; no page is read from them.

  --listen HOST:PORT    address to listen on (IPv6: [ADDR]:PORT)
  --output FILE         where the image goes
  --timeout SEC         how long to wait for all channels (default 60)
  --io-timeout SEC      after the channels are accepted: no progress on a channel for
                        SEC seconds ends the migration (exit 1; default 30, 0 = forever)
  --max-size N          largest image accepted (e.g. 64G); default: what the output's
                        filesystem has free. Larger: exit 5 before any page moves
  --max-pending N       connections in TLS handshake/hello at once (default 32); each
                        has its own deadline; beyond N the oldest connection of the
                        source address holding the most is dropped (logged)

The output's directory is checked before listening; the image's space is
reserved (fallocate) before the first page is accepted, so a full disk is
exit 5 with a sentence, never a crash.
)";

const char* kCertsHelp = R"(Usage: tls-migrate certs generate --out DIR --hostname NAME [--ip ADDR]... [options]

Creates a CA and a server and a client certificate signed by it, in QEMU's
creds-dir layout, for tests and demos. Keys are written with mode 0600.

  --out DIR             directory to write (created if missing)
  --hostname NAME       destination's DNS name (server certificate CN and SAN)
  --ip ADDR             add an IP address SAN to the server certificate (repeatable)
  --client-name NAME    client certificate CN (default tls-migrate-client)
  --days N              validity in days (default 365)
  --rsa                 RSA-3072 keys instead of ECDSA P-256
)";

const char* kProbeHelp = R"(Usage: tls-migrate probe

Reports what this host supports (kernel TLS and its ciphers, MSG_ZEROCOPY,
io_uring SEND_ZC, locked-memory and optmem limits) and what each mode would do.
)";

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

const char* kDemoHelp = R"(Usage: tls-migrate demo [options]

Generates certificates in a temporary directory and an image of mixed random
and zero pages, runs recv (in a child process) and send on loopback, verifies
the output, and prints what happened: the path per channel (kTLS or userspace
and why), zero-copy state and completion counts, bytes, time, throughput, and
the CPU time of each side.

  --size N              image size (default 256M)
  --channels N          channels (default 4)
  --live                modify the memory during the migration
  --dirty-rate R        live writer rate (default 64M)
  --max-downtime MS     with --live: final pass once the rest fits in MS ms
  --digest ALG          xxh3 (default) or sha256
  --no-tls              plaintext instead of TLS
  --ktls MODE, --zero-copy MODE, --json FILE
)";

const std::set<std::string> kSecValue = {"tls-creds", "tls-ca", "tls-cert", "tls-key", "tls-crl",
                                         "tls-hostname", "tls-priority", "ktls", "zero-copy", "json",
                                         "backend"};
const std::set<std::string> kSecBool = {"no-verify-peer", "no-tls", "quiet", "help"};

std::set<std::string> Join(std::set<std::string> a, const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

SecurityConfig BuildSecurity(const Args& a, TlsRole role, const std::string& peer_host) {
  SecurityConfig s;
  s.ktls = ParsePolicy(a.get("ktls", "auto"), "--ktls value");
  s.zero_copy = ParsePolicy(a.get("zero-copy", "auto"), "--zero-copy value");
  s.backend = ParseSendBackend(a.get("backend", "sendmsg"));
  if (a.flag("no-tls")) {
    std::fprintf(stderr, "WARNING: --no-tls: guest memory crosses the network in PLAINTEXT.\n");
    s.tls = false;
    return s;
  }
  CredentialFiles f;
  if (a.has("tls-creds")) {
    f = CredsDirFiles(a.get("tls-creds"), role);
  } else if (a.has("tls-ca")) {
    f.ca = a.get("tls-ca");
    f.cert = a.get("tls-cert");
    f.key = a.get("tls-key");
  } else {
    throw Error(ErrorKind::kUsage, EINVAL,
                "TLS needs credentials: pass --tls-creds DIR (or --tls-ca/--tls-cert/--tls-key); "
                "'tls-migrate certs generate' makes a test set; --no-tls runs in plaintext");
  }
  if (a.has("tls-crl")) f.crl = a.get("tls-crl");
  s.tls_options.role = role;
  s.tls_options.creds = Credentials::Load(f, role);
  for (const std::string& w : s.tls_options.creds->warnings()) std::fprintf(stderr, "WARNING: %s\n", w.c_str());
  s.tls_options.peer_name = a.get("tls-hostname", peer_host);
  if (a.has("tls-priority")) {
    s.tls_options.priority = a.get("tls-priority");
    // Now, not at the first handshake: a recv would listen and refuse every source.
    CheckTlsPriority(s.tls_options.backend, s.tls_options.priority);
  }
  if (a.flag("no-verify-peer")) {
    std::fprintf(stderr, "WARNING: --no-verify-peer: the peer is NOT authenticated; anyone on the path "
                         "can impersonate it.\n");
    s.tls_options.verify_peer = false;
  }
  return s;
}

std::string HostOf(const std::string& addr) {
  if (!addr.empty() && addr[0] == '[') return addr.substr(1, addr.find(']') - 1);
  return addr.substr(0, addr.rfind(':'));
}

// Draws a progress line on stderr while the migration runs (TTY only).
class ProgressBar {
 public:
  ProgressBar(Progress& p, bool enabled, const char* verb) : p_(p) {
    if (!enabled || !isatty(2)) return;
    t_ = std::thread([this, verb] {
      auto start = std::chrono::steady_clock::now();
      while (!stop_.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        uint64_t b = p_.bytes.load(), total = p_.total_bytes.load();
        double frac = total ? std::min(1.0, double(p_.pages.load()) * 4096 / double(total)) : 0;
        int width = 30, fill = static_cast<int>(frac * width);
        std::fprintf(stderr, "\r%s [%.*s%*s] %s  %.2f GB/s  iteration %u  dirty %llu pages   ", verb, fill,
                     "##############################", width - fill, "", Human(double(b)).c_str(),
                     secs > 0 ? b / secs / 1e9 : 0.0, p_.iteration.load(),
                     (unsigned long long)p_.dirty_pages.load());
        drawn_ = true;
      }
    });
  }
  ~ProgressBar() {
    stop_ = true;
    if (t_.joinable()) t_.join();
    if (drawn_) std::fprintf(stderr, "\n");
  }

 private:
  Progress& p_;
  std::atomic<bool> stop_{false};
  bool drawn_ = false;
  std::thread t_;
};

void WriteJson(const Args& a, const nlohmann::json& j) {
  if (a.has("json")) WriteJsonFile(a.get("json"), j);
}

std::unique_ptr<PageSource> MakeSource(const Args& a) {
  std::unique_ptr<MappedImage> img;
  if (a.has("input") == a.has("size")) {
    throw Error(ErrorKind::kUsage, EINVAL, "give exactly one of --input FILE or --size N");
  }
  if (a.has("input")) {
    img = MappedImage::FromFile(a.get("input"));
  } else {
    img = MappedImage::Anonymous(ParseSize(a.get("size"), "--size"));
    img->FillMixed(30, 42);
  }
  if (a.flag("live")) {
    // A file is read into memory (a snapshot), which the live writer may change.
    return std::make_unique<LiveImage>(std::move(img), ParseSize(a.get("dirty-rate", "64M"), "--dirty-rate"));
  }
  return img;
}

// --io-timeout SEC (0 = wait forever).
std::chrono::milliseconds IoTimeout(const Args& a) {
  const uint64_t secs = a.number("io-timeout", 30, 0, 86400);
  return secs == 0 ? std::chrono::milliseconds(-1) : std::chrono::milliseconds(secs * 1000);
}

// Local files are checked before any connection, so a typo costs nothing.
void CheckJsonPath(const Args& a) {
  if (!a.has("json") || a.get("json") == "-") return;
  const std::string path = a.get("json");
  struct stat st{};
  if (stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) throw Error(ErrorKind::kLocalIo, EISDIR, "--json " + path + " is a directory");
    if (access(path.c_str(), W_OK) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "--json " + path + " is not writable");
    return;
  }
  const std::string dir = DirectoryOf(path);
  if (access(dir.c_str(), W_OK) != 0) {
    ThrowErrno(ErrorKind::kLocalIo, errno, "--json " + path + ": cannot create files in " + dir);
  }
}

SourceOptions MakeSourceOptions(const Args& a, const std::string& connect) {
  SourceOptions o;
  o.address = connect;
  o.channels = static_cast<int>(a.number("channels", 4, 1, 64));
  o.max_iterations = static_cast<uint32_t>(a.number("max-iterations", 30, 1, UINT32_MAX));
  o.max_downtime = std::chrono::milliseconds(a.number("max-downtime", 0, 0, 86400000));
  o.digest = ParseDigestAlgorithm(a.get("digest", "xxh3"));
  o.connect_timeout = std::chrono::seconds(a.number("timeout", 10, 1, 86400));
  o.io_timeout = IoTimeout(a);
  o.security = BuildSecurity(a, TlsRole::kClient, HostOf(connect));
  return o;
}

int CmdSend(int argc, char** argv) {
  Args a(argc, argv, 2,
         Join({"connect", "input", "size", "channels", "dirty-rate", "max-iterations", "max-downtime", "digest",
               "timeout", "io-timeout"},
              kSecValue),
         Join({"live", "register-buffers"}, kSecBool));
  if (a.flag("help")) {
    std::printf("%s%s", kSendHelp, kSecurityHelp);
    return 0;
  }
  if (!a.has("connect")) throw Error(ErrorKind::kUsage, EINVAL, "send needs --connect HOST:PORT (see --help)");
  SourceOptions o = MakeSourceOptions(a, a.get("connect"));
  o.register_buffers = a.flag("register-buffers");
  CheckJsonPath(a);
  auto src = MakeSource(a);
  Progress progress;
  o.progress = &progress;
  MigrationReport r;
  {
    ProgressBar bar(progress, !a.flag("quiet"), "send");
    r = RunSource(*src, o);
  }
  SideCpu cpu = SelfCpu();
  if (!a.flag("quiet")) PrintReport("source", r, &cpu);
  WriteJson(a, ReportJson("source", r, &cpu));
  return 0;
}

// The temporary file a signal must remove (async-signal-safe storage).
char g_temp_path[4096];

void OnFatalSignal(int sig) {
  if (g_temp_path[0]) unlink(g_temp_path);
  signal(sig, SIG_DFL);
  raise(sig);
}

DestinationOptions MakeDestOptions(const Args& a) {
  DestinationOptions o;
  o.output = a.get("output");
  o.accept_timeout = std::chrono::seconds(a.number("timeout", 60, 1, 86400));
  o.io_timeout = IoTimeout(a);
  o.max_size = a.has("max-size") ? ParseSize(a.get("max-size"), "--max-size") : 0;
  o.max_pending = a.number("max-pending", 32, 1, 4096);
  o.security = BuildSecurity(a, TlsRole::kServer, "");
  o.log = [](const std::string& s) { std::fprintf(stderr, "tls-migrate recv: %s\n", s.c_str()); };
  o.temp_file_hook = [](const std::string& p) {
    std::snprintf(g_temp_path, sizeof(g_temp_path), "%s", p.c_str());
  };
  return o;
}

int CmdRecv(int argc, char** argv) {
  Args a(argc, argv, 2, Join({"listen", "output", "timeout", "io-timeout", "max-size", "max-pending"}, kSecValue),
         kSecBool);
  if (a.flag("help")) {
    std::printf("%s%s", kRecvHelp, kSecurityHelp);
    return 0;
  }
  if (!a.has("listen") || !a.has("output")) {
    throw Error(ErrorKind::kUsage, EINVAL, "recv needs --listen HOST:PORT and --output FILE");
  }
  DestinationOptions o = MakeDestOptions(a);
  CheckOutputPath(o.output);
  CheckJsonPath(a);
  signal(SIGINT, OnFatalSignal);
  signal(SIGTERM, OnFatalSignal);
  Listener l = Listener::Listen(a.get("listen"));
  if (!a.flag("quiet")) std::fprintf(stderr, "tls-migrate recv: listening on %s\n", l.address().c_str());
  Progress progress;
  o.progress = &progress;
  MigrationReport r;
  {
    ProgressBar bar(progress, !a.flag("quiet"), "recv");
    r = RunDestination(l, o);
  }
  SideCpu cpu = SelfCpu();
  if (!a.flag("quiet")) {
    PrintReport("destination", r, &cpu);
    std::printf("  image verified and written to %s\n", o.output.c_str());
  }
  WriteJson(a, ReportJson("destination", r, &cpu));
  return 0;
}

std::atomic<bool> g_stop{false};
void OnStopSignal(int) { g_stop = true; }

int CmdTunnel(int argc, char** argv) {
  Args a(argc, argv, 2,
         Join({"listen", "connect", "tls-listen", "forward", "max-connections", "io-timeout", "timeout"}, kSecValue),
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
  TunnelOptions o;
  o.listen = source ? a.get("listen") : a.get("tls-listen");
  o.target = source ? a.get("connect") : a.get("forward");
  o.security = BuildSecurity(a, source ? TlsRole::kClient : TlsRole::kServer, source ? HostOf(o.target) : "");
  o.io_timeout = IoTimeout(a);
  o.connect_timeout = std::chrono::seconds(a.number("timeout", 10, 1, 86400));
  o.max_connections = a.number("max-connections", 0, 0, UINT32_MAX);
  o.stream_digest = a.flag("stream-digest");
  o.stop = &g_stop;
  const bool quiet = a.flag("quiet");
  static std::mutex print_mu;
  o.log = [quiet](const std::string& s) {
    // --quiet keeps what an operator must see: refusals, failures, and a
    // listener backing off for lack of descriptors (and its recovery).
    if (quiet && s.find("rejected") == std::string::npos && s.find("cannot") == std::string::npos &&
        s.find("accept") == std::string::npos) {
      return;
    }
    std::lock_guard<std::mutex> l(print_mu);
    std::fprintf(stderr, "tls-migrate %s\n", s.c_str());
  };
  o.on_conn_done = [](const TunnelConnReport& r) {
    std::lock_guard<std::mutex> l(print_mu);
    const std::string digests =
        r.digest_up.empty() ? "" : "; stream digest up " + r.digest_up + ", down " + r.digest_down;
    std::fprintf(stderr, "tls-migrate tunnel: connection %llu %s: %s; %s; up %s, down %s in %.2f s%s%s\n",
                 (unsigned long long)r.seq, r.error.empty() ? "done" : ("FAILED (" + r.error + ")").c_str(),
                 r.path.c_str(), r.data_path.c_str(), Human(double(r.bytes_up)).c_str(),
                 Human(double(r.bytes_down)).c_str(), r.seconds, digests.c_str(),
                 r.note.empty() ? "" : ("; note: " + r.note).c_str());
  };
  signal(SIGINT, OnStopSignal);
  signal(SIGTERM, OnStopSignal);
  const TunnelReport rep = source ? RunTunnelSource(o) : RunTunnelDestination(o);
  {
    std::lock_guard<std::mutex> l(print_mu);
    std::fprintf(stderr, "tls-migrate tunnel: %llu connection(s) ended, %llu failed; up %s, down %s\n",
                 (unsigned long long)rep.connections, (unsigned long long)rep.failed,
                 Human(double(rep.bytes_up)).c_str(), Human(double(rep.bytes_down)).c_str());
  }
  if (a.has("json")) {
    nlohmann::json conns = nlohmann::json::array();
    for (const auto& c : rep.conns) {
      conns.push_back({{"seq", c.seq}, {"peer", c.peer}, {"path", c.path}, {"data_path", c.data_path},
                       {"bytes_up", c.bytes_up}, {"bytes_down", c.bytes_down}, {"seconds", c.seconds},
                       {"error", c.error}, {"note", c.note}, {"ktls", c.path.find("kTLS (") != std::string::npos}});
      if (!c.digest_up.empty()) {
        conns.back()["digest_up"] = c.digest_up;
        conns.back()["digest_down"] = c.digest_down;
      }
    }
    WriteJsonFile(a.get("json"), {{"role", source ? "tunnel-source" : "tunnel-destination"},
                                  {"connections", rep.connections},
                                  {"failed", rep.failed},
                                  {"bytes_up", rep.bytes_up},
                                  {"bytes_down", rep.bytes_down},
                                  {"conns", conns}});
  }
  std::fflush(stdout);
  std::fflush(stderr);
  // Connections still open at a stop request were aborted (not failures).
  _exit(rep.failed ? kExitFailed : kExitOk);
}

int CmdCerts(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]) == "--help") {
    std::printf("%s", kCertsHelp);
    return argc < 3 ? kExitUsage : 0;
  }
  if (std::string(argv[2]) != "generate") {
    throw Error(ErrorKind::kUsage, EINVAL, "unknown certs command '" + std::string(argv[2]) + "' (see --help)");
  }
  Args a(argc, argv, 3, {"out", "hostname", "ip", "client-name", "days"}, {"rsa", "help"});
  if (a.flag("help")) {
    std::printf("%s", kCertsHelp);
    return 0;
  }
  if (!a.has("out") || !a.has("hostname")) {
    throw Error(ErrorKind::kUsage, EINVAL, "certs generate needs --out DIR and --hostname NAME");
  }
  GenerateOptions g;
  g.out_dir = a.get("out");
  g.hostname = a.get("hostname");
  g.ips = a.all("ip");
  g.client_name = a.get("client-name", g.client_name);
  g.days = static_cast<int>(a.number("days", 365, 1, 36500));
  g.key_type = a.flag("rsa") ? KeyType::kRsa3072 : KeyType::kEcdsaP256;
  GenerateCredsDir(g);
  std::printf("wrote CA, server (%s", g.hostname.c_str());
  for (auto& ip : g.ips) std::printf(", %s", ip.c_str());
  std::printf(") and client credentials to %s (keys mode 0600)\n", g.out_dir.c_str());
  std::printf("  destination: tls-migrate recv --tls-creds %s ...\n  source:      tls-migrate send --tls-creds %s --tls-hostname %s ...\n",
              g.out_dir.c_str(), g.out_dir.c_str(), g.hostname.c_str());
  return 0;
}


int CmdProbe(int argc, char** argv) {
  Args a(argc, argv, 2, {}, {"help"});
  if (a.flag("help")) {
    std::printf("%s", kProbeHelp);
    return 0;
  }
  std::optional<std::string> ulp = ProbeKtlsUlp();
  std::printf("kernel %s\n", ReadProcValue("/proc/sys/kernel/osrelease").c_str());
  std::printf("%s (Debian builds it without kTLS: tls-migrate installs the keys itself)\n",
              TlsLibraryVersion(TlsBackend::kGnutls).c_str());
  std::printf("kernel TLS (TCP_ULP \"tls\"): %s\n", ulp ? ("no: " + *ulp).c_str() : "yes");
  // One row per kernel cipher: does the kernel take it, and do we move
  // sessions with it into the kernel.
  for (const KernelCipher& row : KernelCipherTable()) {
    std::printf("  %-18s kernel: %-28s key install: %s\n", row.name,
                ulp ? "no (no tls module)" : ProbeKernelCipher(row).c_str(),
                row.installable ? "yes" : (std::string("no, ") + row.why_not).c_str());
  }
  // MSG_ZEROCOPY
  std::string zc;
  try {
    Listener l = Listener::Listen("127.0.0.1:0");
    auto c = SocketChannel::Connect(l.address(), std::chrono::seconds(2));
    zc = c->zero_copy_available() ? "yes (SO_ZEROCOPY accepted)" : "no: " + c->zero_copy_reason();
  } catch (const Error& e) {
    zc = std::string("unknown: ") + e.what();
  }
  std::printf("MSG_ZEROCOPY on TCP: %s\n", zc.c_str());
  const std::optional<std::string> no_send_zc = ProbeUringSendZcOpcode();
  std::printf("io_uring SEND_ZC: %s\n", no_send_zc ? ("no (" + *no_send_zc + ")").c_str() : "yes");
  rlimit rl{};
  getrlimit(RLIMIT_MEMLOCK, &rl);
  std::printf("ulimit -l: %s%s\n",
              rl.rlim_cur == RLIM_INFINITY ? "unlimited" : (std::to_string(rl.rlim_cur / 1024) + " KiB").c_str(),
              geteuid() == 0 ? " (running as root: CAP_IPC_LOCK usually lifts it)" : "");
  std::printf("net.core.optmem_max: %s bytes\n\n", ReadProcValue("/proc/sys/net/core/optmem_max").c_str());
  std::printf("What each mode would do here:\n");
  std::printf("  --no-tls:                 MSG_ZEROCOPY writes%s\n", zc.rfind("yes", 0) == 0 ? " (completions reported; loopback/local peers get 'copied')" : ": unavailable, copies");
  if (!ulp) {
    std::printf("  TLS, --ktls auto:         kTLS (keys installed into the kernel); zero copy = kernel encrypts from the pages\n");
  } else {
    std::printf("  TLS, --ktls auto:         userspace TLS (GnuTLS), zero copy off (GnuTLS reuses its ciphertext buffer)\n");
    std::printf("  TLS, --ktls require:      fails: %s\n", ulp->c_str());
    std::printf("  TLS, --zero-copy require: fails: userspace TLS cannot do zero copy\n");
  }
  std::printf("  TLS, --ktls off:          userspace TLS, zero copy off\n");
  return 0;
}

int CmdDemo(int argc, char** argv) {
  Args a(argc, argv, 2,
         {"size", "channels", "dirty-rate", "ktls", "zero-copy", "json", "max-iterations", "max-downtime", "digest",
          "backend"},
         {"live", "no-tls", "help", "quiet", "register-buffers"});
  if (a.flag("help")) {
    std::printf("%s", kDemoHelp);
    return 0;
  }
  char tmpl[] = "/tmp/tls-migrate-demo-XXXXXX";
  if (!mkdtemp(tmpl)) ThrowErrno(ErrorKind::kLocalIo, errno, "mkdtemp");
  const std::string dir = tmpl;
  LoopbackConfig cfg;
  cfg.tls = !a.flag("no-tls");
  cfg.size = ParseSize(a.get("size", "256M"), "--size");
  cfg.channels = static_cast<int>(a.number("channels", 4, 1, 64));
  cfg.ktls = ParsePolicy(a.get("ktls", "auto"), "--ktls value");
  cfg.zero_copy = ParsePolicy(a.get("zero-copy", "auto"), "--zero-copy value");
  cfg.backend = ParseSendBackend(a.get("backend", "sendmsg"));
  cfg.register_buffers = a.flag("register-buffers");
  cfg.live = a.flag("live");
  cfg.dirty_rate = ParseSize(a.get("dirty-rate", "64M"), "--dirty-rate");
  cfg.max_iterations = static_cast<uint32_t>(a.number("max-iterations", 30, 1, UINT32_MAX));
  cfg.max_downtime = std::chrono::milliseconds(a.number("max-downtime", 0, 0, 86400000));
  cfg.digest = ParseDigestAlgorithm(a.get("digest", "xxh3"));
  cfg.output = dir + "/received.img";
  if (cfg.tls) {
    GenerateOptions g;
    g.out_dir = dir + "/pki";
    g.hostname = "localhost";
    g.ips = {"127.0.0.1"};
    GenerateCredsDir(g);
    cfg.pki_dir = g.out_dir;
  }
  std::printf("tls-migrate demo: %s image (30%% zero pages), %d channels, %s, on loopback\n",
              Human(double(cfg.size)).c_str(), cfg.channels,
              (cfg.tls ? "TLS with certificates generated in " + cfg.pki_dir : std::string("PLAINTEXT")).c_str());
  LoopbackResult res;
  try {
    res = RunOnLoopback(cfg);
  } catch (const Error& e) {
    return ReportError("demo", e);
  }
  // Verify independently: digest the file that appeared under the final name.
  auto file = MappedImage::FromFile(cfg.output);
  const uint64_t fsize = file->size();
  const std::string file_digest = DigestHex(cfg.digest, ImageDigestOf(cfg.digest, file->data(), fsize, file->page_size()));
  file.reset();
  const MigrationReport& r = res.source;
  const bool ok = res.verified && fsize == r.image_size && file_digest == r.digest;
  std::printf("\n");
  PrintReport("source", r, &res.source_cpu);
  std::printf("destination (separate process): CPU %.2f s user + %.2f s sys\n", res.destination_cpu.user,
              res.destination_cpu.sys);
  auto stat = ReadTlsStat();
  if (!stat.empty()) {
    std::printf("/proc/net/tls_stat: TlsTxSw %llu, TlsRxSw %llu, TlsDecryptError %llu\n",
                (unsigned long long)stat["TlsTxSw"], (unsigned long long)stat["TlsRxSw"],
                (unsigned long long)stat["TlsDecryptError"]);
  } else {
    std::printf("/proc/net/tls_stat: absent (this kernel has no TLS module; 'make demo-ktls' shows the kTLS path in a VM)\n");
  }
  std::printf("verification: %s (%s, image digest of the received file %s the source's)\n", ok ? "OK" : "FAILED",
              Human(double(fsize)).c_str(), ok ? "equals" : "DIFFERS FROM");
  WriteJson(a, {{"source", ReportJson("source", r, &res.source_cpu)},
               {"destination", res.destination},
               {"verified", ok}});
  unlink(cfg.output.c_str());
  return ok ? 0 : kExitIntegrity;
}


}  // namespace
}  // namespace ktm::cli

int main(int argc, char** argv) {
  using namespace ktm::cli;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::printf("%s", kMainHelp);
    return argc < 2 ? kExitUsage : 0;
  }
  if (std::string(argv[1]) == "--version" || std::string(argv[1]) == "version") {
    std::printf("tls-migrate %s\n", KTM_VERSION_STRING);
    return 0;
  }
  const std::string cmd = argv[1];
  std::map<std::string, std::function<int(int, char**)>> cmds = {
      {"send", CmdSend}, {"recv", CmdRecv}, {"certs", CmdCerts}, {"probe", CmdProbe}, {"demo", CmdDemo},
      {"bench", CmdBench}, {"tunnel", CmdTunnel}};
  auto it = cmds.find(cmd);
  if (it == cmds.end()) {
    std::fprintf(stderr, "tls-migrate: unknown command '%s'\n%s", cmd.c_str(), kMainHelp);
    return kExitUsage;
  }
  // A vanished peer is an error with a sentence, never a silent SIGPIPE
  // death (the library also sends with MSG_NOSIGNAL where it can).
  signal(SIGPIPE, SIG_IGN);
  try {
    return it->second(argc, argv);
  } catch (const ktm::Error& e) {
    return ReportError(cmd.c_str(), e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tls-migrate %s: %s\n", cmd.c_str(), e.what());
    return kExitFailed;
  }
}

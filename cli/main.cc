// tls-migrate: move a memory image between hosts over several encrypted
// channels, with kernel TLS where the kernel has it.
#include <fcntl.h>
#include <liburing.h>
#include <linux/tls.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <thread>

#include "certs/generate.h"
#include "channel/error.h"
#include "cli/args.h"
#include "ktls/ktls.h"
#include "transport/migration.h"
#include "util/sha256.h"

#ifndef SOL_TLS
#define SOL_TLS 282
#endif

namespace ktm::cli {
namespace {

// Exit codes (documented in --help and the README).
enum Exit : int {
  kExitOk = 0,
  kExitFailed = 1,     // migration failed: peer vanished, reset, timeout
  kExitUsage = 2,      // bad command line
  kExitSecurity = 3,   // certificates, TLS handshake, kTLS/zero-copy policy not satisfiable
  kExitIntegrity = 4,  // invalid packet, digest mismatch: data was refused
  kExitLocalIo = 5,    // local files: cannot read input / write output
};

const char* kMainHelp = R"(tls-migrate: move a memory image between hosts over encrypted channels,
with the TLS session moved into the kernel (kTLS) where the kernel can take it.

Usage:
  tls-migrate recv  --listen HOST:PORT --output FILE [certificate flags] [options]
  tls-migrate send  --connect HOST:PORT (--input FILE | --size N) [--live ...] [options]
  tls-migrate certs generate --out DIR --hostname NAME [--ip ADDR]...
  tls-migrate probe
  tls-migrate demo  [--size N] [--channels N] [--live] [--no-tls] [--json FILE]

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
  --timeout SEC         connect timeout (default 10)
)";

const char* kRecvHelp = R"(Usage: tls-migrate recv --listen HOST:PORT --output FILE [options]

Receives one migration. Pages go into a temporary file beside FILE, which is
renamed to FILE only after the final iteration barrier and a SHA-256 check
against the source's digest. A failed or aborted migration never leaves a file
under FILE. Connections that fail the TLS handshake or belong to another
migration are rejected and logged; no page is read from them.

  --listen HOST:PORT    address to listen on (IPv6: [ADDR]:PORT)
  --output FILE         where the image goes
  --timeout SEC         how long to wait for all channels (default 60)
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
  --no-tls              plaintext instead of TLS
  --ktls MODE, --zero-copy MODE, --json FILE
)";

int ExitFor(const Error& e) {
  switch (e.code()) {
    case EINVAL: return kExitUsage;
    case EBADMSG: return kExitIntegrity;
    case ECONNABORTED: case EKEYREJECTED: case EKEYEXPIRED: case EOPNOTSUPP: case EPROTO:
      return kExitSecurity;
    case ENOENT: case EACCES: case EROFS: case ENOSPC: case EISDIR: case EPERM:
      return kExitLocalIo;
    default: return kExitFailed;
  }
}

const std::set<std::string> kSecValue = {"tls-creds", "tls-ca", "tls-cert", "tls-key", "tls-crl",
                                         "tls-hostname", "tls-priority", "ktls", "zero-copy", "json"};
const std::set<std::string> kSecBool = {"no-verify-peer", "no-tls", "quiet", "help"};

std::set<std::string> Join(std::set<std::string> a, const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

SecurityConfig BuildSecurity(const Args& a, TlsRole role, const std::string& peer_host) {
  SecurityConfig s;
  s.ktls = ParseKtlsMode(a.get("ktls", "auto"));
  s.zero_copy = ParseZeroCopyMode(a.get("zero-copy", "auto"));
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
    throw Error(EINVAL, "TLS needs credentials: pass --tls-creds DIR (or --tls-ca/--tls-cert/--tls-key); "
                        "'tls-migrate certs generate' makes a test set; --no-tls runs in plaintext");
  }
  if (a.has("tls-crl")) f.crl = a.get("tls-crl");
  s.tls_options.role = role;
  s.tls_options.creds = Credentials::Load(f, role);
  s.tls_options.peer_name = a.get("tls-hostname", peer_host);
  if (a.has("tls-priority")) s.tls_options.priority = a.get("tls-priority");
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

std::string Human(double bytes) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (bytes >= 1024 && i < 4) bytes /= 1024, ++i;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", bytes, u[i]);
  return buf;
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

std::string JsonEscape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\', o += c;
    else if (c == '\n') o += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20) o += ' ';
    else o += c;
  }
  return o;
}

struct SideCpu {
  double user = 0, sys = 0;
};

std::string ReportJson(const char* role, const MigrationReport& r, const SideCpu* cpu) {
  std::ostringstream j;
  j << "{\"role\":\"" << role << "\",\"session\":\"" << r.session << "\",\"image_bytes\":" << r.image_size
    << ",\"page_size\":" << r.page_size << ",\"iterations\":" << r.iterations << ",\"pages\":" << r.pages
    << ",\"zero_pages\":" << r.zero_pages << ",\"data_bytes\":" << r.data_bytes << ",\"seconds\":" << r.seconds
    << ",\"throughput_gbps\":" << (r.seconds > 0 ? r.data_bytes / r.seconds / 1e9 : 0) << ",\"sha256\":\""
    << r.digest << "\"";
  if (cpu) j << ",\"cpu_user_s\":" << cpu->user << ",\"cpu_sys_s\":" << cpu->sys;
  j << ",\"dirty_per_iteration\":[";
  for (size_t i = 0; i < r.dirty_per_iteration.size(); ++i) j << (i ? "," : "") << r.dirty_per_iteration[i];
  j << "],\"channels\":[";
  for (size_t i = 0; i < r.channels.size(); ++i) {
    const auto& c = r.channels[i];
    j << (i ? "," : "") << "{\"id\":" << i << ",\"ktls\":" << (c.ktls ? "true" : "false")
      << ",\"zero_copy\":" << (c.zero_copy ? "true" : "false") << ",\"path\":\"" << JsonEscape(c.path) << "\"";
    if (c.has_counters) {
      j << ",\"zc_sends\":" << c.zc.sends << ",\"zc_released\":" << c.zc.released
        << ",\"zc_zero_copied\":" << c.zc.zero_copied << ",\"zc_copied\":" << c.zc.copied
        << ",\"zc_notifications\":" << c.zc.completion_records << ",\"zc_enobufs_retries\":" << c.zc.enobufs_retries;
    }
    j << "}";
  }
  j << "]}";
  return j.str();
}

void WriteJson(const Args& a, const std::string& json) {
  if (!a.has("json")) return;
  const std::string path = a.get("json");
  if (path == "-") {
    std::printf("%s\n", json.c_str());
    return;
  }
  std::ofstream f(path);
  if (!(f << json << "\n")) throw Error(EACCES, "cannot write --json file " + path);
}

void PrintReport(const char* role, const MigrationReport& r, const SideCpu* cpu) {
  std::printf("%s: session %s\n", role, r.session.c_str());
  std::printf("  image %s in %u iteration(s): %llu page transmissions (%llu zero pages as offsets only)\n",
              Human(double(r.image_size)).c_str(), r.iterations, (unsigned long long)r.pages,
              (unsigned long long)r.zero_pages);
  std::printf("  %s of page data in %.2f s = %.2f GB/s", Human(double(r.data_bytes)).c_str(), r.seconds,
              r.seconds > 0 ? r.data_bytes / r.seconds / 1e9 : 0.0);
  if (cpu) std::printf(", CPU %.2f s user + %.2f s sys", cpu->user, cpu->sys);
  std::printf("\n  SHA-256 %s\n", r.digest.c_str());
  if (r.dirty_per_iteration.size() > 1) {
    std::printf("  pages per iteration:");
    for (auto d : r.dirty_per_iteration) std::printf(" %llu", (unsigned long long)d);
    std::printf("\n");
  }
  // Channels that took the same path are printed once.
  for (size_t i = 0; i < r.channels.size();) {
    size_t j = i + 1;
    while (j < r.channels.size() && r.channels[j].path == r.channels[i].path && !r.channels[i].has_counters) ++j;
    const auto& c = r.channels[i];
    if (j - i > 1) {
      std::printf("  channels %zu-%zu: %s\n", i, j - 1, c.path.c_str());
    } else {
      std::printf("  channel %zu: %s\n", i, c.path.c_str());
    }
    if (c.has_counters && c.zc.sends) {
      std::printf("             MSG_ZEROCOPY sends %llu, released %llu (%llu notifications): zero-copied %llu, "
                  "kernel copied %llu%s\n",
                  (unsigned long long)c.zc.sends, (unsigned long long)c.zc.released,
                  (unsigned long long)c.zc.completion_records, (unsigned long long)c.zc.zero_copied,
                  (unsigned long long)c.zc.copied,
                  c.zc.copied == c.zc.sends ? " (local delivery: the kernel copies; real NICs avoid it)" : "");
    }
    i = j;
  }
}

SideCpu SelfCpu() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return {ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6};
}

std::unique_ptr<PageSource> MakeSource(const Args& a) {
  std::unique_ptr<MappedImage> img;
  if (a.has("input") == a.has("size")) throw Error(EINVAL, "give exactly one of --input FILE or --size N");
  if (a.has("input")) {
    img = MappedImage::FromFile(a.get("input"));
  } else {
    img = MappedImage::Anonymous(ParseSize(a.get("size"), "--size"));
    img->FillMixed(30, 42);
  }
  if (a.flag("live")) {
    if (a.has("input")) {
      // A file is mapped read-only; live mode needs memory it can change.
      auto mem = MappedImage::Anonymous(img->size());
      std::memcpy(mem->mutable_data(), img->data(), img->size());
      img = std::move(mem);
    }
    return std::make_unique<LiveImage>(std::move(img), ParseSize(a.get("dirty-rate", "64M"), "--dirty-rate"));
  }
  return img;
}

SourceOptions MakeSourceOptions(const Args& a, const std::string& connect) {
  SourceOptions o;
  o.address = connect;
  o.channels = std::stoi(a.get("channels", "4"));
  o.max_iterations = static_cast<uint32_t>(std::stoul(a.get("max-iterations", "30")));
  o.connect_timeout = std::chrono::seconds(std::stoi(a.get("timeout", "10")));
  o.security = BuildSecurity(a, TlsRole::kClient, HostOf(connect));
  return o;
}

int CmdSend(int argc, char** argv) {
  Args a(argc, argv, 2, Join({"connect", "input", "size", "channels", "dirty-rate", "max-iterations", "timeout"}, kSecValue),
         Join({"live"}, kSecBool));
  if (a.flag("help")) {
    std::printf("%s%s", kSendHelp, kSecurityHelp);
    return 0;
  }
  if (!a.has("connect")) throw Error(EINVAL, "send needs --connect HOST:PORT (see --help)");
  SourceOptions o = MakeSourceOptions(a, a.get("connect"));
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
  o.accept_timeout = std::chrono::seconds(std::stoi(a.get("timeout", "60")));
  o.security = BuildSecurity(a, TlsRole::kServer, "");
  o.log = [](const std::string& s) { std::fprintf(stderr, "tls-migrate recv: %s\n", s.c_str()); };
  o.temp_file_hook = [](const std::string& p) {
    std::snprintf(g_temp_path, sizeof(g_temp_path), "%s", p.c_str());
  };
  return o;
}

int CmdRecv(int argc, char** argv) {
  Args a(argc, argv, 2, Join({"listen", "output", "timeout", "channels"}, kSecValue), kSecBool);
  if (a.flag("help")) {
    std::printf("%s%s", kRecvHelp, kSecurityHelp);
    return 0;
  }
  if (!a.has("listen") || !a.has("output")) throw Error(EINVAL, "recv needs --listen HOST:PORT and --output FILE");
  DestinationOptions o = MakeDestOptions(a);
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

int CmdCerts(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]) == "--help") {
    std::printf("%s", kCertsHelp);
    return argc < 3 ? kExitUsage : 0;
  }
  if (std::string(argv[2]) != "generate") throw Error(EINVAL, "unknown certs command '" + std::string(argv[2]) + "'");
  Args a(argc, argv, 3, {"out", "hostname", "ip", "client-name", "days"}, {"rsa", "help"});
  if (a.flag("help")) {
    std::printf("%s", kCertsHelp);
    return 0;
  }
  if (!a.has("out") || !a.has("hostname")) throw Error(EINVAL, "certs generate needs --out DIR and --hostname NAME");
  GenerateOptions g;
  g.out_dir = a.get("out");
  g.hostname = a.get("hostname");
  g.ips = a.all("ip");
  g.client_name = a.get("client-name", g.client_name);
  g.days = std::stoi(a.get("days", "365"));
  g.key_type = a.flag("rsa") ? KeyType::kRsa3072 : KeyType::kEcdsaP256;
  GenerateCredsDir(g);
  std::printf("wrote CA, server (%s", g.hostname.c_str());
  for (auto& ip : g.ips) std::printf(", %s", ip.c_str());
  std::printf(") and client credentials to %s (keys mode 0600)\n", g.out_dir.c_str());
  std::printf("  destination: tls-migrate recv --tls-creds %s ...\n  source:      tls-migrate send --tls-creds %s --tls-hostname %s ...\n",
              g.out_dir.c_str(), g.out_dir.c_str(), g.hostname.c_str());
  return 0;
}

std::string ReadProc(const char* path) {
  std::ifstream f(path);
  std::string v;
  return (f >> v) ? v : "unknown";
}

// Tries to set TLS_TX with this cipher on a loopback socket with the ULP:
// the kernel answers for real whether it can take the cipher.
std::string ProbeCipher(int cipher_type, size_t info_size) {
  try {
    Listener l = Listener::Listen("127.0.0.1:0");
    SocketOptions so;
    so.zero_copy = ZeroCopyMode::kOff;
    auto c = SocketChannel::Connect(l.address(), std::chrono::seconds(2), so);
    auto s = l.Accept(std::chrono::seconds(2), so);
    if (setsockopt(c->fd(), SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) return "no";
    std::vector<uint8_t> info(info_size, 0);
    auto* h = reinterpret_cast<tls_crypto_info*>(info.data());
    h->version = TLS_1_3_VERSION;
    h->cipher_type = static_cast<uint16_t>(cipher_type);
    if (setsockopt(c->fd(), SOL_TLS, TLS_TX, info.data(), info.size()) != 0) {
      return std::string("no (") + std::strerror(errno) + ")";
    }
    return "yes";
  } catch (const Error& e) {
    return std::string("unknown (") + e.what() + ")";
  }
}

int CmdProbe(int argc, char** argv) {
  Args a(argc, argv, 2, {}, {"help"});
  if (a.flag("help")) {
    std::printf("%s", kProbeHelp);
    return 0;
  }
  std::optional<std::string> ulp = ProbeKtlsUlp();
  std::printf("kernel %s\n", ReadProc("/proc/sys/kernel/osrelease").c_str());
  std::printf("GnuTLS %s (Debian builds it without kTLS: tls-migrate installs the keys itself)\n",
              gnutls_check_version(nullptr));
  std::printf("kernel TLS (TCP_ULP \"tls\"): %s\n", ulp ? ("no: " + *ulp).c_str() : "yes");
  if (!ulp) {
    std::printf("  AES-128-GCM: %s\n", ProbeCipher(TLS_CIPHER_AES_GCM_128, sizeof(tls12_crypto_info_aes_gcm_128)).c_str());
    std::printf("  AES-256-GCM: %s\n", ProbeCipher(TLS_CIPHER_AES_GCM_256, sizeof(tls12_crypto_info_aes_gcm_256)).c_str());
    std::printf("  CHACHA20-POLY1305: %s\n",
                ProbeCipher(TLS_CIPHER_CHACHA20_POLY1305, sizeof(tls12_crypto_info_chacha20_poly1305)).c_str());
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
  io_uring_probe* pr = io_uring_get_probe();
  std::printf("io_uring SEND_ZC: %s\n",
              !pr ? "no (io_uring unavailable)"
                  : io_uring_opcode_supported(pr, IORING_OP_SEND_ZC) ? "yes" : "no (kernel lacks IORING_OP_SEND_ZC)");
  if (pr) io_uring_free_probe(pr);
  rlimit rl{};
  getrlimit(RLIMIT_MEMLOCK, &rl);
  std::printf("ulimit -l: %s%s\n",
              rl.rlim_cur == RLIM_INFINITY ? "unlimited" : (std::to_string(rl.rlim_cur / 1024) + " KiB").c_str(),
              geteuid() == 0 ? " (running as root: CAP_IPC_LOCK usually lifts it)" : "");
  std::printf("net.core.optmem_max: %s bytes\n\n", ReadProc("/proc/sys/net/core/optmem_max").c_str());
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
  Args a(argc, argv, 2, {"size", "channels", "dirty-rate", "ktls", "zero-copy", "json", "max-iterations"},
         {"live", "no-tls", "help", "quiet"});
  if (a.flag("help")) {
    std::printf("%s", kDemoHelp);
    return 0;
  }
  char tmpl[] = "/tmp/tls-migrate-demo-XXXXXX";
  if (!mkdtemp(tmpl)) ThrowErrno(errno, "mkdtemp");
  const std::string dir = tmpl;
  const bool tls = !a.flag("no-tls");
  if (tls) {
    GenerateOptions g;
    g.out_dir = dir + "/pki";
    g.hostname = "localhost";
    g.ips = {"127.0.0.1"};
    GenerateCredsDir(g);
  }
  const uint64_t size = ParseSize(a.get("size", "256M"), "--size");
  std::printf("tls-migrate demo: %s image (30%% zero pages), %s channels, %s, on loopback\n", Human(double(size)).c_str(),
              a.get("channels", "4").c_str(),
              (tls ? "TLS with certificates generated in " + dir + "/pki" : std::string("PLAINTEXT")).c_str());

  Listener l = Listener::Listen("127.0.0.1:0");
  const std::string out = dir + "/received.img";
  int pipefd[2];
  if (pipe(pipefd) != 0) ThrowErrno(errno, "pipe");
  pid_t child = fork();
  if (child < 0) ThrowErrno(errno, "fork");
  if (child == 0) {
    // Destination side, in its own process so its CPU time is its own.
    close(pipefd[0]);
    std::string msg;
    int rc = 0;
    try {
      DestinationOptions o;
      o.output = out;
      o.accept_timeout = std::chrono::seconds(60);
      if (tls) {
        o.security.tls_options.role = TlsRole::kServer;
        o.security.tls_options.creds = Credentials::Load(CredsDirFiles(dir + "/pki", TlsRole::kServer), TlsRole::kServer);
      } else {
        o.security.tls = false;
      }
      o.security.ktls = ParseKtlsMode(a.get("ktls", "auto"));
      o.security.zero_copy = ParseZeroCopyMode(a.get("zero-copy", "auto"));
      MigrationReport r = RunDestination(l, o);
      SideCpu cpu = SelfCpu();
      msg = ReportJson("destination", r, &cpu);
    } catch (const Error& e) {
      msg = std::string("ERROR ") + e.what();
      rc = ExitFor(e);
    }
    (void)!write(pipefd[1], msg.data(), msg.size());
    _exit(rc);
  }
  close(pipefd[1]);
  int rc = 0;
  std::string dest_out;
  MigrationReport r;
  SideCpu cpu{};
  try {
    std::unique_ptr<MappedImage> img = MappedImage::Anonymous(size);
    img->FillMixed(30, 7);
    std::unique_ptr<PageSource> src;
    if (a.flag("live")) {
      src = std::make_unique<LiveImage>(std::move(img), ParseSize(a.get("dirty-rate", "64M"), "--dirty-rate"));
    } else {
      src = std::move(img);
    }
    SourceOptions o;
    o.address = l.address();
    o.channels = std::stoi(a.get("channels", "4"));
    o.max_iterations = static_cast<uint32_t>(std::stoul(a.get("max-iterations", "30")));
    if (tls) {
      o.security.tls_options.role = TlsRole::kClient;
      o.security.tls_options.creds = Credentials::Load(CredsDirFiles(dir + "/pki", TlsRole::kClient), TlsRole::kClient);
      o.security.tls_options.peer_name = "localhost";
    } else {
      o.security.tls = false;
    }
    o.security.ktls = ParseKtlsMode(a.get("ktls", "auto"));
    o.security.zero_copy = ParseZeroCopyMode(a.get("zero-copy", "auto"));
    Progress progress;
    o.progress = &progress;
    SideCpu before = SelfCpu();
    {
      ProgressBar bar(progress, !a.flag("quiet"), "send");
      r = RunSource(*src, o);
    }
    SideCpu after = SelfCpu();
    cpu = {after.user - before.user, after.sys - before.sys};
  } catch (const Error& e) {
    std::fprintf(stderr, "tls-migrate demo: source failed: %s\n", e.what());
    rc = ExitFor(e);
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) dest_out.append(buf, n);
  close(pipefd[0]);
  int status = 0;
  rusage child_ru{};
  wait4(child, &status, 0, &child_ru);
  if (rc != 0) return rc;
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::fprintf(stderr, "tls-migrate demo: destination failed: %s\n", dest_out.c_str());
    return kExitFailed;
  }
  // Verify independently: hash the file that appeared under the final name.
  std::ifstream f(out, std::ios::binary);
  Sha256 h;
  std::vector<char> fb(1 << 20);
  uint64_t fsize = 0;
  while (f.read(fb.data(), fb.size()) || f.gcount() > 0) {
    h.Update(fb.data(), static_cast<size_t>(f.gcount()));
    fsize += static_cast<uint64_t>(f.gcount());
  }
  const std::string file_digest = Sha256::Hex(h.Final());
  const bool ok = fsize == r.image_size && file_digest == r.digest;

  std::printf("\n");
  PrintReport("source", r, &cpu);
  std::printf("destination (separate process): CPU %.2f s user + %.2f s sys\n",
              child_ru.ru_utime.tv_sec + child_ru.ru_utime.tv_usec / 1e6,
              child_ru.ru_stime.tv_sec + child_ru.ru_stime.tv_usec / 1e6);
  auto stat = ReadTlsStat();
  if (!stat.empty()) {
    std::printf("/proc/net/tls_stat: TlsTxSw %llu, TlsRxSw %llu, TlsDecryptError %llu\n",
                (unsigned long long)stat["TlsTxSw"], (unsigned long long)stat["TlsRxSw"],
                (unsigned long long)stat["TlsDecryptError"]);
  } else {
    std::printf("/proc/net/tls_stat: absent (this kernel has no TLS module; 'make demo-ktls' shows the kTLS path in a VM)\n");
  }
  std::printf("verification: %s (%s, SHA-256 of the received file %s the source's)\n", ok ? "OK" : "FAILED",
              Human(double(fsize)).c_str(), ok ? "equals" : "DIFFERS FROM");
  WriteJson(a, "{\"source\":" + ReportJson("source", r, &cpu) + ",\"destination\":" + dest_out +
                   ",\"verified\":" + (ok ? "true" : "false") + "}");
  unlink(out.c_str());
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
  const std::string cmd = argv[1];
  std::map<std::string, std::function<int(int, char**)>> cmds = {
      {"send", CmdSend}, {"recv", CmdRecv}, {"certs", CmdCerts}, {"probe", CmdProbe}, {"demo", CmdDemo}};
  auto it = cmds.find(cmd);
  if (it == cmds.end()) {
    std::fprintf(stderr, "tls-migrate: unknown command '%s'\n%s", cmd.c_str(), kMainHelp);
    return kExitUsage;
  }
  try {
    return it->second(argc, argv);
  } catch (const ktm::Error& e) {
    std::fprintf(stderr, "tls-migrate %s: %s\n", cmd.c_str(), e.what());
    return ExitFor(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tls-migrate %s: %s\n", cmd.c_str(), e.what());
    return kExitFailed;
  }
}

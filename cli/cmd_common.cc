#include "cli/cmd_common.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

#include "base/error.h"
#include "base/path.h"
#include "cli/report.h"
#include "tls/handshake.h"

namespace ktm::cli {

const char* const kSecurityHelp = R"(
Certificate flags (QEMU's layout: ca-cert.pem, [ca-crl.pem], server-cert.pem,
server-key.pem, client-cert.pem, client-key.pem):
  --tls-creds DIR       credentials directory ('tls-migrate certs generate' makes one)
  --tls-ca FILE         CA certificate (instead of --tls-creds)
  --tls-cert FILE       own certificate
  --tls-key FILE        own private key
  --tls-crl FILE        certificate revocation list
  --tls-hostname NAME   name the destination's certificate must hold (send;
                        default: the HOST of --connect)
  --tls-backend gnutls|openssl  TLS library for the handshake and userspace records
                        (default gnutls); peers may use different backends
  --tls-versions LIST   protocol versions, preferred first: 1.3,1.2 (the default), 1.3 or 1.2
  --tls-ciphers LIST    AEAD ciphers, preferred first (default aes-128-gcm,aes-256-gcm,
                        chacha20-poly1305; also aes-128-ccm)
  --tls-priority STR    backend-specific override of --tls-versions/--tls-ciphers: a
                        GnuTLS priority string, or with --tls-backend openssl
                        OpenSSL SSL_CONF commands ("MinProtocol=TLSv1.3,Ciphersuites=...")
  --tls-allow-client PATTERN  (where a TLS server runs: recv, tunnel --tls-listen;
                        repeatable) accept only client certificates whose RFC 4514
                        subject DN ("CN=host1,O=Example") or CN matches a shell glob;
                        others are refused (exit 3 at both ends)
  --rekey-after BYTES   change the TLS key after this many bytes per direction
                        (TLS 1.3 KeyUpdate; K, M, G suffixes); default: before
                        the cipher's limit (2^24 records for AES-GCM)
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

const char* const kRekeyAfterHelp = R"(  --rekey-after BYTES   change the TLS key after this many bytes per direction
                        (TLS 1.3 KeyUpdate; K, M, G suffixes); default: before
                        the cipher's limit (2^24 records for AES-GCM)
)";

const std::set<std::string> kSecValue = {"tls-creds", "tls-ca", "tls-cert", "tls-key", "tls-crl",
                                         "tls-hostname", "tls-priority", "ktls", "zero-copy", "json",
                                         "backend", "rekey-after", "tls-backend", "tls-versions",
                                         "tls-ciphers", "tls-allow-client"};
const std::set<std::string> kSecBool = {"no-verify-peer", "no-tls", "quiet", "help"};

std::set<std::string> Join(std::set<std::string> a, const std::set<std::string>& b) {
  a.insert(b.begin(), b.end());
  return a;
}

void ApplyTlsPolicyFlags(const Args& a, TlsRole role, TlsOptions& o) {
  if (a.has("tls-versions")) o.policy.versions = ParseTlsVersions(a.get("tls-versions"));
  if (a.has("tls-ciphers")) o.policy.ciphers = ParseTlsCiphers(a.get("tls-ciphers"));
  o.policy.library_override = a.get("tls-priority");
  if (a.has("tls-allow-client")) {
    // Only a server sees client certificates: on a client the flag would
    // silently allow every destination.
    if (role != TlsRole::kServer) {
      throw Error(ErrorKind::kUsage, EINVAL,
                  "--tls-allow-client applies where a TLS server runs (recv, tunnel --tls-listen): this side is "
                  "a TLS client; it checks the server by --tls-hostname");
    }
    for (const std::string& p : a.all("tls-allow-client")) {
      if (p.empty()) throw Error(ErrorKind::kUsage, EINVAL, "--tls-allow-client needs a non-empty pattern");
      o.allowed_clients.push_back(p);
    }
  }
  // Now, not at the first handshake: a recv would listen and refuse every source.
  CheckTlsPolicy(o.backend, o.policy);
}

std::string TlsLibraryLine(const SecurityConfig& s) {
  if (!s.tls) return "TLS: off (--no-tls)";
  const TlsOptions& o = s.tls_options;
  std::string line = std::string("TLS library: ") + TlsLibraryVersion(o.backend) + " (--tls-backend " +
                     ToString(o.backend) + "), policy " + ToString(o.policy);
  if (!o.allowed_clients.empty()) line += ", " + std::to_string(o.allowed_clients.size()) + " allow-list pattern(s)";
  return line;
}

nlohmann::json TlsJson(const SecurityConfig& s) {
  if (!s.tls) return nullptr;
  const TlsOptions& o = s.tls_options;
  return {{"backend", ToString(o.backend)},
          {"library", TlsLibraryVersion(o.backend)},
          {"policy", ToString(o.policy)},
          {"allowed_clients", o.allowed_clients}};
}

SecurityConfig BuildSecurity(const Args& a, TlsRole role, const std::string& peer_host) {
  SecurityConfig s;
  s.ktls = ParsePolicy(a.get("ktls", "auto"), "--ktls value");
  s.zero_copy = ParsePolicy(a.get("zero-copy", "auto"), "--zero-copy value");
  s.backend = ParseSendBackend(a.get("backend", "sendmsg"));
  const uint64_t rekey_after = ParseRekeyAfter(a);  // checked with --no-tls too
  s.tls_options.backend = ParseTlsBackend(a.get("tls-backend", "gnutls"));
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
  ApplyTlsPolicyFlags(a, role, s.tls_options);
  s.tls_options.rekey_after_bytes = rekey_after;
  if (a.flag("no-verify-peer")) {
    std::fprintf(stderr, "WARNING: --no-verify-peer: the peer is NOT authenticated; anyone on the path "
                         "can impersonate it.\n");
    s.tls_options.verify_peer = false;
  }
  return s;
}

uint64_t ParseRekeyAfter(const Args& a) {
  if (!a.has("rekey-after")) return 0;
  const uint64_t n = ParseSize(a.get("rekey-after"), "--rekey-after");
  // Below one full record every record would need its own key.
  if (n < kMinRekeyAfter) {
    throw Error(ErrorKind::kUsage, EINVAL,
                "bad --rekey-after '" + a.get("rekey-after") +
                    "': at least 16K (one TLS record); leave it out for the cipher's limit");
  }
  return n;
}

std::string HostOf(const std::string& addr) {
  if (!addr.empty() && addr[0] == '[') return addr.substr(1, addr.find(']') - 1);
  return addr.substr(0, addr.rfind(':'));
}

ProgressBar::ProgressBar(Progress& p, bool enabled, const char* verb) : p_(p) {
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

ProgressBar::~ProgressBar() {
  stop_ = true;
  if (t_.joinable()) t_.join();
  if (drawn_) std::fprintf(stderr, "\n");
}

void WriteJson(const Args& a, const nlohmann::json& j) {
  if (a.has("json")) WriteJsonFile(a.get("json"), j);
}

std::chrono::milliseconds IoTimeout(const Args& a) {
  const uint64_t secs = a.number("io-timeout", 30, 0, 86400);
  return secs == 0 ? std::chrono::milliseconds(-1) : std::chrono::milliseconds(secs * 1000);
}

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

}  // namespace ktm::cli

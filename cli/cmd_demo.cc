// tls-migrate demo: a whole migration on loopback with generated
// certificates, verified and explained.
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

#include "base/error.h"
#include "certs/generate.h"
#include "cli/args.h"
#include "cli/cmd_common.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"
#include "cli/loopback.h"
#include "cli/report.h"
#include "ktls/ktls.h"
#include "tls/handshake.h"
#include "transport/migration.h"
#include "util/image_digest.h"

namespace ktm::cli {
namespace {

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
  --tls-backend gnutls|openssl  TLS library of both sides (default gnutls)
  --ktls MODE, --zero-copy MODE, --json FILE
)";

// The loopback run the flags ask for, writing into `dir` (certificates too).
LoopbackConfig MakeDemoConfig(const Args& a, const std::string& dir) {
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
  cfg.rekey_after = ParseRekeyAfter(a);
  cfg.tls_backend = ParseTlsBackend(a.get("tls-backend", "gnutls"));
  // Refused now (exit 2), not by the child after the certificates exist.
  if (cfg.tls) CheckTlsPolicy(cfg.tls_backend, TlsCryptoPolicy{});
  cfg.output = dir + "/received.img";
  if (cfg.tls) {
    GenerateOptions g;
    g.out_dir = dir + "/pki";
    g.hostname = "localhost";
    g.ips = {"127.0.0.1"};
    GenerateCredsDir(g);
    cfg.pki_dir = g.out_dir;
  }
  return cfg;
}

void PrintTlsStat() {
  auto stat = ReadTlsStat();
  if (!stat.empty()) {
    std::printf("/proc/net/tls_stat: TlsTxSw %llu, TlsRxSw %llu, TlsDecryptError %llu\n",
                (unsigned long long)stat["TlsTxSw"], (unsigned long long)stat["TlsRxSw"],
                (unsigned long long)stat["TlsDecryptError"]);
  } else {
    std::printf("/proc/net/tls_stat: absent (this kernel has no TLS module; 'make demo-ktls' shows the kTLS path in a VM)\n");
  }
}

// Verifies the run independently (digests the file that appeared under the
// final name), prints both sides and the verdict, writes --json and removes
// the output. Returns the exit code.
int ReportDemo(const Args& a, const LoopbackConfig& cfg, const LoopbackResult& res) {
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
  std::printf("%s\n", cfg.tls ? (std::string("TLS library: ") + TlsLibraryVersion(cfg.tls_backend) +
                                  " on both sides (--tls-backend " + ToString(cfg.tls_backend) + ")")
                                     .c_str()
                               : "TLS: off (--no-tls)");
  PrintTlsStat();
  std::printf("verification: %s (%s, image digest of the received file %s the source's)\n", ok ? "OK" : "FAILED",
              Human(double(fsize)).c_str(), ok ? "equals" : "DIFFERS FROM");
  WriteJson(a, {{"source", ReportJson("source", r, &res.source_cpu)},
               {"destination", res.destination},
               {"tls_backend", cfg.tls ? nlohmann::json(ToString(cfg.tls_backend)) : nlohmann::json(nullptr)},
               {"tls_library", cfg.tls ? nlohmann::json(TlsLibraryVersion(cfg.tls_backend)) : nlohmann::json(nullptr)},
               {"verified", ok}});
  unlink(cfg.output.c_str());
  return ok ? 0 : kExitIntegrity;
}

}  // namespace

int CmdDemo(int argc, char** argv) {
  Args a(argc, argv, 2,
         {"size", "channels", "dirty-rate", "ktls", "zero-copy", "json", "max-iterations", "max-downtime", "digest",
          "backend", "rekey-after", "tls-backend"},
         {"live", "no-tls", "help", "quiet", "register-buffers"});
  if (a.flag("help")) {
    std::printf("%s%s", kDemoHelp, kRekeyAfterHelp);
    return 0;
  }
  char tmpl[] = "/tmp/tls-migrate-demo-XXXXXX";
  if (!mkdtemp(tmpl)) ThrowErrno(ErrorKind::kLocalIo, errno, "mkdtemp");
  const LoopbackConfig cfg = MakeDemoConfig(a, tmpl);
  std::printf("tls-migrate demo: %s image (30%% zero pages), %d channels, %s, on loopback\n",
              Human(double(cfg.size)).c_str(), cfg.channels,
              (cfg.tls ? "TLS with certificates generated in " + cfg.pki_dir : std::string("PLAINTEXT")).c_str());
  LoopbackResult res;
  try {
    res = RunOnLoopback(cfg);
  } catch (const Error& e) {
    return ReportError("demo", e);
  }
  return ReportDemo(a, cfg, res);
}

}  // namespace ktm::cli

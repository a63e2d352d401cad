// tls-migrate bench: every mode, same data, one run, numbers and ratios.

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "base/error.h"
#include "base/parse.h"
#include "certs/generate.h"
#include "cli/args.h"
#include "cli/bench_sections.h"
#include "cli/cmd_common.h"
#include "cli/commands.h"
#include "cli/loopback.h"
#include "cli/per_page_channel.h"
#include "cli/process.h"
#include "ktls/ktls.h"
#include "tls/handshake.h"

namespace ktm::cli {
namespace {

const char* kBenchHelp = R"(Usage: tls-migrate bench [options]

Runs the same migration (destination in a child process, image kept in memory
at the destination, pages random so every byte crosses) in every mode, one
after the other in this process, and prints per mode: page-data throughput
(first page to final barrier; handshakes, digests and commit excluded), CPU
seconds per GiB on each side (getrusage), zero-copy completion counts, and
ratios to plaintext copy and to the QEMU-style anchor (userspace GnuTLS, one
record and one send per 4 KiB page: how QEMU encrypts migration today).
Also runs iperf3 on loopback (if installed) for reference.

  --size N              image size (default 1G)
  --channels LIST       channel counts (default 1,4)
  --modes LIST          subset of: plain-copy, msg-zerocopy, uring, uring-fixed,
                        tls-userspace, tls-qemu-style, ktls, tls-userspace-openssl,
                        ktls-openssl (default all; the last two always run OpenSSL,
                        beside the --tls-backend rows)
  --rss-size N          also migrate N bytes in plain-copy mode and report peak RSS
                        of each side against image + 64 MiB (default 0 = skip)
  --output-dir DIR      where the file-destination rows, the socat comparison and
                        the file downtime case write (default: the current
                        directory's filesystem, in a temporary subdirectory)
  --sections LIST       extra sections: floor, file, socat, downtime (default all;
                        'none' for the mode table only)
  --downtime-size N     image of the downtime section (default 4G)
  --runs K              runs of every mode, socat and downtime case; the median
                        is printed (default 3)

Besides the mode table: the hardware floor measured in the same run (AES-128-GCM
encrypt/decrypt per GiB through GnuTLS's AEAD API, memcpy per GiB, and the
plaintext rows' transfer-phase CPU), each TLS row's transfer-phase CPU per GiB
as a ratio to that floor; rows with a real file destination (durable commit);
a durable file migration against socat OpenSSL + sync; and the switch-over
downtime of live migrations (freeze -> DONE, split), also into a file at a
quarter of --downtime-size and at the full size, with the destination's
writeback bound and without it (and the bound's cost in transfer time).
  --tls-backend gnutls|openssl  TLS library of the TLS rows, both sides (default
                        gnutls); the floor section measures GnuTLS's AEAD either way
  --json FILE           results as JSON
  --png FILE            bar chart (gnuplot)
)";

struct Mode {
  const char* name;
  const char* label;
  void (*apply)(LoopbackConfig&);
};

const Mode kModes[] = {
    {"plain-copy", "plaintext, copy", [](LoopbackConfig& c) { c.tls = false, c.zero_copy = ZeroCopyMode::kOff; }},
    {"msg-zerocopy", "plaintext, MSG_ZEROCOPY", [](LoopbackConfig& c) { c.tls = false; }},
    {"uring", "plaintext, io_uring SEND_ZC",
     [](LoopbackConfig& c) { c.tls = false, c.backend = SendBackend::kIoUring; }},
    {"uring-fixed", "plaintext, io_uring SEND_ZC + registered buffers",
     [](LoopbackConfig& c) { c.tls = false, c.backend = SendBackend::kIoUring, c.register_buffers = true; }},
    {"tls-userspace", "TLS, GnuTLS over the fd (userspace)", [](LoopbackConfig& c) { c.ktls = KtlsMode::kOff; }},
    {"tls-qemu-style", "TLS, QEMU-style anchor (one record per page)",
     [](LoopbackConfig& c) {
       c.ktls = KtlsMode::kOff;
       c.wrap_source_channel = [](std::unique_ptr<Channel> ch) -> std::unique_ptr<Channel> {
         return std::make_unique<PerPageChannel>(std::move(ch));
       };
     }},
    {"ktls", "TLS, kTLS (kernel encrypts)", [](LoopbackConfig& c) { c.ktls = KtlsMode::kRequire; }},
    // The second backend beside the default one, in the same run: these
    // rows name OpenSSL whatever --tls-backend says.
    {"tls-userspace-openssl", "TLS, OpenSSL over the fd (userspace)",
     [](LoopbackConfig& c) { c.ktls = KtlsMode::kOff, c.tls_backend = TlsBackend::kOpenssl; }},
    {"ktls-openssl", "TLS, kTLS with OpenSSL (kTLS enabled by OpenSSL)",
     [](LoopbackConfig& c) { c.ktls = KtlsMode::kRequire, c.tls_backend = TlsBackend::kOpenssl; }},
};

struct Row {
  std::string mode, label;
  int channels = 0;
  bool ran = false;
  std::string why_not;
  double gbps = 0, src_cpu_per_gib = 0, dst_cpu_per_gib = 0, seconds = 0;
  // CPU per GiB of the transfer phase alone (no setup, digest, commit).
  double src_xfer_cpu_per_gib = 0, dst_xfer_cpu_per_gib = 0;
  double wall_seconds = 0, commit_seconds = 0;  // file rows: to DONE, and the destination's commit
  bool to_file = false;
  int samples = 1;  // runs behind this row (it is the median one)
  uint64_t zc_sends = 0, zc_zero_copied = 0, zc_copied = 0, fixed = 0;
  std::string path;
};

// iperf3 single stream on loopback, Gbit/s (0 if unavailable).
double Iperf3Gbps(std::string* note) {
  if (!ProgramInPath("iperf3")) {
    *note = "iperf3 not installed";
    return 0;
  }
  const int port_num = 5201 + (getpid() % 1000);
  const std::string port = std::to_string(port_num);
  Program server = Program::Start({"iperf3", "-s", "-1", "-p", port});
  // Wait for the event (the port in LISTEN state), not for a guessed time.
  // Not by connecting: `-1` serves exactly one client.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  bool up = false;
  while (!(up = TcpPortListening(port_num)) && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (!up) {
    *note = "iperf3 server did not start";
    return 0;
  }
  std::string out;
  Program::Start({"iperf3", "-c", "127.0.0.1", "-p", port, "-t", "3", "-J"}).Wait(&out);
  server.Wait();
  const nlohmann::json j = nlohmann::json::parse(out, nullptr, false);
  const nlohmann::json::json_pointer bps("/end/sum_received/bits_per_second");
  if (j.is_discarded() || !j.contains(bps) || !j.at(bps).is_number()) {
    *note = "iperf3 gave no result";
    return 0;
  }
  return j.at(bps).get<double>() / 1e9;
}

std::string MachineLine() {
  utsname u{};
  uname(&u);
  std::string cpu = "?";
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) == 0) {
      cpu = line.substr(line.find(':') + 2);
      break;
    }
  }
  return std::string(u.release) + ", " + std::to_string(std::thread::hardware_concurrency()) + " CPUs (" + cpu + ")";
}

struct BenchPlan {
  uint64_t size = 0;
  std::vector<int> channels;
  std::string modes;  // ",a,b,"
  std::string pki_dir;
  std::string output_dir;
  std::string sections;  // ",floor,file,socat,downtime,"
  std::optional<std::string> no_ktls;
  uint64_t rekey_after = 0;  // --rekey-after (TLS rows)
  TlsBackend tls_backend = TlsBackend::kGnutls;  // --tls-backend (TLS rows)
  bool section(const char* name) const { return sections.find(std::string(",") + name + ",") != std::string::npos; }
  bool wants(const Mode& m) const { return modes.find(std::string(",") + m.name + ",") != std::string::npos; }
};

double PhaseCpu(const std::vector<PhaseTime>& phases, const std::string& name) {
  for (const auto& p : phases) {
    if (p.name == name) return p.cpu_user_seconds + p.cpu_sys_seconds;
  }
  return 0;
}

// One field ("wall_s", "cpu_user_s", ...) of a phase in a JSON report (the
// destination's, from the child process); 0 if absent.
double PhaseField(const nlohmann::json& report, const std::string& name, const char* field) {
  for (const auto& p : report.value("phases", nlohmann::json::array())) {
    if (p.value("name", "") == name) return p.value(field, 0.0);
  }
  return 0;
}

Row RunMode(const BenchPlan& plan, const Mode& m, int nch, bool to_file = false) {
  Row row;
  row.mode = m.name;
  row.label = std::string(m.label) + (to_file ? " -> file" : "");
  // The labels name the default library; a run with another says so.
  if (const size_t at = row.label.find("GnuTLS"); at != std::string::npos) {
    row.label.replace(at, 6, LibraryName(plan.tls_backend));
  }
  row.channels = nch;
  row.to_file = to_file;
  if (std::string(m.name).rfind("ktls", 0) == 0 && plan.no_ktls) {
    row.why_not = *plan.no_ktls;
    return row;
  }
  LoopbackConfig cfg;
  cfg.size = plan.size;
  cfg.zero_percent = 0;
  cfg.channels = nch;
  cfg.pki_dir = plan.pki_dir;
  cfg.rekey_after = plan.rekey_after;
  cfg.tls_backend = plan.tls_backend;
  m.apply(cfg);
  if (to_file) cfg.output = plan.output_dir + "/bench-" + m.name + ".img";
  try {
    LoopbackResult r = RunOnLoopback(cfg);
    if (to_file) unlink(cfg.output.c_str());
    if (!r.verified) throw Error(ErrorKind::kIntegrity, EBADMSG, "destination digest differs");
    const double gib = double(r.source.data_bytes) / (1u << 30);
    row.ran = true;
    row.seconds = r.source.transfer_seconds;
    row.gbps = r.source.data_bytes / r.source.transfer_seconds / 1e9;
    row.src_cpu_per_gib = r.source_cpu.total() / gib;
    row.dst_cpu_per_gib = r.destination_cpu.total() / gib;
    row.src_xfer_cpu_per_gib = PhaseCpu(r.source.phases, "transfer") / gib;
    row.dst_xfer_cpu_per_gib =
        (PhaseField(r.destination, "transfer", "cpu_user_s") + PhaseField(r.destination, "transfer", "cpu_sys_s")) / gib;
    row.wall_seconds = r.wall_seconds;
    row.commit_seconds = PhaseField(r.destination, "commit", "wall_s");
    for (const auto& c : r.source.channels) {
      row.zc_sends += c.stats.zc.sends;
      row.zc_zero_copied += c.stats.zc.zero_copied;
      row.zc_copied += c.stats.zc.copied;
      row.fixed += c.stats.fixed_sends;
    }
    row.path = r.source.channels.empty() ? "" : r.source.channels[0].path;
  } catch (const Error& e) {
    row.why_not = e.what();
  }
  return row;
}

const Row* FindRow(const std::vector<Row>& rows, const std::string& mode, int nch, bool to_file = false) {
  for (const auto& r : rows) {
    if (r.mode == mode && r.channels == nch && r.ran && r.to_file == to_file) return &r;
  }
  return nullptr;
}

void PrintTable(const std::vector<Row>& rows) {
  std::printf("\n%-56s %3s %6s %9s %9s %9s %9s %7s %7s %22s\n", "mode", "ch", "GB/s", "src s/GiB", "dst s/GiB",
              "src xfer", "dst xfer", "x plain", "x QEMU", "zc sends (zc/copied)");
  for (const auto& r : rows) {
    if (!r.ran) {
      std::printf("%-56s %3d   n/a: %s\n", r.label.c_str(), r.channels, r.why_not.c_str());
      continue;
    }
    const Row* plain = FindRow(rows, "plain-copy", r.channels, r.to_file);
    const Row* anchor = FindRow(rows, "tls-qemu-style", r.channels);
    char zc[64] = "-";
    if (r.zc_sends) {
      std::snprintf(zc, sizeof(zc), "%llu (%llu/%llu)", (unsigned long long)r.zc_sends,
                    (unsigned long long)r.zc_zero_copied, (unsigned long long)r.zc_copied);
    }
    std::printf("%-56s %3d %6.2f %9.3f %9.3f %9.3f %9.3f %7.2f %7.2f %22s\n", r.label.c_str(), r.channels, r.gbps,
                r.src_cpu_per_gib, r.dst_cpu_per_gib, r.src_xfer_cpu_per_gib, r.dst_xfer_cpu_per_gib,
                plain ? r.gbps / plain->gbps : 0.0, anchor ? r.gbps / anchor->gbps : 0.0, zc);
  }
}

// Transfer-phase CPU per GiB of each TLS row against the floor: the
// plaintext row's transfer CPU (loopback TCP, same channel count) plus
// AES-GCM encryption (source) or decryption (destination).
nlohmann::json PrintFloor(const BenchPlan& plan, const std::vector<Row>& rows, const Floor& f) {
  std::printf("\nFloor (measured now, one thread): AES-128-GCM encrypt %.3f, decrypt %.3f, memcpy %.3f, SHA-256 %.3f "
              "CPU-s/GiB\n",
              f.aes_gcm_encrypt, f.aes_gcm_decrypt, f.memcpy, f.sha256_tree);
  nlohmann::json out = nlohmann::json::array();
  for (int nch : plan.channels) {
    const Row* plain = FindRow(rows, "plain-copy", nch);
    if (!plain) continue;
    std::printf("  %d ch: plaintext loopback transfer phase: src %.3f, dst %.3f CPU-s/GiB\n", nch,
                plain->src_xfer_cpu_per_gib, plain->dst_xfer_cpu_per_gib);
    for (const char* mode : {"tls-userspace", "tls-userspace-openssl", "tls-qemu-style", "ktls", "ktls-openssl"}) {
      const Row* r = FindRow(rows, mode, nch);
      if (!r) continue;
      const double src_floor = plain->src_xfer_cpu_per_gib + f.aes_gcm_encrypt;
      const double dst_floor = plain->dst_xfer_cpu_per_gib + f.aes_gcm_decrypt;
      const double rs = r->src_xfer_cpu_per_gib / src_floor, rd = r->dst_xfer_cpu_per_gib / dst_floor;
      std::printf("  %d ch: %-15s transfer CPU src %.3f (%.2fx floor %.3f), dst %.3f (%.2fx floor %.3f)", nch, mode,
                  r->src_xfer_cpu_per_gib, rs, src_floor, r->dst_xfer_cpu_per_gib, rd, dst_floor);
      if (std::string(mode) == "tls-userspace") {
        std::printf("  target <= 1.5x each side: %s", rs <= 1.5 && rd <= 1.5 ? "met" : "NOT met");
      }
      std::printf("\n");
      out.push_back({{"mode", mode}, {"channels", nch}, {"src_ratio", rs}, {"dst_ratio", rd},
                     {"src_floor", src_floor}, {"dst_floor", dst_floor}});
    }
  }
  return out;
}

// The targets of the design, checked in this run.
void PrintTargets(const BenchPlan& plan, const std::vector<Row>& rows, double iperf) {
  std::printf("\nTargets (this run):\n");
  for (int nch : plan.channels) {
    const Row *us = FindRow(rows, "tls-userspace", nch), *anchor = FindRow(rows, "tls-qemu-style", nch),
              *plain = FindRow(rows, "plain-copy", nch), *k = FindRow(rows, "ktls", nch);
    if (us && anchor) {
      const double want = nch == 1 ? 2.0 : 1.6;
      std::printf("  %d ch: userspace TLS / QEMU-style anchor = %.2fx (target >= %.1fx): %s\n", nch,
                  us->gbps / anchor->gbps, want, us->gbps / anchor->gbps >= want ? "met" : "NOT met");
    }
    if (const Row* file = FindRow(rows, "tls-userspace", nch, true); file && us) {
      std::printf("  %d ch: userspace TLS into a file / in memory = %.2fx of the throughput (target >= 1/1.3 = "
                  "0.77x): %s (file row: %.2f s to DONE, commit %.3f s)\n",
                  nch, file->gbps / us->gbps, file->gbps / us->gbps >= 1 / 1.3 ? "met" : "NOT met",
                  file->wall_seconds, file->commit_seconds);
    }
    if (plain && iperf > 0 && nch == 1) {
      std::printf("  1 ch: plaintext / iperf3 = %.2fx (target >= 0.9x): %s\n", plain->gbps / (iperf / 8),
                  plain->gbps / (iperf / 8) >= 0.9 ? "met" : "NOT met");
    }
    if (const Row* ossl = FindRow(rows, "tls-userspace-openssl", nch); ossl && us) {
      std::printf("  %d ch: userspace TLS, OpenSSL / %s = %.2fx of the throughput, %.2fx of the source's "
                  "transfer CPU per GiB (no target: which library to pick)\n",
                  nch, LibraryName(plan.tls_backend), ossl->gbps / us->gbps,
                  ossl->src_xfer_cpu_per_gib / us->src_xfer_cpu_per_gib);
    }
    if (const Row* kossl = FindRow(rows, "ktls-openssl", nch); kossl && k) {
      std::printf("  %d ch: kTLS, OpenSSL-enabled / our key install = %.2fx (the same kernel encrypts both)\n", nch,
                  kossl->gbps / k->gbps);
    }
    if (k && us) {
      std::printf("  %d ch: kTLS / userspace TLS = %.2fx (target >= 1x): %s\n", nch, k->gbps / us->gbps,
                  k->gbps >= us->gbps ? "met" : "NOT met");
    } else if (!k) {
      std::printf("  %d ch: kTLS: not measurable here (%s)\n", nch, plan.no_ktls ? plan.no_ktls->c_str() : "failed");
    }
  }
}

// Peak RSS of each side migrating `size` bytes, against image + 64 MiB.
nlohmann::json MeasureRss(uint64_t size) {
  LoopbackConfig cfg;
  cfg.size = size;
  cfg.zero_percent = 0;
  cfg.channels = 4;
  cfg.tls = false;
  cfg.zero_copy = ZeroCopyMode::kOff;
  LoopbackResult r = RunOnLoopback(cfg);
  const long image_kb = static_cast<long>(cfg.size / 1024), limit = image_kb + 64 * 1024;
  std::printf("\nPeak RSS migrating %s (4 channels): source %s, destination %s; limit image + 64 MiB = %s: %s\n",
              Human(double(cfg.size)).c_str(), Human(r.source_peak_rss_kb * 1024.0).c_str(),
              Human(r.destination_peak_rss_kb * 1024.0).c_str(), Human(limit * 1024.0).c_str(),
              r.source_peak_rss_kb <= limit && r.destination_peak_rss_kb <= limit ? "within" : "EXCEEDED");
  return {{"image_kb", image_kb},
          {"source_peak_kb", r.source_peak_rss_kb},
          {"destination_peak_kb", r.destination_peak_rss_kb}};
}

nlohmann::json ResultsJson(const BenchPlan& plan, const std::vector<Row>& rows, double iperf) {
  nlohmann::json results = nlohmann::json::array();
  for (const auto& r : rows) {
    nlohmann::json j = {{"mode", r.mode}, {"channels", r.channels}, {"ran", r.ran}};
    if (r.ran) {
      j.update({{"to_file", r.to_file},
                {"runs", r.samples},
                {"src_transfer_cpu_s_per_gib", r.src_xfer_cpu_per_gib},
                {"dst_transfer_cpu_s_per_gib", r.dst_xfer_cpu_per_gib},
                {"wall_seconds", r.wall_seconds},
                {"commit_seconds", r.commit_seconds},
                {"gbytes_per_s", r.gbps},
                {"transfer_seconds", r.seconds},
                {"src_cpu_s_per_gib", r.src_cpu_per_gib},
                {"dst_cpu_s_per_gib", r.dst_cpu_per_gib},
                {"zc_sends", r.zc_sends},
                {"zc_zero_copied", r.zc_zero_copied},
                {"zc_copied", r.zc_copied},
                {"fixed_sends", r.fixed},
                {"path", r.path}});
    } else {
      j["why_not"] = r.why_not;
    }
    results.push_back(std::move(j));
  }
  return {{"machine", MachineLine()}, {"image_bytes", plan.size}, {"iperf3_gbit", iperf}, {"results", results}};
}

// A clustered bar chart with gnuplot (data inline, script on its stdin).
void WritePng(const BenchPlan& plan, const std::vector<Row>& rows, const std::string& png) {
  if (!ProgramInPath("gnuplot")) {
    std::fprintf(stderr, "tls-migrate bench: no chart: gnuplot is not installed (apt-get install gnuplot-nox)\n");
    return;
  }
  std::string script = "set terminal png size 1000,500\nset output '" + png +
                       "'\nset style data histograms\nset style histogram clustered\nset style fill solid "
                       "border -1\nset ylabel 'GB/s of page data'\nset title 'tls-migrate bench: " +
                       Human(double(plan.size)) + " on loopback'\nset xtics rotate by -25\nset key top right\n";
  std::string data = "mode";
  for (int nch : plan.channels) data += " \"" + std::to_string(nch) + " channel" + (nch > 1 ? "s" : "") + "\"";
  data += "\n";
  for (const Mode& m : kModes) {
    if (!plan.wants(m)) continue;
    data += std::string("\"") + m.name + "\"";
    for (int nch : plan.channels) {
      const Row* r = FindRow(rows, m.name, nch);
      data += " " + std::to_string(r ? r->gbps : 0.0);
    }
    data += "\n";
  }
  script += "plot";
  for (size_t c = 0; c < plan.channels.size(); ++c) {
    script += std::string(c ? "," : "") + " '-' using 2:xtic(1) title columnheader(" + std::to_string(c + 2) + ")";
  }
  script += "\n";
  for (size_t c = 0; c < plan.channels.size(); ++c) script += data + "e\n";
  std::string out;
  if (Program::Start({"gnuplot"}, script).Wait(&out) != 0) {
    std::fprintf(stderr, "tls-migrate bench: gnuplot failed: %s\n", out.c_str());
  } else {
    std::printf("chart: %s\n", png.c_str());
  }
}

struct RemoveDir {
  std::string path;
  ~RemoveDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
};

// --channels LIST: "1,4" -> {1, 4}.
std::vector<int> ParseChannelList(const std::string& list) {
  std::vector<int> out;
  std::stringstream ss(list);
  std::string t;
  while (std::getline(ss, t, ',')) {
    std::optional<uint64_t> n = ParseUnsigned(t, 1, 64);
    if (!n) throw Error(ErrorKind::kUsage, EINVAL, "bad --channels '" + list + "': expected e.g. 1,4");
    out.push_back(static_cast<int>(*n));
  }
  return out;
}

// Every --sections entry must be known (Error(kUsage) otherwise).
void CheckSections(const std::string& list) {
  std::stringstream ss(list);
  std::string t;
  while (std::getline(ss, t, ',')) {
    if (t != "floor" && t != "file" && t != "socat" && t != "downtime" && t != "none") {
      throw Error(ErrorKind::kUsage, EINVAL, "unknown --sections entry '" + t + "': use floor, file, socat, downtime or none");
    }
  }
}

// The credentials and the file destination directory of the run, removed
// (with everything in them) when it ends.
struct BenchDirs {
  RemoveDir pki_cleanup;
  RemoveDir out_cleanup;
};

// Creates the credentials (in a temporary directory) and the directory the
// file destinations write into, and records both in `plan` and `sections`.
std::unique_ptr<BenchDirs> MakeBenchDirs(const Args& a, BenchPlan& plan, SectionPlan& sections) {
  char tmpl[] = "/tmp/tls-migrate-bench-XXXXXX";
  if (!mkdtemp(tmpl)) ThrowErrno(ErrorKind::kLocalIo, errno, "mkdtemp");
  auto dirs = std::make_unique<BenchDirs>();
  dirs->pki_cleanup.path = tmpl;
  GenerateOptions g;
  g.out_dir = std::string(tmpl) + "/pki";
  g.hostname = "localhost";
  GenerateCredsDir(g);
  plan.pki_dir = g.out_dir;
  // File destinations on a real filesystem (by default the one the bench
  // runs in, i.e. the checkout's), never tmpfs unless asked.
  std::string out_tmpl = (a.has("output-dir") ? a.get("output-dir") : std::string(".")) + "/tls-migrate-bench-XXXXXX";
  if (!mkdtemp(out_tmpl.data())) {
    ThrowErrno(ErrorKind::kLocalIo, errno, "cannot create a directory in " + a.get("output-dir", ".") + " (--output-dir)");
  }
  dirs->out_cleanup.path = out_tmpl;
  plan.output_dir = out_tmpl;
  sections.pki_dir = plan.pki_dir;
  sections.output_dir = plan.output_dir;
  return dirs;
}

// Runs every wanted mode (and, with the file section, the file rows)
// `runs` times and returns per slot the run with the median throughput.
// Rounds: every mode once per round, so a slow spell of the machine hits
// all modes alike.
std::vector<Row> RunModes(const BenchPlan& plan, int runs) {
  struct Slot {
    const Mode* mode;
    int nch;
    bool to_file;
    std::vector<Row> runs;
  };
  std::vector<Slot> slots;
  for (int nch : plan.channels) {
    for (const Mode& m : kModes) {
      if (plan.wants(m)) slots.push_back({&m, nch, false, {}});
    }
  }
  if (plan.section("file")) {
    for (int nch : plan.channels) {
      for (const Mode& m : kModes) {
        const std::string name = m.name;
        if (plan.wants(m) && (name == "plain-copy" || name == "tls-userspace")) slots.push_back({&m, nch, true, {}});
      }
    }
  }
  for (int round = 0; round < runs; ++round) {
    for (Slot& slot : slots) {
      if (round > 0 && !slot.runs.back().ran) continue;  // it said why once
      slot.runs.push_back(RunMode(plan, *slot.mode, slot.nch, slot.to_file));
      const Row& row = slot.runs.back();
      std::fprintf(stderr, "  run %d: %-15s %d ch%s: %s\n", round + 1, slot.mode->name, slot.nch,
                   slot.to_file ? " -> file" : "",
                   row.ran ? (std::to_string(row.gbps).substr(0, 5) + " GB/s").c_str() : row.why_not.c_str());
    }
  }
  std::vector<Row> rows;
  for (Slot& slot : slots) {
    std::vector<Row>& r = slot.runs;
    std::sort(r.begin(), r.end(), [](const Row& a, const Row& b) { return a.gbps < b.gbps; });
    rows.push_back(r[r.size() / 2]);
    rows.back().samples = static_cast<int>(r.size());
  }
  return rows;
}

// The sections after the mode table (floor, socat, downtime, RSS), each
// printed and added to `j`.
void RunSections(const Args& a, const BenchPlan& plan, const SectionPlan& sections, const std::vector<Row>& rows,
                 nlohmann::json& j) {
  Floor floor;
  if (plan.section("floor") || plan.section("downtime")) {
    floor = MeasureFloor();
    j["floor"] = {{"aes_gcm_encrypt_s_per_gib", floor.aes_gcm_encrypt},
                  {"aes_gcm_decrypt_s_per_gib", floor.aes_gcm_decrypt},
                  {"memcpy_s_per_gib", floor.memcpy},
                  {"sha256_s_per_gib", floor.sha256_tree}};
  }
  if (plan.section("floor")) j["floor_ratios"] = PrintFloor(plan, rows, floor);
  if (plan.section("socat")) j["file_vs_socat"] = FileVsSocat(sections);
  if (plan.section("downtime")) j["downtime"] = Downtime(sections, floor);
  if (a.has("rss-size") && ParseSize(a.get("rss-size"), "--rss-size") > 0) {
    j["rss"] = MeasureRss(ParseSize(a.get("rss-size"), "--rss-size"));
  }
}

}  // namespace

int CmdBench(int argc, char** argv) {
  Args a(argc, argv, 2,
         {"size", "channels", "modes", "json", "png", "rss-size", "output-dir", "sections", "downtime-size", "runs",
          "rekey-after", "tls-backend"},
         {"help"});
  if (a.flag("help")) {
    std::printf("%s%s", kBenchHelp, kRekeyAfterHelp);
    return 0;
  }
  BenchPlan plan;
  plan.size = ParseSize(a.get("size", "1G"), "--size");
  plan.rekey_after = ParseRekeyAfter(a);
  plan.tls_backend = ParseTlsBackend(a.get("tls-backend", "gnutls"));
  CheckTlsPolicy(plan.tls_backend, TlsCryptoPolicy{});  // exit 2 now, not a row of failures
  plan.channels = ParseChannelList(a.get("channels", "1,4"));
  plan.modes = "," + a.get("modes", "plain-copy,msg-zerocopy,uring,uring-fixed,tls-userspace,tls-qemu-style,ktls,"
                                "tls-userspace-openssl,ktls-openssl") + ",";
  plan.sections = "," + a.get("sections", "floor,file,socat,downtime") + ",";
  CheckSections(a.get("sections", "floor"));
  SectionPlan sections;
  sections.downtime_size = ParseSize(a.get("downtime-size", "4G"), "--downtime-size");
  sections.runs = static_cast<int>(a.number("runs", 3, 1, 100));
  sections.file_size = plan.size;
  if (a.has("json") && a.get("json") != "-") WriteJsonFile(a.get("json"), nlohmann::json::object());  // writable?
  const std::unique_ptr<BenchDirs> dirs = MakeBenchDirs(a, plan, sections);
  plan.no_ktls = ProbeKtlsUlp();

  std::printf("tls-migrate bench: %s image of random pages, on %s\n", Human(double(plan.size)).c_str(),
              MachineLine().c_str());
  std::printf("TLS rows: %s on both sides (--tls-backend %s)\n", TlsLibraryVersion(plan.tls_backend).c_str(),
              ToString(plan.tls_backend));
  std::string iperf_note;
  const double iperf = Iperf3Gbps(&iperf_note);
  if (iperf > 0) std::printf("iperf3 single stream on loopback: %.2f Gbit/s = %.2f GB/s\n", iperf, iperf / 8);
  else std::printf("iperf3: %s\n", iperf_note.c_str());

  const std::vector<Row> rows = RunModes(plan, sections.runs);
  std::printf("\nEach row: the median-throughput run of %d (rounds over all modes). src/dst s/GiB: the whole side's "
              "CPU per GiB; xfer: the transfer phase's only.\n",
              sections.runs);
  PrintTable(rows);
  PrintTargets(plan, rows, iperf);
  nlohmann::json j = ResultsJson(plan, rows, iperf);
  j["tls_backend"] = ToString(plan.tls_backend);
  j["tls_library"] = TlsLibraryVersion(plan.tls_backend);
  RunSections(a, plan, sections, rows, j);
  if (a.has("json")) WriteJsonFile(a.get("json"), j);
  if (a.has("png")) WritePng(plan, rows, a.get("png"));
  return 0;
}

}  // namespace ktm::cli

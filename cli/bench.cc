// tls-migrate bench: every mode, same data, one run, numbers and ratios.
#include "cli/bench.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <thread>

#include "certs/generate.h"
#include "channel/error.h"
#include "cli/args.h"
#include "cli/loopback.h"
#include "ktls/ktls.h"

namespace ktm::cli {
namespace {

const char* kBenchHelp = R"(Usage: tls-migrate bench [options]

Runs the same migration (destination in a child process, image kept in memory
at the destination, pages random so every byte crosses) in every mode, one
after the other in this process, and prints per mode: page-data throughput
(first page to final barrier; handshakes, digests and commit excluded), CPU
seconds per GiB on each side (getrusage), zero-copy completion counts, and
ratios to plaintext copy and to the QEMU-style anchor (GnuTLS via push/pull
callbacks, one record per 4 KiB page: how QEMU encrypts migration today).
Also runs iperf3 on loopback (if installed) for reference.

  --size N              image size (default 1G)
  --channels LIST       channel counts (default 1,4)
  --modes LIST          subset of: plain-copy, msg-zerocopy, uring, uring-fixed,
                        tls-userspace, tls-qemu-style, ktls (default all)
  --rss-size N          also migrate N bytes in plain-copy mode and report peak RSS
                        of each side against image + 64 MiB (default 0 = skip)
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
    {"tls-qemu-style", "TLS, QEMU-style anchor (callbacks, record/page)",
     [](LoopbackConfig& c) { c.ktls = KtlsMode::kOff, c.qemu_style = true; }},
    {"ktls", "TLS, kTLS (kernel encrypts)", [](LoopbackConfig& c) { c.ktls = KtlsMode::kRequire; }},
};

struct Row {
  std::string mode, label;
  int channels = 0;
  bool ran = false;
  std::string why_not;
  double gbps = 0, src_cpu_per_gib = 0, dst_cpu_per_gib = 0, seconds = 0;
  uint64_t zc_sends = 0, zc_zero_copied = 0, zc_copied = 0, fixed = 0;
  std::string path;
};

// iperf3 single stream on loopback, Gbit/s (0 if unavailable).
double Iperf3Gbps(std::string* note) {
  if (system("command -v iperf3 >/dev/null 2>&1") != 0) {
    *note = "iperf3 not installed";
    return 0;
  }
  const int port = 5201 + (getpid() % 1000);
  std::string srv = "iperf3 -s -1 -p " + std::to_string(port) + " >/dev/null 2>&1 &";
  if (system(srv.c_str()) != 0) return 0;
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  std::string cmd = "iperf3 -c 127.0.0.1 -p " + std::to_string(port) + " -t 3 -J 2>/dev/null";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return 0;
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  pclose(p);
  auto at = out.find("\"sum_received\"");
  if (at == std::string::npos) return 0;
  auto bps = out.find("\"bits_per_second\":", at);
  if (bps == std::string::npos) return 0;
  return std::atof(out.c_str() + bps + 18) / 1e9;
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

}  // namespace

int CmdBench(int argc, char** argv) {
  Args a(argc, argv, 2, {"size", "channels", "modes", "json", "png", "rss-size"}, {"help"});
  if (a.flag("help")) {
    std::printf("%s", kBenchHelp);
    return 0;
  }
  const uint64_t size = ParseSize(a.get("size", "1G"), "--size");
  std::vector<int> chans;
  {
    std::stringstream ss(a.get("channels", "1,4"));
    std::string t;
    while (std::getline(ss, t, ',')) chans.push_back(std::stoi(t));
  }
  std::string modes = "," + a.get("modes", "plain-copy,msg-zerocopy,uring,uring-fixed,tls-userspace,tls-qemu-style,ktls") + ",";

  char tmpl[] = "/tmp/tls-migrate-bench-XXXXXX";
  if (!mkdtemp(tmpl)) ThrowErrno(errno, "mkdtemp");
  GenerateOptions g;
  g.out_dir = std::string(tmpl) + "/pki";
  g.hostname = "localhost";
  GenerateCredsDir(g);
  const std::optional<std::string> no_ktls = ProbeKtlsUlp();

  std::printf("tls-migrate bench: %s image of random pages, on %s\n", Human(double(size)).c_str(), MachineLine().c_str());
  std::string iperf_note;
  const double iperf = Iperf3Gbps(&iperf_note);
  if (iperf > 0) std::printf("iperf3 single stream on loopback: %.2f Gbit/s = %.2f GB/s\n", iperf, iperf / 8);
  else std::printf("iperf3: %s\n", iperf_note.c_str());

  std::vector<Row> rows;
  for (int nch : chans) {
    for (const Mode& m : kModes) {
      if (modes.find(std::string(",") + m.name + ",") == std::string::npos) continue;
      Row row;
      row.mode = m.name;
      row.label = m.label;
      row.channels = nch;
      if (std::string(m.name) == "ktls" && no_ktls) {
        row.why_not = *no_ktls;
        rows.push_back(row);
        continue;
      }
      LoopbackConfig cfg;
      cfg.size = size;
      cfg.zero_percent = 0;
      cfg.channels = nch;
      cfg.pki_dir = g.out_dir;
      m.apply(cfg);
      try {
        LoopbackResult r = RunOnLoopback(cfg);
        if (!r.verified) throw Error(EBADMSG, "destination digest differs");
        const double gib = double(r.source.data_bytes) / (1u << 30);
        row.ran = true;
        row.seconds = r.source.transfer_seconds;
        row.gbps = r.source.data_bytes / r.source.transfer_seconds / 1e9;
        row.src_cpu_per_gib = r.source_cpu.total() / gib;
        row.dst_cpu_per_gib = r.destination_cpu.total() / gib;
        for (const auto& c : r.source.channels) {
          row.zc_sends += c.zc.sends;
          row.zc_zero_copied += c.zc.zero_copied;
          row.zc_copied += c.zc.copied;
          row.fixed += c.fixed_sends;
        }
        row.path = r.source.channels.empty() ? "" : r.source.channels[0].path;
      } catch (const Error& e) {
        row.why_not = e.what();
      }
      std::fprintf(stderr, "  %-15s %d ch: %s\n", m.name, nch,
                   row.ran ? (std::to_string(row.gbps).substr(0, 5) + " GB/s").c_str() : row.why_not.c_str());
      rows.push_back(row);
    }
  }

  auto find = [&](const std::string& mode, int nch) -> const Row* {
    for (const auto& r : rows) {
      if (r.mode == mode && r.channels == nch && r.ran) return &r;
    }
    return nullptr;
  };
  std::printf("\n%-48s %3s %7s %8s %8s %9s %9s %22s\n", "mode", "ch", "GB/s", "src s/GiB", "dst s/GiB",
              "x plain", "x QEMU", "zc sends (zc/copied)");
  for (const auto& r : rows) {
    if (!r.ran) {
      std::printf("%-48s %3d   n/a: %s\n", r.label.c_str(), r.channels, r.why_not.c_str());
      continue;
    }
    const Row* plain = find("plain-copy", r.channels);
    const Row* anchor = find("tls-qemu-style", r.channels);
    char zc[64] = "-";
    if (r.zc_sends) std::snprintf(zc, sizeof(zc), "%llu (%llu/%llu)", (unsigned long long)r.zc_sends,
                                  (unsigned long long)r.zc_zero_copied, (unsigned long long)r.zc_copied);
    std::printf("%-48s %3d %7.2f %8.3f %9.3f %9.2f %8.2f %22s\n", r.label.c_str(), r.channels, r.gbps,
                r.src_cpu_per_gib, r.dst_cpu_per_gib, plain ? r.gbps / plain->gbps : 0.0,
                anchor ? r.gbps / anchor->gbps : 0.0, zc);
  }
  // The targets of the design, checked in this run.
  std::printf("\nTargets (this run):\n");
  for (int nch : chans) {
    const Row *us = find("tls-userspace", nch), *anchor = find("tls-qemu-style", nch), *plain = find("plain-copy", nch),
              *k = find("ktls", nch);
    if (us && anchor) {
      std::printf("  %d ch: userspace TLS / QEMU-style anchor = %.2fx (target >= 1.5x): %s\n", nch, us->gbps / anchor->gbps,
                  us->gbps / anchor->gbps >= 1.5 ? "met" : "NOT met");
    }
    if (plain && iperf > 0 && nch == 1) {
      std::printf("  1 ch: plaintext / iperf3 = %.2fx (target >= 0.9x): %s\n", plain->gbps / (iperf / 8),
                  plain->gbps / (iperf / 8) >= 0.9 ? "met" : "NOT met");
    }
    if (k && us) {
      std::printf("  %d ch: kTLS / userspace TLS = %.2fx (target >= 1x): %s\n", nch, k->gbps / us->gbps,
                  k->gbps >= us->gbps ? "met" : "NOT met");
    } else if (!k) {
      std::printf("  %d ch: kTLS: not measurable here (%s)\n", nch, no_ktls ? no_ktls->c_str() : "failed");
    }
  }

  std::string rss_json;
  if (a.has("rss-size") && ParseSize(a.get("rss-size"), "--rss-size") > 0) {
    LoopbackConfig cfg;
    cfg.size = ParseSize(a.get("rss-size"), "--rss-size");
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
    rss_json = ",\"rss\":{\"image_kb\":" + std::to_string(image_kb) + ",\"source_peak_kb\":" +
               std::to_string(r.source_peak_rss_kb) + ",\"destination_peak_kb\":" +
               std::to_string(r.destination_peak_rss_kb) + "}";
  }

  std::ostringstream j;
  j << "{\"machine\":\"" << JsonEscape(MachineLine()) << "\",\"image_bytes\":" << size
    << ",\"iperf3_gbit\":" << iperf << ",\"results\":[";
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto& r = rows[i];
    j << (i ? "," : "") << "{\"mode\":\"" << r.mode << "\",\"channels\":" << r.channels << ",\"ran\":"
      << (r.ran ? "true" : "false");
    if (r.ran) {
      j << ",\"gbytes_per_s\":" << r.gbps << ",\"transfer_seconds\":" << r.seconds << ",\"src_cpu_s_per_gib\":"
        << r.src_cpu_per_gib << ",\"dst_cpu_s_per_gib\":" << r.dst_cpu_per_gib << ",\"zc_sends\":" << r.zc_sends
        << ",\"zc_zero_copied\":" << r.zc_zero_copied << ",\"zc_copied\":" << r.zc_copied
        << ",\"fixed_sends\":" << r.fixed << ",\"path\":\"" << JsonEscape(r.path) << "\"";
    } else {
      j << ",\"why_not\":\"" << JsonEscape(r.why_not) << "\"";
    }
    j << "}";
  }
  j << "]" << rss_json << "}";
  if (a.has("json")) {
    std::ofstream f(a.get("json"));
    f << j.str() << "\n";
  }
  if (a.has("png")) {
    const std::string dat = std::string(tmpl) + "/bench.dat", png = a.get("png");
    std::ofstream d(dat);
    d << "mode";
    for (int nch : chans) d << " \"" << nch << " channel" << (nch > 1 ? "s" : "") << "\"";
    d << "\n";
    for (const Mode& m : kModes) {
      if (modes.find(std::string(",") + m.name + ",") == std::string::npos) continue;
      d << "\"" << m.name << "\"";
      for (int nch : chans) {
        const Row* r = find(m.name, nch);
        d << " " << (r ? r->gbps : 0.0);
      }
      d << "\n";
    }
    d.close();
    std::string gp = "set terminal png size 1000,500; set output '" + png +
                     "'; set style data histograms; set style histogram clustered; set style fill solid border -1;"
                     " set ylabel 'GB/s of page data'; set title 'tls-migrate bench: " + Human(double(size)) +
                     " on loopback'; set xtics rotate by -25; set key top right;"
                     " plot '" + dat + "' using 2:xtic(1) title columnheader(2)";
    for (size_t c = 1; c < chans.size(); ++c) gp += ", '' using " + std::to_string(c + 2) + " title columnheader(" + std::to_string(c + 2) + ")";
    std::string cmd = "gnuplot -e \"" + gp + "\"";
    if (system(cmd.c_str()) != 0) std::fprintf(stderr, "tls-migrate bench: gnuplot failed (apt-get install gnuplot-nox)\n");
    else std::printf("chart: %s\n", png.c_str());
  }
  (void)!system(("rm -rf " + std::string(tmpl)).c_str());
  return 0;
}

}  // namespace ktm::cli

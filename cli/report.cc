#include "cli/report.h"

#include <sys/resource.h>

#include <cstdio>
#include <fstream>

#include "base/error.h"
#include "transport/report_json.h"

namespace ktm::cli {

std::string Human(double bytes) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (bytes >= 1024 && i < 4) bytes /= 1024, ++i;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", bytes, u[i]);
  return buf;
}


nlohmann::json ReportJson(const char* role, const MigrationReport& r, const SideCpu* cpu) {
  nlohmann::json j = MigrationReportJson(r);
  j["role"] = role;
  if (cpu) {
    j["cpu_user_s"] = cpu->user;
    j["cpu_sys_s"] = cpu->sys;
  }
  return j;
}

void WriteJsonFile(const std::string& path, const nlohmann::json& j) {
  if (path == "-") {
    std::printf("%s\n", j.dump().c_str());
    return;
  }
  std::ofstream f(path);
  if (!(f << j.dump() << "\n") || !f.flush()) {
    throw Error(ErrorKind::kLocalIo, EACCES, "cannot write the JSON report to " + path);
  }
}

namespace {

// "2^24" for powers of two, else the number.
std::string RecordCount(uint64_t n) {
  if (n && (n & (n - 1)) == 0) return "2^" + std::to_string(__builtin_ctzll(n));
  return std::to_string(n);
}

}  // namespace

void PrintKeyLifetime(const ChannelStats& st) {
  if (!st.rekey.applies) return;
  const ChannelStats::Rekey& k = st.rekey;
  std::string limit = RecordCount(k.limit_records) + " records";
  if (k.limit_bytes) limit += " or " + Human(double(k.limit_bytes)) + " (--rekey-after)";
  std::printf("             key updates: %llu sent, %llu received; send key changes before %s; %s: %s\n",
              (unsigned long long)k.sent, (unsigned long long)k.received, limit.c_str(),
              k.can_rekey ? "re-keying on" : "re-keying off", k.detail.c_str());
  std::printf("             no-pad receive %s\n", st.rx_no_pad_detail.c_str());
}

void PrintReport(const char* role, const MigrationReport& r, const SideCpu* cpu) {
  std::printf("%s: session %s\n", role, r.session.c_str());
  std::printf("  image %s in %u iteration(s): %llu page transmissions (%llu zero pages as offsets only)\n",
              Human(double(r.image_size)).c_str(), r.iterations, (unsigned long long)r.pages,
              (unsigned long long)r.zero_pages);
  if (r.transfer_seconds > 0) {
    std::printf("  %s of page data: transfer %.2f s = %.2f GB/s; %.2f s in all (connect, handshakes, digest, commit)",
                Human(double(r.data_bytes)).c_str(), r.transfer_seconds, r.data_bytes / r.transfer_seconds / 1e9,
                r.seconds);
  } else {
    std::printf("  %s of page data in %.2f s", Human(double(r.data_bytes)).c_str(), r.seconds);
  }
  if (cpu) std::printf(", CPU %.2f s user + %.2f s sys", cpu->user, cpu->sys);
  std::printf("\n  image digest (%s, per page) %s\n", r.digest_algorithm == DigestAlgorithm::kSha256 ? "SHA-256" : "XXH3-128",
              r.digest.c_str());
  if (!r.phases.empty()) {
    std::printf("  phases (wall / CPU user+sys):");
    for (const auto& p : r.phases) {
      std::printf(" %s %.3f s / %.2f+%.2f s;", p.name.c_str(), p.wall_seconds, p.cpu_user_seconds, p.cpu_sys_seconds);
    }
    std::printf("\n");
  }
  if (r.downtime.measured) {
    const DowntimeReport& d = r.downtime;
    std::printf("  downtime %.1f ms (freeze -> DONE): final %llu pages %.1f ms (expected %.1f ms), digest %.1f ms, "
                "destination verify+commit %.1f ms\n",
                d.total_seconds * 1e3, (unsigned long long)d.final_pages, d.final_pages_seconds * 1e3,
                d.expected_seconds * 1e3, d.digest_seconds * 1e3, d.confirm_seconds * 1e3);
  }
  if (r.dirty_per_iteration.size() > 1) {
    std::printf("  pages per iteration:");
    for (auto d : r.dirty_per_iteration) std::printf(" %llu", (unsigned long long)d);
    std::printf("\n");
  }
  // Channels that took the same path are printed once.
  for (size_t i = 0; i < r.channels.size();) {
    size_t j = i + 1;
    while (j < r.channels.size() && r.channels[j].path == r.channels[i].path &&
           !r.channels[i].stats.has_zero_copy_counters) {
      ++j;
    }
    const auto& c = r.channels[i];
    if (j - i > 1) {
      std::printf("  channels %zu-%zu: %s\n", i, j - 1, c.path.c_str());
    } else {
      std::printf("  channel %zu: %s\n", i, c.path.c_str());
    }
    const ZeroCopyCounters& zc = c.stats.zc;
    if (c.stats.has_zero_copy_counters && zc.sends) {
      std::printf("             %s sends %llu, released %llu (%llu notifications): zero-copied %llu, "
                  "kernel copied %llu%s\n",
                  c.stats.backend == "io_uring" ? "io_uring SEND_ZC" : "MSG_ZEROCOPY", (unsigned long long)zc.sends,
                  (unsigned long long)zc.released, (unsigned long long)zc.completion_records,
                  (unsigned long long)zc.zero_copied, (unsigned long long)zc.copied,
                  zc.copied == zc.sends ? " (local delivery: the kernel copies; real NICs avoid it)" : "");
    }
    // A group's key updates are its channels' together.
    ChannelStats group = c.stats;
    for (size_t k = i + 1; k < j; ++k) {
      group.rekey.sent += r.channels[k].stats.rekey.sent;
      group.rekey.received += r.channels[k].stats.rekey.received;
    }
    PrintKeyLifetime(group);
    i = j;
  }
}


SideCpu SelfCpu() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return {ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6};
}

}  // namespace ktm::cli

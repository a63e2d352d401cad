#include "cli/report.h"

#include <sys/resource.h>

#include <cstdio>
#include <sstream>

namespace ktm::cli {

std::string Human(double bytes) {
  const char* u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int i = 0;
  while (bytes >= 1024 && i < 4) bytes /= 1024, ++i;
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f %s", bytes, u[i]);
  return buf;
}


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




std::string ReportJson(const char* role, const MigrationReport& r, const SideCpu* cpu) {
  std::ostringstream j;
  j << "{\"role\":\"" << role << "\",\"session\":\"" << r.session << "\",\"image_bytes\":" << r.image_size
    << ",\"page_size\":" << r.page_size << ",\"iterations\":" << r.iterations << ",\"pages\":" << r.pages
    << ",\"zero_pages\":" << r.zero_pages << ",\"data_bytes\":" << r.data_bytes << ",\"seconds\":" << r.seconds
    << ",\"transfer_seconds\":" << r.transfer_seconds
    << ",\"throughput_gbps\":" << (r.seconds > 0 ? r.data_bytes / r.seconds / 1e9 : 0) << ",\"image_digest\":\""
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
        << ",\"zc_notifications\":" << c.zc.completion_records << ",\"zc_enobufs_retries\":" << c.zc.enobufs_retries
        << ",\"backend\":\"" << c.backend << "\",\"fixed_sends\":" << c.fixed_sends;
    }
    j << "}";
  }
  j << "]}";
  return j.str();
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
  std::printf("\n  image digest (SHA-256 tree) %s\n", r.digest.c_str());
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
      std::printf("             %s sends %llu, released %llu (%llu notifications): zero-copied %llu, "
                  "kernel copied %llu%s\n",
                  c.backend == "io_uring" ? "io_uring SEND_ZC" : "MSG_ZEROCOPY", (unsigned long long)c.zc.sends, (unsigned long long)c.zc.released,
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

}  // namespace ktm::cli

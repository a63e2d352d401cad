// One migration on loopback with the destination in a child process, so
// each side's CPU time and peak RSS are its own. Used by `demo` and `bench`.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "cli/report.h"
#include "transport/migration.h"

namespace ktm::cli {

struct LoopbackConfig {
  uint64_t size = 256u << 20;
  unsigned zero_percent = 30;
  int channels = 4;
  bool tls = true;
  std::string pki_dir;             // creds dir (server + client), TLS only
  KtlsMode ktls = KtlsMode::kAuto;
  ZeroCopyMode zero_copy = ZeroCopyMode::kAuto;
  SendBackend backend = SendBackend::kSendmsg;
  bool register_buffers = false;
  // Optional: wraps each source channel (the bench's QEMU-style anchor).
  std::function<std::unique_ptr<Channel>(std::unique_ptr<Channel>)> wrap_source_channel;
  bool live = false;
  uint64_t dirty_rate = 64u << 20;
  uint32_t max_iterations = 30;
  std::chrono::milliseconds max_downtime{0};
  DigestAlgorithm digest = DigestAlgorithm::kXxh3;
  std::string input;               // image file to send ("" = generated memory of `size`)
  // Optional: builds the source image instead (the bench's final-dirty-set source).
  std::function<std::unique_ptr<PageSource>()> make_source;
  std::string output;              // "" = destination keeps the image in memory
  uint64_t writeback_window = DestinationOptions{}.writeback_window;  // file output: its bound (0: none)
  bool progress = false;
  uint64_t rekey_after = 0;        // TlsOptions::rekey_after_bytes (0: the cipher's limit)
  TlsBackend tls_backend = TlsBackend::kGnutls;  // both sides' TLS library
};

struct LoopbackResult {
  double wall_seconds = 0;         // source side: from the image in memory to DONE
  MigrationReport source;
  SideCpu source_cpu;              // during RunSource only
  nlohmann::json destination;      // the child's ReportJson
  SideCpu destination_cpu;         // the whole child
  long source_peak_rss_kb = 0;     // VmHWM, reset before the run
  long destination_peak_rss_kb = 0;
  bool verified = false;           // destination reported committing the digest the source sent
};

// Throws the source's Error, or the destination's (same kind, its message).
LoopbackResult RunOnLoopback(const LoopbackConfig& cfg);

}  // namespace ktm::cli

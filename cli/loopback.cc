#include "cli/loopback.h"

#include <fstream>

#include "base/child.h"
#include "base/error.h"

namespace ktm::cli {
namespace {

SecurityConfig MakeSecurity(const LoopbackConfig& c, TlsRole role) {
  SecurityConfig s;
  s.tls = c.tls;
  s.ktls = c.ktls;
  s.zero_copy = c.zero_copy;
  s.backend = c.backend;
  if (c.tls) {
    s.tls_options.backend = c.tls_backend;
    s.tls_options.role = role;
    s.tls_options.creds = Credentials::Load(CredsDirFiles(c.pki_dir, role), role);
    s.tls_options.peer_name = "localhost";
    s.tls_options.rekey_after_bytes = c.rekey_after;
  }
  return s;
}

long PeakRssKb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return 0;
}

void ResetPeakRss() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";  // resets VmHWM to the current RSS (Linux 4.0+)
}

ErrorKind KindFromName(const std::string& n) {
  for (ErrorKind k : {ErrorKind::kUsage, ErrorKind::kPeer, ErrorKind::kTimeout, ErrorKind::kSecurity,
                      ErrorKind::kIntegrity, ErrorKind::kLocalIo, ErrorKind::kInternal}) {
    if (n == ToString(k)) return k;
  }
  return ErrorKind::kInternal;
}

// The destination side, run in the child: its report or its error as JSON.
std::pair<int, std::string> RunDestinationChild(const LoopbackConfig& cfg, Listener& l) {
  try {
    DestinationOptions o;
    o.output = cfg.output;
    o.writeback_window = cfg.writeback_window;
    o.accept_timeout = std::chrono::seconds(60);
    o.security = MakeSecurity(cfg, TlsRole::kServer);
    MigrationReport r = RunDestination(l, o);
    SideCpu cpu = SelfCpu();
    return {0, ReportJson("destination", r, &cpu).dump()};
  } catch (const Error& e) {
    return {1, nlohmann::json{{"error", e.what()}, {"kind", ToString(e.kind())}, {"errno", e.code()}}.dump()};
  } catch (const std::exception& e) {
    return {1, nlohmann::json{{"error", e.what()}, {"kind", "internal"}, {"errno", 0}}.dump()};
  }
}

}  // namespace

LoopbackResult RunOnLoopback(const LoopbackConfig& cfg) {
  Listener l = Listener::Listen("127.0.0.1:0");
  // Fork before the image exists, so the child shares none of it.
  ChildProcess child = ChildProcess::Start([&] { return RunDestinationChild(cfg, l); });
  LoopbackResult res;
  std::optional<Error> src_error;
  try {
    const auto t0 = std::chrono::steady_clock::now();
    std::unique_ptr<MappedImage> img;
    std::unique_ptr<PageSource> src;
    if (cfg.make_source) {
      src = cfg.make_source();
    } else if (!cfg.input.empty()) {
      img = MappedImage::FromFile(cfg.input);
    } else {
      img = MappedImage::Anonymous(cfg.size);
      img->FillMixed(cfg.zero_percent, 7);
    }
    if (src) {
    } else if (cfg.live) {
      src = std::make_unique<LiveImage>(std::move(img), cfg.dirty_rate);
    } else {
      src = std::move(img);
    }
    SourceOptions o;
    o.address = l.address();
    o.channels = cfg.channels;
    o.max_iterations = cfg.max_iterations;
    o.max_downtime = cfg.max_downtime;
    o.digest = cfg.digest;
    o.register_buffers = cfg.register_buffers;
    o.security = MakeSecurity(cfg, TlsRole::kClient);
    o.wrap_channel = cfg.wrap_source_channel;
    ResetPeakRss();
    SideCpu before = SelfCpu();
    res.source = RunSource(*src, o);
    SideCpu after = SelfCpu();
    res.source_cpu = {after.user - before.user, after.sys - before.sys};
    res.source_peak_rss_kb = PeakRssKb();
    res.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } catch (const Error& e) {
    src_error = e;
  }
  const ChildResult dst = child.Wait();
  res.destination_cpu = {dst.usage.ru_utime.tv_sec + dst.usage.ru_utime.tv_usec / 1e6,
                         dst.usage.ru_stime.tv_sec + dst.usage.ru_stime.tv_usec / 1e6};
  res.destination_peak_rss_kb = dst.usage.ru_maxrss;
  if (src_error) throw *src_error;
  res.destination = nlohmann::json::parse(dst.output, nullptr, /*allow_exceptions=*/false);
  if (dst.exit_code != 0 || res.destination.is_discarded()) {
    if (res.destination.is_object() && res.destination.contains("error")) {
      throw Error(KindFromName(res.destination.value("kind", "internal")), res.destination.value("errno", 0),
                  "destination: " + res.destination.value("error", std::string()));
    }
    throw Error(ErrorKind::kInternal, EIO,
                "destination process failed (exit " + std::to_string(dst.exit_code) + ", signal " +
                    std::to_string(dst.term_signal) + "): " + dst.output);
  }
  res.verified = res.destination.value("image_digest", std::string()) == res.source.digest;
  return res;
}

}  // namespace ktm::cli

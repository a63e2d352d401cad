#include "cli/loopback.h"

#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "channel/error.h"

namespace ktm::cli {
namespace {

SecurityConfig MakeSecurity(const LoopbackConfig& c, TlsRole role) {
  SecurityConfig s;
  s.tls = c.tls;
  s.ktls = c.ktls;
  s.zero_copy = c.zero_copy;
  s.backend = c.backend;
  if (c.tls) {
    s.tls_options.role = role;
    s.tls_options.creds = Credentials::Load(CredsDirFiles(c.pki_dir, role), role);
    s.tls_options.peer_name = "localhost";
    s.tls_options.qemu_style = c.qemu_style;
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

}  // namespace

LoopbackResult RunOnLoopback(const LoopbackConfig& cfg) {
  Listener l = Listener::Listen("127.0.0.1:0");
  int pipefd[2];
  if (pipe(pipefd) != 0) ThrowErrno(errno, "pipe");
  // Fork before the image exists, so the child shares none of it.
  pid_t child = fork();
  if (child < 0) ThrowErrno(errno, "fork");
  if (child == 0) {
    close(pipefd[0]);
    std::string msg;
    int rc = 0;
    try {
      DestinationOptions o;
      o.output = cfg.output;
      o.accept_timeout = std::chrono::seconds(60);
      o.security = MakeSecurity(cfg, TlsRole::kServer);
      MigrationReport r = RunDestination(l, o);
      SideCpu cpu = SelfCpu();
      msg = ReportJson("destination", r, &cpu);
    } catch (const std::exception& e) {
      msg = std::string("ERROR ") + e.what();
      rc = 1;
    }
    (void)!write(pipefd[1], msg.data(), msg.size());
    _exit(rc);
  }
  close(pipefd[1]);
  LoopbackResult res;
  std::string src_error;
  int src_code = 0;
  try {
    std::unique_ptr<MappedImage> img = MappedImage::Anonymous(cfg.size);
    img->FillMixed(cfg.zero_percent, 7);
    std::unique_ptr<PageSource> src;
    if (cfg.live) {
      src = std::make_unique<LiveImage>(std::move(img), cfg.dirty_rate);
    } else {
      src = std::move(img);
    }
    SourceOptions o;
    o.address = l.address();
    o.channels = cfg.channels;
    o.max_iterations = cfg.max_iterations;
    o.register_buffers = cfg.register_buffers;
    o.security = MakeSecurity(cfg, TlsRole::kClient);
    ResetPeakRss();
    SideCpu before = SelfCpu();
    res.source = RunSource(*src, o);
    SideCpu after = SelfCpu();
    res.source_cpu = {after.user - before.user, after.sys - before.sys};
    res.source_peak_rss_kb = PeakRssKb();
  } catch (const Error& e) {
    src_error = e.what();
    src_code = e.code();
  }
  char buf[4096];
  ssize_t n;
  while ((n = read(pipefd[0], buf, sizeof(buf))) > 0) res.destination_json.append(buf, n);
  close(pipefd[0]);
  int status = 0;
  rusage ru{};
  wait4(child, &status, 0, &ru);
  res.destination_cpu = {ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6};
  res.destination_peak_rss_kb = ru.ru_maxrss;
  if (!src_error.empty()) throw Error(src_code, src_error);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw Error(EIO, "destination failed: " + res.destination_json);
  }
  res.verified = res.destination_json.find("\"image_digest\":\"" + res.source.digest + "\"") != std::string::npos;
  return res;
}

}  // namespace ktm::cli

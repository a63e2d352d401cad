// tls-migrate recv: the destination side of a migration.
#include <signal.h>
#include <unistd.h>

#include <cstdio>

#include "base/error.h"
#include "base/path.h"
#include "cli/args.h"
#include "cli/cmd_common.h"
#include "cli/commands.h"
#include "cli/report.h"
#include "transport/migration.h"

namespace ktm::cli {
namespace {

const char* kRecvHelp = R"(Usage: tls-migrate recv --listen HOST:PORT --output FILE [options]

Receives one migration. Pages go into a temporary file beside FILE, which is
renamed to FILE only after the final iteration barrier and a check of the
image digest (XXH3-128, or SHA-256 if the source asks) against the source's.
A failed or aborted migration never leaves a file under FILE. Connections that fail the TLS handshake or belong to another
migration are rejected and logged; no page is read from them.

  --listen HOST:PORT    address to listen on (IPv6: [ADDR]:PORT)
  --output FILE         where the image goes
  --timeout SEC         how long to wait for all channels (default 60)
  --io-timeout SEC      after the channels are accepted: no progress on a channel for
                        SEC seconds ends the migration (exit 1; default 30, 0 = forever)
  --max-size N          largest image accepted (e.g. 64G); default: what the output's
                        filesystem has free. Larger: exit 5 before any page moves
  --max-pending N       connections in TLS handshake/hello at once (default 32); each
                        has its own deadline; beyond N the oldest connection of the
                        source address holding the most is dropped (logged)

The output's directory is checked before listening; the image's space is
reserved (fallocate) before the first page is accepted, so a full disk is
exit 5 with a sentence, never a crash.
)";

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
  o.accept_timeout = std::chrono::seconds(a.number("timeout", 60, 1, 86400));
  o.io_timeout = IoTimeout(a);
  o.max_size = a.has("max-size") ? ParseSize(a.get("max-size"), "--max-size") : 0;
  o.max_pending = a.number("max-pending", 32, 1, 4096);
  o.security = BuildSecurity(a, TlsRole::kServer, "");
  o.log = [](const std::string& s) { std::fprintf(stderr, "tls-migrate recv: %s\n", s.c_str()); };
  o.temp_file_hook = [](const std::string& p) {
    std::snprintf(g_temp_path, sizeof(g_temp_path), "%s", p.c_str());
  };
  return o;
}

}  // namespace

int CmdRecv(int argc, char** argv) {
  Args a(argc, argv, 2, Join({"listen", "output", "timeout", "io-timeout", "max-size", "max-pending"}, kSecValue),
         kSecBool);
  if (a.flag("help")) {
    std::printf("%s%s", kRecvHelp, kSecurityHelp);
    return 0;
  }
  if (!a.has("listen") || !a.has("output")) {
    throw Error(ErrorKind::kUsage, EINVAL, "recv needs --listen HOST:PORT and --output FILE");
  }
  DestinationOptions o = MakeDestOptions(a);
  CheckOutputPath(o.output);
  CheckJsonPath(a);
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
    std::printf("  %s\n", TlsLibraryLine(o.security).c_str());
    std::printf("  image verified and written to %s\n", o.output.c_str());
  }
  nlohmann::json j = ReportJson("destination", r, &cpu);
  j["tls"] = TlsJson(o.security);
  WriteJson(a, j);
  return 0;
}

}  // namespace ktm::cli

// tls-migrate: move a memory image between hosts over several encrypted
// channels, with kernel TLS where the kernel has it. This file dispatches to
// the subcommands (cli/commands.h, one cli/cmd_*.cc each) and turns their
// errors into messages and exit codes.
#include <signal.h>

#include <cstdio>
#include <exception>
#include <functional>
#include <map>
#include <string>

#include "base/error.h"
#include "base/version.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"

namespace ktm::cli {
namespace {

const char* kMainHelp = R"(tls-migrate: move a memory image between hosts over encrypted channels,
with the TLS session moved into the kernel (kTLS) where the kernel can take it.

Usage:
  tls-migrate recv  --listen HOST:PORT --output FILE [certificate flags] [options]
  tls-migrate send  --connect HOST:PORT (--input FILE | --size N) [--live ...] [options]
  tls-migrate certs generate --out DIR --hostname NAME [--ip ADDR]...
  tls-migrate probe
  tls-migrate demo  [--size N] [--channels N] [--live] [--no-tls] [--json FILE]
  tls-migrate bench [--size N] [--channels 1,4] [--json FILE] [--png FILE]
  tls-migrate tunnel --listen ADDR --connect HOST:PORT [certificate flags]      (source side)
  tls-migrate tunnel --tls-listen HOST:PORT --forward ADDR [certificate flags]  (destination side)

Run 'tls-migrate COMMAND --help' for the options of each command.

Exit codes: 0 ok; 1 migration failed (peer vanished, reset, timeout); 2 usage;
3 certificates/TLS/policy; 4 integrity (invalid packet, digest mismatch); 5 local I/O.
)";

}  // namespace
}  // namespace ktm::cli

int main(int argc, char** argv) {
  using namespace ktm::cli;
  if (argc < 2 || std::string(argv[1]) == "--help" || std::string(argv[1]) == "-h" ||
      std::string(argv[1]) == "help") {
    std::printf("%s", kMainHelp);
    return argc < 2 ? kExitUsage : 0;
  }
  if (std::string(argv[1]) == "--version" || std::string(argv[1]) == "version") {
    std::printf("tls-migrate %s\n", KTM_VERSION_STRING);
    return 0;
  }
  const std::string cmd = argv[1];
  std::map<std::string, std::function<int(int, char**)>> cmds = {
      {"send", CmdSend}, {"recv", CmdRecv}, {"certs", CmdCerts}, {"probe", CmdProbe}, {"demo", CmdDemo},
      {"bench", CmdBench}, {"tunnel", CmdTunnel}};
  auto it = cmds.find(cmd);
  if (it == cmds.end()) {
    std::fprintf(stderr, "tls-migrate: unknown command '%s'\n%s", cmd.c_str(), kMainHelp);
    return kExitUsage;
  }
  // A vanished peer is an error with a sentence, never a silent SIGPIPE
  // death (the library also sends with MSG_NOSIGNAL where it can).
  signal(SIGPIPE, SIG_IGN);
  try {
    return it->second(argc, argv);
  } catch (const ktm::Error& e) {
    return ReportError(cmd.c_str(), e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tls-migrate %s: %s\n", cmd.c_str(), e.what());
    return kExitFailed;
  }
}

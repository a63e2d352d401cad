// tls-migrate certs generate: a CA with server and client credentials in
// QEMU's creds-dir layout, for tests and demos.
#include <cstdio>
#include <string>

#include "base/error.h"
#include "certs/generate.h"
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/exit_codes.h"

namespace ktm::cli {
namespace {

const char* kCertsHelp = R"(Usage: tls-migrate certs generate --out DIR --hostname NAME [--ip ADDR]... [options]

Creates a CA and a server and a client certificate signed by it, in QEMU's
creds-dir layout, for tests and demos. Keys are written with mode 0600.

  --out DIR             directory to write (created if missing)
  --hostname NAME       destination's DNS name (server certificate CN and SAN)
  --ip ADDR             add an IP address SAN to the server certificate (repeatable)
  --client-name NAME    client certificate CN (default tls-migrate-client)
  --days N              validity in days (default 365)
  --rsa                 RSA-3072 keys instead of ECDSA P-256
)";

}  // namespace

int CmdCerts(int argc, char** argv) {
  if (argc < 3 || std::string(argv[2]) == "--help") {
    std::printf("%s", kCertsHelp);
    return argc < 3 ? kExitUsage : 0;
  }
  if (std::string(argv[2]) != "generate") {
    throw Error(ErrorKind::kUsage, EINVAL, "unknown certs command '" + std::string(argv[2]) + "' (see --help)");
  }
  Args a(argc, argv, 3, {"out", "hostname", "ip", "client-name", "days"}, {"rsa", "help"});
  if (a.flag("help")) {
    std::printf("%s", kCertsHelp);
    return 0;
  }
  if (!a.has("out") || !a.has("hostname")) {
    throw Error(ErrorKind::kUsage, EINVAL, "certs generate needs --out DIR and --hostname NAME");
  }
  GenerateOptions g;
  g.out_dir = a.get("out");
  g.hostname = a.get("hostname");
  g.ips = a.all("ip");
  g.client_name = a.get("client-name", g.client_name);
  g.days = static_cast<int>(a.number("days", 365, 1, 36500));
  g.key_type = a.flag("rsa") ? KeyType::kRsa3072 : KeyType::kEcdsaP256;
  GenerateCredsDir(g);
  std::printf("wrote CA, server (%s", g.hostname.c_str());
  for (auto& ip : g.ips) std::printf(", %s", ip.c_str());
  std::printf(") and client credentials to %s (keys mode 0600)\n", g.out_dir.c_str());
  std::printf("  destination: tls-migrate recv --tls-creds %s ...\n  source:      tls-migrate send --tls-creds %s --tls-hostname %s ...\n",
              g.out_dir.c_str(), g.out_dir.c_str(), g.hostname.c_str());
  return 0;
}

}  // namespace ktm::cli

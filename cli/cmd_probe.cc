// tls-migrate probe: what this host supports, and what each mode would do.
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <optional>
#include <string>

#include "base/error.h"
#include "base/proc.h"
#include "channel/socket_channel.h"
#include "channel/zero_copy_sender.h"
#include "cli/args.h"
#include "cli/cmd_common.h"
#include "cli/commands.h"
#include "ktls/cipher_table.h"
#include "ktls/ktls.h"
#include "ktls/rekey.h"
#include "tls/handshake.h"
#include "transport/migration.h"

namespace ktm::cli {
namespace {

const char* kProbeHelp = R"(Usage: tls-migrate probe [--json FILE]

Reports what this host supports (kernel TLS and its ciphers, MSG_ZEROCOPY,
io_uring SEND_ZC, locked-memory and optmem limits, whether the kernel re-keys
kTLS sessions (TLS 1.3 KeyUpdate) and decrypts without padding checks), each
TLS backend (--tls-backend) with its library version and the kTLS it can
enable by itself, and what each mode would do.

  --json FILE           the TLS backends as JSON ('-' for stdout)
)";

// One entry per backend: its library and the kTLS it can enable itself.
// A backend that cannot report (not built in) says so in its fields.
nlohmann::json BackendsJson() {
  nlohmann::json out = nlohmann::json::array();
  for (TlsBackend b : kAllTlsBackends) {
    out.push_back({{"backend", ToString(b)},
                   {"library", TlsLibraryVersion(b)},
                   {"library_ktls", TlsLibraryKtlsAbility(b)}});
  }
  return out;
}

void PrintBackends(const nlohmann::json& backends) {
  std::printf("TLS backends (--tls-backend; kTLS the library enables by itself, beside the keys\n"
              "tls-migrate installs into the kernel):\n");
  for (const auto& b : backends) {
    std::printf("  %-8s %s; library kTLS: %s\n", b["backend"].get<std::string>().c_str(),
                b["library"].get<std::string>().c_str(), b["library_ktls"].get<std::string>().c_str());
  }
}

}  // namespace

int CmdProbe(int argc, char** argv) {
  Args a(argc, argv, 2, {"json"}, {"help"});
  if (a.flag("help")) {
    std::printf("%s", kProbeHelp);
    return 0;
  }
  CheckJsonPath(a);
  const nlohmann::json backends = BackendsJson();
  std::optional<std::string> ulp = ProbeKtlsUlp();
  std::printf("kernel %s\n", ReadProcValue("/proc/sys/kernel/osrelease").c_str());
  PrintBackends(backends);
  std::printf("kernel TLS (TCP_ULP \"tls\"): %s\n", ulp ? ("no: " + *ulp).c_str() : "yes");
  // One row per kernel cipher: does the kernel take it, and do we move
  // sessions with it into the kernel.
  for (const KernelCipher& row : KernelCipherTable()) {
    std::printf("  %-18s kernel: %-28s key install: %s\n", row.name,
                ulp ? "no (no tls module)" : ProbeKernelCipher(row).c_str(),
                row.installable ? "yes" : (std::string("no, ") + row.why_not).c_str());
  }
  // Beyond installing keys once: TLS 1.3 key updates and no-pad receive.
  const KtlsKernelFeatures& kf = ProbeKtlsKernelFeatures();
  const std::string no_ktls = ulp ? "no: " + *ulp : "";
  std::printf("  TLS 1.3 key update (a second TLS_TX/TLS_RX): %s\n", ulp ? no_ktls.c_str() : kf.rekey_detail.c_str());
  std::printf("  TLS_RX_EXPECT_NO_PAD: %s\n", ulp ? no_ktls.c_str() : kf.rx_no_pad_detail.c_str());
  std::printf("  userspace TLS (either backend) re-keys in any case: it follows and starts key updates itself\n");
  // MSG_ZEROCOPY
  std::string zc;
  try {
    Listener l = Listener::Listen("127.0.0.1:0");
    auto c = SocketChannel::Connect(l.address(), std::chrono::seconds(2));
    zc = c->zero_copy_available() ? "yes (SO_ZEROCOPY accepted)" : "no: " + c->zero_copy_reason();
  } catch (const Error& e) {
    zc = std::string("unknown: ") + e.what();
  }
  std::printf("MSG_ZEROCOPY on TCP: %s\n", zc.c_str());
  const std::optional<std::string> no_send_zc = ProbeUringSendZcOpcode();
  std::printf("io_uring SEND_ZC: %s\n", no_send_zc ? ("no (" + *no_send_zc + ")").c_str() : "yes");
  rlimit rl{};
  getrlimit(RLIMIT_MEMLOCK, &rl);
  std::printf("ulimit -l: %s%s\n",
              rl.rlim_cur == RLIM_INFINITY ? "unlimited" : (std::to_string(rl.rlim_cur / 1024) + " KiB").c_str(),
              geteuid() == 0 ? " (running as root: CAP_IPC_LOCK usually lifts it)" : "");
  std::printf("net.core.optmem_max: %s bytes\n\n", ReadProcValue("/proc/sys/net/core/optmem_max").c_str());
  std::printf("What each mode would do here:\n");
  std::printf("  --no-tls:                 MSG_ZEROCOPY writes%s\n", zc.rfind("yes", 0) == 0 ? " (completions reported; loopback/local peers get 'copied')" : ": unavailable, copies");
  if (!ulp) {
    std::printf("  TLS, --ktls auto:         kTLS (keys installed into the kernel); zero copy = kernel encrypts from the pages\n");
  } else {
    std::printf("  TLS, --ktls auto:         userspace TLS (the --tls-backend library), zero copy off (it reuses its ciphertext buffer)\n");
    std::printf("  TLS, --ktls require:      fails: %s\n", ulp->c_str());
    std::printf("  TLS, --zero-copy require: fails: userspace TLS cannot do zero copy\n");
  }
  std::printf("  TLS, --ktls off:          userspace TLS, zero copy off\n");
  WriteJson(a, {{"kernel", ReadProcValue("/proc/sys/kernel/osrelease")},
                {"kernel_tls", !ulp},
                {"kernel_tls_detail", ulp ? *ulp : "TCP_ULP \"tls\" accepted"},
                {"tls_backends", backends}});
  return 0;
}

}  // namespace ktm::cli

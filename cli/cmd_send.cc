// tls-migrate send: the source side of a migration.
#include <cstdio>
#include <memory>

#include "base/error.h"
#include "cli/args.h"
#include "cli/cmd_common.h"
#include "cli/commands.h"
#include "cli/report.h"
#include "transport/migration.h"

namespace ktm::cli {
namespace {

const char* kSendHelp = R"(Usage: tls-migrate send --connect HOST:PORT (--input FILE | --size N) [options]

Streams an image to a 'tls-migrate recv' over several channels, each its own
TLS session. With --live a writer thread keeps changing the memory while it is
migrated (precopy): iterations re-send dirty pages until few are left or
--max-iterations is reached, then the writer stops and a final pass runs; the
destination's image must equal the source memory at that moment.

  --connect HOST:PORT   destination (IPv6: [ADDR]:PORT)
  --input FILE          image file to send
  --size N              send N bytes of generated memory instead (e.g. 256M, 4G)
  --channels N          parallel channels (default 4)
  --live                keep modifying the memory during the migration
  --dirty-rate R        bytes per second the live writer dirties (default 64M)
  --max-iterations K    precopy iterations before forcing the final pass (default 30)
  --max-downtime MS     with --live: start the final pass once the dirty pages can
                        be sent within MS ms at the last iteration's page rate
                        (like QEMU's downtime-limit; default: when <= 1/256 of the
                        image is dirty). The summary prints expected vs actual.
  --digest ALG          end-to-end image digest: xxh3 (default, XXH3-128, fast) or
                        sha256 (cryptographic); kept page by page while pages move,
                        so the switch-over does not rehash the image
  --register-buffers    with --backend io_uring: pin the image once as registered buffers
  --timeout SEC         connect timeout (default 10)
  --io-timeout SEC      no progress on a channel for SEC seconds ends the migration
                        (exit 1; default 30, 0 = wait forever). The wait for the
                        destination's confirmation adds 1 s per 64 MiB of image.
)";

std::unique_ptr<PageSource> MakeSource(const Args& a) {
  std::unique_ptr<MappedImage> img;
  if (a.has("input") == a.has("size")) {
    throw Error(ErrorKind::kUsage, EINVAL, "give exactly one of --input FILE or --size N");
  }
  if (a.has("input")) {
    img = MappedImage::FromFile(a.get("input"));
  } else {
    img = MappedImage::Anonymous(ParseSize(a.get("size"), "--size"));
    img->FillMixed(30, 42);
  }
  if (a.flag("live")) {
    // A file is read into memory (a snapshot), which the live writer may change.
    return std::make_unique<LiveImage>(std::move(img), ParseSize(a.get("dirty-rate", "64M"), "--dirty-rate"));
  }
  return img;
}

SourceOptions MakeSourceOptions(const Args& a, const std::string& connect) {
  SourceOptions o;
  o.address = connect;
  o.channels = static_cast<int>(a.number("channels", 4, 1, 64));
  o.max_iterations = static_cast<uint32_t>(a.number("max-iterations", 30, 1, UINT32_MAX));
  o.max_downtime = std::chrono::milliseconds(a.number("max-downtime", 0, 0, 86400000));
  o.digest = ParseDigestAlgorithm(a.get("digest", "xxh3"));
  o.connect_timeout = std::chrono::seconds(a.number("timeout", 10, 1, 86400));
  o.io_timeout = IoTimeout(a);
  o.security = BuildSecurity(a, TlsRole::kClient, HostOf(connect));
  return o;
}

}  // namespace

int CmdSend(int argc, char** argv) {
  Args a(argc, argv, 2,
         Join({"connect", "input", "size", "channels", "dirty-rate", "max-iterations", "max-downtime", "digest",
               "timeout", "io-timeout"},
              kSecValue),
         Join({"live", "register-buffers"}, kSecBool));
  if (a.flag("help")) {
    std::printf("%s%s", kSendHelp, kSecurityHelp);
    return 0;
  }
  if (!a.has("connect")) throw Error(ErrorKind::kUsage, EINVAL, "send needs --connect HOST:PORT (see --help)");
  SourceOptions o = MakeSourceOptions(a, a.get("connect"));
  o.register_buffers = a.flag("register-buffers");
  CheckJsonPath(a);
  auto src = MakeSource(a);
  Progress progress;
  o.progress = &progress;
  MigrationReport r;
  {
    ProgressBar bar(progress, !a.flag("quiet"), "send");
    r = RunSource(*src, o);
  }
  SideCpu cpu = SelfCpu();
  if (!a.flag("quiet")) {
    PrintReport("source", r, &cpu);
    std::printf("  %s\n", TlsLibraryLine(o.security).c_str());
  }
  nlohmann::json j = ReportJson("source", r, &cpu);
  j["tls"] = TlsJson(o.security);
  WriteJson(a, j);
  return 0;
}

}  // namespace ktm::cli

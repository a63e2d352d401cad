// Real QEMU live migrations through `tls-migrate tunnel` (make test-qemu,
// run by make test): two QEMU 7.2 processes under TCG, a 1 GiB guest whose
// /dev/shm holds 800 MiB of random data and which keeps rewriting 4 MiB a
// second while it migrates, the source side's tunnel on a UNIX socket and
// the destination side's tunnel forwarding to QEMU's incoming UNIX socket,
// with real certificates. Pass: query-migrate "completed", the destination
// paused (-S), pmemsave of all RAM hashing equal on both sides, and after
// "cont" the destination's guest prints on its console (it runs).
//
// Env (set by scripts/run-qemu-tests.sh): KTM_QEMU_KERNEL, KTM_QEMU_INITRD,
// KTM_CLI, KTM_RELAY. Waits are for events (a console line, a QMP status),
// each bounded.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <cstdlib>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/fd_wait.h"
#include "base/proc.h"
#include "channel/address.h"
#include "tests/cli_util.h"
#include "util/sha256.h"

namespace ktm {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::Subprocess;
using Clock = std::chrono::steady_clock;

std::string Env(const char* name) {
  const char* v = getenv(name);
  return v ? v : "";
}

// Guest RAM in KiB: 1 GiB and 8 KiB (KTM_QEMU_RAM_KIB overrides). Why the
// 8 KiB: QEMU before 9.0 (upstream commit 03bfc2188f, "physmem: Fix
// migration dirty bitmap coherency with TCG memory access"; Debian 12's
// 7.2.22 does not carry it) clears the migration dirty bits of a RAM block
// whose size is a multiple of 64 pages without resetting TCG's TLB entries,
// so a guest store through such an entry is never marked dirty and may never
// be sent: a few pages of the destination keep an older copy. A block size
// that is not a multiple of 64 pages takes QEMU's per-page path, which does
// reset them. Our streams are checked on their own (--stream-digest).
uint64_t RamKib() {
  return Env("KTM_QEMU_RAM_KIB").empty() ? (1ull << 20) + 8 : std::stoull(Env("KTM_QEMU_RAM_KIB"));
}
const uint64_t kRamBytes = RamKib() << 10;

using testing::Has;

std::string ReadFileText(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

bool WaitForFileText(const std::string& path, const std::string& needle, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    if (Has(ReadFileText(path), needle)) return true;
    std::this_thread::sleep_for(100ms);
  }
  return false;
}

// A QMP connection: JSON lines over a UNIX socket.
class Qmp {
 public:
  explicit Qmp(const std::string& path) {
    const auto deadline = Clock::now() + 30s;
    for (;;) {
      try {
        fd_ = ConnectStream("unix:" + path, 2s);
        break;
      } catch (const Error&) {
        if (Clock::now() > deadline) throw;
        std::this_thread::sleep_for(50ms);
      }
    }
    ReadLine();  // greeting
    Execute("qmp_capabilities");
  }

  // Runs a command; returns "return" or throws with QEMU's error.
  json Execute(const std::string& cmd, const json& args = nullptr) {
    json req = {{"execute", cmd}};
    if (!args.is_null()) req["arguments"] = args;
    const std::string line = req.dump() + "\n";
    if (::send(fd_.get(), line.data(), line.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(line.size())) {
      throw std::runtime_error("QMP send failed");
    }
    for (;;) {
      json r = json::parse(ReadLine());
      if (r.contains("return")) return r["return"];
      if (r.contains("error")) throw std::runtime_error(cmd + ": " + r["error"].dump());
      // events: skip
    }
  }

 private:
  std::string ReadLine() {
    for (;;) {
      const auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return line;
      }
      if (!WaitFdReadable(fd_.get(), 120s)) throw std::runtime_error("QMP: no answer within 120 s");
      char tmp[4096];
      ssize_t n = ::recv(fd_.get(), tmp, sizeof(tmp), 0);
      if (n <= 0) throw std::runtime_error("QMP connection closed");
      buf_.append(tmp, static_cast<size_t>(n));
    }
  }
  UniqueFd fd_;
  std::string buf_;
};

struct Guest {
  std::string name, dir;
  std::unique_ptr<Subprocess> proc;
  std::unique_ptr<Qmp> qmp;
  std::string serial() const { return dir + "/" + name + ".serial"; }
  std::string qmp_path() const { return dir + "/" + name + ".qmp"; }
};

std::unique_ptr<Guest> StartQemu(const std::string& dir, const std::string& name, bool incoming, int fill_mib,
                                 const std::vector<std::string>& extra = {}) {
  auto g = std::make_unique<Guest>();
  g->name = name;
  g->dir = dir;
  std::vector<std::string> args = {"qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", std::to_string(RamKib()) + "k", "-smp", "1",
                                   "-display", "none", "-vga", "none", "-nic", "none", "-monitor", "none",
                                   "-serial", "file:" + g->serial(), "-qmp", "unix:" + g->qmp_path() + ",server=on,wait=off",
                                   "-kernel", Env("KTM_QEMU_KERNEL"), "-initrd", Env("KTM_QEMU_INITRD"), "-append",
                                   "console=ttyS0 quiet panic=-1 ktm_fill=" + std::to_string(fill_mib)};
  // QEMU's own count of multifd packets and pages per channel, printed when
  // each channel's thread ends (log trace backend, to stderr): what the
  // source sent against what the destination read (MultifdAccount).
  args.insert(args.end(), {"-trace", "multifd_send_thread_end", "-trace", "multifd_recv_thread_end"});
  args.insert(args.end(), extra.begin(), extra.end());
  if (incoming) args.insert(args.end(), {"-incoming", "defer", "-S"});
  g->proc = std::make_unique<Subprocess>(args);
  g->qmp = std::make_unique<Qmp>(g->qmp_path());
  return g;
}

// Per multifd channel: packets and pages, from QEMU's trace lines
// "multifd_send_thread_end channel 0 packets 12 normal pages 345" (source)
// and "multifd_recv_thread_end channel 0 packets 12 pages 345" (destination)
// in `log`; the last line per channel wins.
std::map<int, std::pair<uint64_t, uint64_t>> MultifdThreadEnd(const std::string& log, const std::string& event) {
  std::map<int, std::pair<uint64_t, uint64_t>> out;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find(event + " channel ");
    if (at == std::string::npos) continue;
    std::istringstream f(line.substr(at + event.size()));
    std::string w;
    int ch = -1;
    uint64_t packets = 0, pages = 0;
    while (f >> w) {
      if (w == "channel") f >> ch;
      if (w == "packets") f >> packets;
      if (w == "pages") f >> pages;
    }
    if (ch >= 0) out[ch] = {packets, pages};
  }
  return out;
}

// "channel: packets sent/read, pages sent/read" for each multifd channel,
// and whether the destination left packets unread (and pages with them).
struct MultifdAccount {
  std::string text;
  bool complete = false;  // both sides printed every channel
  uint64_t unread_packets = 0, unread_pages = 0;
};

MultifdAccount AccountMultifd(const std::string& src_log, const std::string& dst_log, size_t channels) {
  const auto sent = MultifdThreadEnd(src_log, "multifd_send_thread_end");
  const auto read = MultifdThreadEnd(dst_log, "multifd_recv_thread_end");
  MultifdAccount a;
  a.complete = sent.size() == channels && read.size() == channels;
  for (const auto& [ch, s] : sent) {
    const auto r = read.count(ch) ? read.at(ch) : std::pair<uint64_t, uint64_t>{0, 0};
    a.text += (a.text.empty() ? "" : ", ") + std::to_string(ch) + ": " + std::to_string(s.first) + "/" +
              std::to_string(r.first) + " packets, " + std::to_string(s.second) + "/" + std::to_string(r.second) + " pages";
    if (s.first > r.first) a.unread_packets += s.first - r.first;
    if (s.second > r.second) a.unread_pages += s.second - r.second;
  }
  return a;
}

// Waits (bounded) until both QEMUs have printed their multifd thread ends
// for `channels` channels, then accounts. `src_from`: where this run's part
// of a reused source's output starts.
MultifdAccount WaitMultifdAccount(Subprocess& src, size_t src_from, Subprocess& dst, int channels) {
  MultifdAccount a;
  const auto by = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  do {
    const std::string so = src.output();
    a = AccountMultifd(so.size() > src_from ? so.substr(src_from) : "", dst.output(), static_cast<size_t>(channels));
    if (a.complete) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < by);
  return a;
}

std::string FileSha256(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), buf.size());
    h.Update(buf.data(), static_cast<size_t>(f.gcount()));
  }
  return Sha256::Hex(h.Final());
}

const std::string& Pki() { return testing::SharedPki("ktm-qemu-pki"); }

struct Tunnels {
  std::unique_ptr<Subprocess> dst, src, relay;
  std::string src_sock;
  std::string Outputs() {
    return "--- tunnel dst:\n" + dst->output() + "--- tunnel src:\n" + src->output() +
           (relay ? "--- relay:\n" + relay->output() : "");
  }
};

std::string PortFrom(const std::string& out) { return testing::ListeningPort(out); }

// dst tunnel -> QEMU's incoming socket; src tunnel on a UNIX socket for the
// source QEMU; optionally a fault relay between them. `stream_digest`: both
// ends prove their streams byte-exact (StreamsExact); the timed benchmark
// leaves the extra hashing out.
Tunnels StartTunnels(const std::string& dir, const std::string& incoming_sock, const std::string& dst_pki,
                     const std::vector<std::string>& relay_faults = {}, const std::string& resume = "",
                     bool stream_digest = true) {
  Tunnels t;
  const std::vector<std::string> digest =
      stream_digest ? std::vector<std::string>{"--stream-digest"} : std::vector<std::string>{};
  std::vector<std::string> d = {testing::Cli(), "tunnel", "--tls-listen", "127.0.0.1:0", "--forward",
                                "unix:" + incoming_sock, "--tls-creds", dst_pki};
  d.insert(d.end(), digest.begin(), digest.end());
  t.dst = std::make_unique<Subprocess>(d);
  EXPECT_TRUE(t.dst->WaitFor("listening on", 30s)) << t.dst->output();
  std::string port = PortFrom(t.dst->output());
  if (!relay_faults.empty()) {
    std::vector<std::string> r = {testing::Relay(), "--listen", "127.0.0.1:0", "--connect", "127.0.0.1:" + port};
    for (const auto& f : relay_faults) r.insert(r.end(), {"--fault", f});
    if (!resume.empty()) r.insert(r.end(), {"--resume-file", resume});
    t.relay = std::make_unique<Subprocess>(r);
    EXPECT_TRUE(t.relay->WaitFor("listening on", 30s)) << t.relay->output();
    port = PortFrom(t.relay->output());
  }
  t.src_sock = dir + "/src-mig.sock";
  std::vector<std::string> src = {testing::Cli(), "tunnel", "--listen", "unix:" + t.src_sock, "--connect",
                                  "127.0.0.1:" + port, "--tls-creds", Pki(), "--tls-hostname", "localhost"};
  src.insert(src.end(), digest.begin(), digest.end());
  t.src = std::make_unique<Subprocess>(src);
  EXPECT_TRUE(t.src->WaitFor("listening on", 30s)) << t.src->output();
  return t;
}

// Did the tunnel deliver exactly what QEMU gave it, each way, on every
// connection? Both ends ran with --stream-digest; their digests per
// connection must be the same. `why` says which differ or are missing.
bool StreamsExact(const std::string& src_out, const std::string& dst_out, std::string* why) {
  const auto s = testing::PrintedStreamDigests(src_out), d = testing::PrintedStreamDigests(dst_out);
  bool ok = !s.empty() && s.size() == d.size();
  *why = std::to_string(s.size()) + " connection(s) with digests on the source end, " + std::to_string(d.size()) +
         " on the destination end";
  auto text = [](const std::pair<std::string, std::string>& ud) { return "up " + ud.first + ", down " + ud.second; };
  for (const auto& [seq, dig] : s) {
    if (!d.count(seq) || d.at(seq) != dig) {
      ok = false;
      *why += "; connection " + std::to_string(seq) + ": source " + text(dig) + " / destination " +
              (d.count(seq) ? text(d.at(seq)) : std::string("(none)"));
    }
  }
  return ok;
}

void EnableMultifd(Guest& g, int channels) {
  g.qmp->Execute("migrate-set-capabilities", {{"capabilities", {{{"capability", "multifd"}, {"state", true}}}}});
  g.qmp->Execute("migrate-set-parameters", {{"multifd-channels", channels}});
}

// Polls query-migrate until a final state; returns the last answer.
json WaitMigration(Guest& src, std::chrono::seconds timeout) {
  const auto deadline = Clock::now() + timeout;
  json last;
  while (Clock::now() < deadline) {
    last = src.qmp->Execute("query-migrate");
    const std::string st = last.value("status", "");
    if (st == "completed" || st == "failed" || st == "cancelled") return last;
    // Short: the destination is looked at right after (WaitIncomingDone
    // records what it said then).
    std::this_thread::sleep_for(20ms);
  }
  return last;
}

// Which 4 KiB pages of two RAM dumps differ: count and the first few
// guest-physical addresses (a failure must say where, not only that).
struct RamDiff {
  uint64_t pages = 0;
  std::string first;  // " 0x..." for up to 8 pages
  std::string Describe() const { return std::to_string(pages) + " page(s) differ" + (pages ? ", first at" + first : ""); }
};

RamDiff DiffPages(const std::string& a, const std::string& b) {
  std::ifstream fa(a, std::ios::binary), fb(b, std::ios::binary);
  constexpr size_t kPage = 4096, kBatch = 256;
  std::vector<char> pa(kPage * kBatch), pb(kPage * kBatch);
  RamDiff d;
  for (uint64_t base = 0;; base += kBatch) {
    fa.read(pa.data(), static_cast<std::streamsize>(pa.size()));
    fb.read(pb.data(), static_cast<std::streamsize>(pb.size()));
    const size_t n = static_cast<size_t>(std::min(fa.gcount(), fb.gcount())) / kPage;
    for (size_t i = 0; i < n; ++i) {
      const char *x = pa.data() + i * kPage, *y = pb.data() + i * kPage;
      if (std::memcmp(x, y, kPage) == 0) continue;
      if (++d.pages <= 8) {
        // Which bytes of the page differ: a whole page of other data (an
        // older copy of random memory) or a torn part of it.
        size_t first = kPage, last = 0, count = 0;
        for (size_t k = 0; k < kPage; ++k) {
          if (x[k] == y[k]) continue;
          first = std::min(first, k);
          last = k;
          ++count;
        }
        char buf[96];
        std::snprintf(buf, sizeof(buf), " 0x%llx (%zu bytes differ in %zu..%zu)",
                      static_cast<unsigned long long>((base + i) * kPage), count, first, last);
        d.first += buf;
      }
    }
    if (n < kBatch) return d;
  }
}

// The source's "completed" only means QEMU 7.2 has sent everything (without
// the return-path capability it does not wait for the destination): the
// destination may still be loading the last pages from its multifd channels,
// in runstate "inmigrate", which also reads as not running. Dumping its RAM
// then compares a partly loaded image. So wait for the destination's own
// incoming migration to reach a final state and for its runstate to be
// exactly "paused" (-S), bounded. Returns the destination's query-status
// and, in *seen_first, what the destination said at the first look.
json WaitIncomingDone(Guest& dst, std::chrono::seconds timeout, std::string* seen_first) {
  const auto deadline = Clock::now() + timeout;
  json status;
  for (bool first = true; Clock::now() < deadline; first = false) {
    const json m = dst.qmp->Execute("query-migrate");
    status = dst.qmp->Execute("query-status");
    const std::string mig = m.value("status", ""), run = status.value("status", "");
    if (first && seen_first) *seen_first = "incoming " + (mig.empty() ? std::string("(none)") : mig) + ", runstate " + run;
    if ((mig == "completed" || mig == "failed") && run != "inmigrate") return status;
    std::this_thread::sleep_for(50ms);
  }
  return status;
}

struct Outcome {
  json migrate;
  std::string src_hash, dst_hash, ram_diff, dst_at_src_completed;
  MultifdAccount multifd;
  bool dst_paused = false, dst_runs_after_cont = false;
  bool streams_exact = false;  // every connection's digests equal on both tunnel ends
  std::string streams;         // what StreamsExact said
};

// One full migration through the tunnels: the pass criteria of the issue.
Outcome Migrate(int multifd, const std::vector<std::string>& relay_faults = {}, bool delay_first = false) {
  testing::TempDir dir("ktm-qemu");
  Outcome o;
  auto dst = StartQemu(dir.path, "dst", /*incoming=*/true, 800);
  auto src = StartQemu(dir.path, "src", /*incoming=*/false, 800);
  EXPECT_TRUE(WaitForFileText(src->serial(), "KTM-GUEST: TICK 1", 240s)) << ReadFileText(src->serial());
  const std::string incoming = dir.path + "/dst-mig.sock";
  const std::string resume = dir.path + "/resume";
  Tunnels t = StartTunnels(dir.path, incoming, Pki(), relay_faults, delay_first ? resume : "");
  if (multifd) {
    EnableMultifd(*src, multifd);
    EnableMultifd(*dst, multifd);
  }
  // QEMU 7.2 caps migration at 128 MiB/s by default.
  src->qmp->Execute("migrate-set-parameters", {{"max-bandwidth", 10ll << 30}, {"downtime-limit", 300}});
  dst->qmp->Execute("migrate-incoming", {{"uri", "unix:" + incoming}});
  src->qmp->Execute("migrate", {{"uri", "unix:" + t.src_sock}});
  if (delay_first) {
    // The first TLS connection to reach the relay is held there until the others
    // (multifd) have arrived: the destination must still forward it first.
    // The other connections authenticate while the held one waits: the
    // point of the test. (Which one the relay holds depends on which TLS
    // connection reaches it first, so count, do not name them.)
    EXPECT_TRUE(testing::WaitForCount(*t.dst, " authenticated (from", multifd, 60s)) << t.Outputs();
    std::ofstream(resume).put('1');
  }
  o.migrate = WaitMigration(*src, 300s);
  const std::string st = o.migrate.value("status", "");
  EXPECT_EQ(st, "completed") << o.migrate.dump(1) << t.Outputs();
  if (st != "completed") return o;
  const json status = WaitIncomingDone(*dst, 120s, &o.dst_at_src_completed);
  o.dst_paused = status.value("status", "") == "paused";
  EXPECT_TRUE(o.dst_paused) << status.dump() << " (first look: " << o.dst_at_src_completed << ")";
  if (multifd) o.multifd = WaitMultifdAccount(*src->proc, 0, *dst->proc, multifd);
  src->qmp->Execute("pmemsave", {{"val", 0}, {"size", kRamBytes}, {"filename", dir.path + "/src.mem"}});
  dst->qmp->Execute("pmemsave", {{"val", 0}, {"size", kRamBytes}, {"filename", dir.path + "/dst.mem"}});
  o.src_hash = FileSha256(dir.path + "/src.mem");
  o.dst_hash = FileSha256(dir.path + "/dst.mem");
  if (o.src_hash != o.dst_hash) o.ram_diff = DiffPages(dir.path + "/src.mem", dir.path + "/dst.mem").Describe();
  std::remove((dir.path + "/src.mem").c_str());
  std::remove((dir.path + "/dst.mem").c_str());
  dst->qmp->Execute("cont");
  o.dst_runs_after_cont = WaitForFileText(dst->serial(), "KTM-GUEST: TICK", 60s);
  std::printf("  migration: total-time %lld ms, downtime %lld ms, transferred %lld MiB; RAM sha256 %s / %s;"
              " destination when the source completed: %s\n",
              o.migrate.value("total-time", 0ll), o.migrate.value("downtime", 0ll),
              o.migrate.contains("ram") ? o.migrate["ram"].value("transferred", 0ll) >> 20 : 0ll,
              o.src_hash.substr(0, 16).c_str(), o.dst_hash.substr(0, 16).c_str(), o.dst_at_src_completed.c_str());
  if (multifd) std::printf("  multifd sent/read by QEMU: %s\n", o.multifd.text.c_str());
  // The tunnels report one line per connection: kTLS or userspace TLS, bytes.
  t.src->Signal(SIGTERM);
  t.dst->Signal(SIGTERM);
  t.src->Wait(30s);
  t.dst->Wait(30s);
  const std::string tun = t.Outputs();
  EXPECT_TRUE(Has(tun, "connection 0")) << tun;
  std::printf("%s", t.dst->output().c_str());
  o.streams_exact = StreamsExact(t.src->output(), t.dst->output(), &o.streams);
  EXPECT_TRUE(o.streams_exact) << "the tunnel did not deliver exactly what QEMU sent: " << o.streams << "\n" << tun;
  std::printf("  tunnel streams: %s, %s\n", o.streams_exact ? "byte-exact (digests equal on both ends)" : "DIFFER",
              o.streams.c_str());
  return o;
}

void ExpectMigrated(const Outcome& o) {
  EXPECT_EQ(o.migrate.value("status", ""), "completed");
  EXPECT_TRUE(o.dst_paused);
  EXPECT_EQ(o.src_hash.size(), 64u);
  EXPECT_EQ(o.src_hash, o.dst_hash) << o.ram_diff;
  EXPECT_TRUE(o.dst_runs_after_cont);
}

// A RAM difference is the tunnel's unless the tunnel proves otherwise: when
// every connection's stream digests were equal on both tunnel ends, QEMU's
// destination received exactly the bytes QEMU's source sent, so the
// difference was made by QEMU (README: "RAM differences that are QEMU's").
// Only then is the migration run once more, said loudly, and that second
// run must pass everything. Any other failure fails at once.
Outcome MigrateAttributed(int multifd, const std::vector<std::string>& relay_faults = {}, bool delay_first = false) {
  Outcome o = Migrate(multifd, relay_faults, delay_first);
  if (o.migrate.value("status", "") == "completed" && o.dst_paused && o.streams_exact && o.src_hash != o.dst_hash) {
    std::printf("  RAM differs (%s) although the tunnel delivered every byte exactly (%s): the difference is QEMU's "
                "own; migrating once more\n",
                o.ram_diff.c_str(), o.streams.c_str());
    std::fflush(stdout);
    o = Migrate(multifd, relay_faults, delay_first);
  }
  return o;
}

TEST(QemuTunnel, LiveMigrationMultifdOff) { ExpectMigrated(MigrateAttributed(0)); }

class QemuTunnelMultifd : public ::testing::TestWithParam<int> {};
TEST_P(QemuTunnelMultifd, LiveMigrationMultifdFourChannels) { ExpectMigrated(MigrateAttributed(4)); }
INSTANTIATE_TEST_SUITE_P(FiveRuns, QemuTunnelMultifd, ::testing::Range(1, 6));

// The source side's first connection to reach the relay (usually QEMU's main
// stream; the source side connects in parallel) is held back at a
// relay until the four multifd connections have been accepted: the
// destination side must still connect QEMU's incoming socket in the source's
// order, or QEMU fails ("multifd: received packet magic ... expected").
TEST(QemuTunnel, FirstConnectionDelayedStillArrivesFirst) {
  ExpectMigrated(MigrateAttributed(4, {"stall:up:0:0"}, /*delay_first=*/true));
}

// A destination tunnel with the wrong CA: the source QEMU reaches "failed"
// (never hangs) and the destination QEMU survives.
TEST(QemuTunnel, WrongCaFailsTheMigrationCleanly) {
  testing::TempDir dir("ktm-qemu");
  testing::TempDir other("ktm-qemu-otherpki");
  testing::GenerateCerts(other.path + "/pki", "localhost", "127.0.0.1");
  auto dst = StartQemu(dir.path, "dst", true, 16);
  auto src = StartQemu(dir.path, "src", false, 16);
  ASSERT_TRUE(WaitForFileText(src->serial(), "KTM-GUEST: TICK 0", 240s));
  const std::string incoming = dir.path + "/dst-mig.sock";
  Tunnels t = StartTunnels(dir.path, incoming, other.path + "/pki");
  dst->qmp->Execute("migrate-incoming", {{"uri", "unix:" + incoming}});
  src->qmp->Execute("migrate", {{"uri", "unix:" + t.src_sock}});
  const json m = WaitMigration(*src, 120s);
  EXPECT_EQ(m.value("status", ""), "failed") << m.dump(1) << t.Outputs();
  EXPECT_TRUE(Has(t.Outputs(), "rejected connection") || Has(t.Outputs(), "not signed by a trusted CA")) << t.Outputs();
  // The destination QEMU is alive and still waiting for a migration.
  const json st = dst->qmp->Execute("query-status");
  EXPECT_EQ(st.value("status", ""), "inmigrate") << st.dump();
}

// The source tunnel killed mid-migration: the source QEMU reaches "failed"
// quickly, no hang.
TEST(QemuTunnel, SourceTunnelKilledFailsTheMigration) {
  testing::TempDir dir("ktm-qemu");
  auto dst = StartQemu(dir.path, "dst", true, 800);
  auto src = StartQemu(dir.path, "src", false, 800);
  ASSERT_TRUE(WaitForFileText(src->serial(), "KTM-GUEST: TICK 0", 240s));
  const std::string incoming = dir.path + "/dst-mig.sock";
  Tunnels t = StartTunnels(dir.path, incoming, Pki());
  src->qmp->Execute("migrate-set-parameters", {{"max-bandwidth", 64ll << 20}});  // slow enough to interrupt
  dst->qmp->Execute("migrate-incoming", {{"uri", "unix:" + incoming}});
  src->qmp->Execute("migrate", {{"uri", "unix:" + t.src_sock}});
  bool moving = false;
  for (int i = 0; i < 600 && !moving; ++i) {
    const json m = src->qmp->Execute("query-migrate");
    moving = m.contains("ram") && m["ram"].value("transferred", 0ll) > (64ll << 20);
    if (!moving) std::this_thread::sleep_for(100ms);
  }
  ASSERT_TRUE(moving) << t.Outputs();
  t.src->Signal(SIGKILL);
  const auto t0 = Clock::now();
  const json m = WaitMigration(*src, 60s);
  EXPECT_EQ(m.value("status", ""), "failed") << m.dump(1);
  EXPECT_LT(Clock::now() - t0, 30s);
}


// ---------------------------------------------------------------------------
// make bench-qemu (KTM_QEMU_BENCH=1): the same guest migrated (a) plain over
// UNIX, (b) with QEMU's built-in TLS (tls-creds-x509), (c) through our
// tunnel, (d) through a socat OpenSSL tunnel; without and with multifd (4);
// three runs each, medians printed: QEMU's total-time, downtime and
// transferred bytes, and the CPU seconds of the tunnel processes.

// utime+stime of a process plus what its reaped children used, in seconds.
double OwnCpuSeconds(pid_t pid, pid_t* ppid = nullptr) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(f)), {});
  const auto rp = s.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream in(s.substr(rp + 2));
  std::string tok;
  std::vector<std::string> fields;
  while (in >> tok) fields.push_back(tok);
  // after ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
  if (fields.size() < 15) return 0;
  if (ppid) *ppid = static_cast<pid_t>(std::stol(fields[1]));
  const double hz = static_cast<double>(sysconf(_SC_CLK_TCK));
  return (std::stod(fields[11]) + std::stod(fields[12]) + std::stod(fields[13]) + std::stod(fields[14])) / hz;
}

// CPU seconds of a process tree: socat forks one child per connection, and
// the children still alive when the migration completes have not been
// reaped into the parent's cutime yet, so they are counted one by one.
double TreeCpuSeconds(pid_t root) {
  std::map<pid_t, std::pair<pid_t, double>> procs;  // pid -> (ppid, cpu)
  for (const auto& e : std::filesystem::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    pid_t ppid = 0;
    const pid_t pid = static_cast<pid_t>(std::stol(name));
    const double cpu = OwnCpuSeconds(pid, &ppid);
    procs[pid] = {ppid, cpu};
  }
  double total = 0;
  for (const auto& [pid, v] : procs) {
    for (pid_t p = pid; p > 1;) {
      if (p == root) {
        total += v.second;
        break;
      }
      const auto it = procs.find(p);
      if (it == procs.end()) break;
      p = it->second.first;
    }
  }
  return total;
}

int g_bench_runs = 0;

struct BenchRun {
  bool ok = false;
  double total_ms = 0, downtime_ms = 0, mib = 0, tunnel_cpu = 0;
  std::string why;
  // Every completed run is verified: the destination's own incoming
  // migration completed, then all RAM of both sides compared page by page.
  bool ram_equal = false;
  RamDiff diff;
  std::string dst_first;  // the destination's state when the source completed
  MultifdAccount multifd;
  std::string tunnel_failures;  // the tunnel ends' "FAILED" lines, if any
  bool streams_exact = false;   // make stress-qemu, tunnel mode: StreamsExact
  std::string streams;
};

// The "connection N FAILED (...)" lines of a tunnel end's output.
std::string FailedLines(const std::string& out) {
  std::istringstream in(out);
  std::string lines;
  for (std::string line; std::getline(in, line);) {
    const auto at = line.find(" FAILED (");
    if (at != std::string::npos) lines += "\n      " + line.substr(0, line.find("): ", at) + 1);
  }
  return lines;
}

// The source guest boots once (filling 800 MiB of random memory under TCG
// takes minutes) and serves every run: after a completed migration it is
// in "postmigrate" and `cont` resumes it; it has no disks, so nothing was
// handed over that it cannot take back. Each run gets a fresh destination.
BenchRun BenchOnce(Guest& src, const std::string& dir, const std::string& mode, int multifd) {
  BenchRun r;
  const size_t src_log_from = src.proc->output().size();
  const std::string pki = Pki();
  const std::string run_dir = dir + "/run" + std::to_string(++g_bench_runs);
  mkdir(run_dir.c_str(), 0700);
  std::vector<std::string> extra_dst;
  if (mode == "qemu-tls") {
    extra_dst = {"-object", "tls-creds-x509,id=tls0,dir=" + pki + ",endpoint=server,verify-peer=on"};
  }
  auto dst = StartQemu(run_dir, "dst", true, 800, extra_dst);
  const std::string incoming = run_dir + "/dst-mig.sock", outgoing = run_dir + "/src-mig.sock";
  std::unique_ptr<Subprocess> t_src, t_dst;
  std::string dst_uri = "unix:" + incoming, src_uri = "unix:" + incoming;
  const int port = testing::FreePort();
  // make stress-qemu proves every tunnel stream byte-exact.
  const bool stress = !Env("KTM_QEMU_STRESS").empty();
  if (mode == "tunnel") {
    Tunnels t = StartTunnels(run_dir, incoming, pki, {}, "", /*stream_digest=*/stress);
    t_dst = std::move(t.dst);
    t_src = std::move(t.src);
    src_uri = "unix:" + t.src_sock;
  } else if (mode == "socat") {
    t_dst = std::make_unique<Subprocess>(std::vector<std::string>{
        "socat", "OPENSSL-LISTEN:" + std::to_string(port) + ",bind=127.0.0.1,reuseaddr,fork,cert=" + pki +
                     "/server-cert.pem,key=" + pki + "/server-key.pem,cafile=" + pki + "/ca-cert.pem,verify=1",
        "UNIX-CONNECT:" + incoming});
    t_src = std::make_unique<Subprocess>(std::vector<std::string>{
        "socat", "UNIX-LISTEN:" + outgoing + ",fork",
        "OPENSSL:127.0.0.1:" + std::to_string(port) + ",cert=" + pki + "/client-cert.pem,key=" + pki +
            "/client-key.pem,cafile=" + pki + "/ca-cert.pem,commonname=localhost"});
    // socat prints nothing when ready: wait for its socket file and port.
    const auto ready_by = Clock::now() + 30s;
    while ((access(outgoing.c_str(), F_OK) != 0 || !TcpPortListening(port)) && Clock::now() < ready_by) {
      std::this_thread::sleep_for(10ms);
    }
    src_uri = "unix:" + outgoing;
  } else if (mode == "qemu-tls") {
    dst_uri = "tcp:127.0.0.1:" + std::to_string(port);
    src_uri = dst_uri;
  }
  // QEMU's TLS only in its own mode; the source's object exists throughout.
  src.qmp->Execute("migrate-set-parameters", {{"tls-creds", mode == "qemu-tls" ? "tls0" : ""},
                                             {"tls-hostname", mode == "qemu-tls" ? "localhost" : ""}});
  if (mode == "qemu-tls") dst->qmp->Execute("migrate-set-parameters", {{"tls-creds", "tls0"}});
  for (Guest* g : {&src, dst.get()}) {
    g->qmp->Execute("migrate-set-capabilities", {{"capabilities", {{{"capability", "multifd"}, {"state", multifd > 0}}}}});
    if (multifd) g->qmp->Execute("migrate-set-parameters", {{"multifd-channels", multifd}});
  }
  src.qmp->Execute("migrate-set-parameters", {{"max-bandwidth", 10ll << 30}, {"downtime-limit", 300}});
  dst->qmp->Execute("migrate-incoming", {{"uri", dst_uri}});
  src.qmp->Execute("migrate", {{"uri", src_uri}});
  const json m = WaitMigration(src, 300s);
  for (auto* t : {t_src.get(), t_dst.get()}) {
    if (t) r.tunnel_cpu += TreeCpuSeconds(t->pid());
  }
  if (m.value("status", "") != "completed") {
    r.why = "status " + m.value("status", std::string("?")) + " " + m.value("error-desc", std::string());
    // Keep what every process said: a failed run must be explainable later.
    const std::string log = "/tmp/ktm-qbench-" + mode + "-mf" + std::to_string(multifd) + "-" +
                            std::to_string(getpid()) + "-" + std::to_string(g_bench_runs) + ".log";
    std::ofstream out(log);
    out << "query-migrate: " << m.dump(1) << "\n";
    for (Guest* g : {&src, dst.get()}) {
      siginfo_t si{};  // WNOWAIT: look without reaping (the Subprocess reaps)
      const bool exited = waitid(P_PID, static_cast<id_t>(g->proc->pid()), &si, WEXITED | WNOHANG | WNOWAIT) == 0 &&
                          si.si_pid == g->proc->pid();
      out << "== QEMU " << g->name << (exited ? " (exited)" : " (running)") << " ==\n" << g->proc->output()
          << "\n-- serial --\n" << ReadFileText(g->serial()) << "\n";
    }
    if (t_src) out << "== tunnel/socat source side ==\n" << t_src->output() << "\n";
    if (t_dst) out << "== tunnel/socat destination side ==\n" << t_dst->output() << "\n";
    r.why += " (log: " + log + ")";
    if (m.value("status", "") == "active") src.qmp->Execute("migrate_cancel");
  } else {
    r.ok = true;
    r.total_ms = m.value("total-time", 0.0);
    r.downtime_ms = m.value("downtime", 0.0);
    r.mib = m.contains("ram") ? m["ram"].value("transferred", 0.0) / (1 << 20) : 0;
    const json st = WaitIncomingDone(*dst, 120s, &r.dst_first);
    if (st.value("status", "") != "paused") {
      r.ok = false;
      r.why = "destination not paused after the migration: " + st.dump() + " (first look: " + r.dst_first + ")";
    } else {
      src.qmp->Execute("pmemsave", {{"val", 0}, {"size", kRamBytes}, {"filename", run_dir + "/src.mem"}});
      dst->qmp->Execute("pmemsave", {{"val", 0}, {"size", kRamBytes}, {"filename", run_dir + "/dst.mem"}});
      r.diff = DiffPages(run_dir + "/src.mem", run_dir + "/dst.mem");
      if (multifd) r.multifd = WaitMultifdAccount(*src.proc, src_log_from, *dst->proc, multifd);
      if (mode == "tunnel") {
        // Both ends' verdicts on every connection: stop them (SIGTERM ends
        // the idle ones) and keep what they said about failures.
        for (auto* t : {t_src.get(), t_dst.get()}) {
          t->Signal(SIGTERM);
          t->Wait(30s);
          r.tunnel_failures += FailedLines(t->output());
        }
        if (stress) r.streams_exact = StreamsExact(t_src->output(), t_dst->output(), &r.streams);
      }
      r.ram_equal = r.diff.pages == 0;
      std::remove((run_dir + "/src.mem").c_str());
      std::remove((run_dir + "/dst.mem").c_str());
    }
  }
  // Take the source back for the next run, and wait until it runs again.
  const auto ticks_before = ReadFileText(src.serial()).size();
  WaitMigration(src, 60s);
  src.qmp->Execute("cont");
  const auto back_by = Clock::now() + 60s;
  while (ReadFileText(src.serial()).size() == ticks_before && Clock::now() < back_by) std::this_thread::sleep_for(50ms);
  return r;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

TEST(QemuBench, SideBySide) {
  if (Env("KTM_QEMU_BENCH") != "1") GTEST_SKIP() << "make bench-qemu runs this";
  const int runs = Env("KTM_QEMU_BENCH_RUNS").empty() ? 3 : std::stoi(Env("KTM_QEMU_BENCH_RUNS"));
  struct Row {
    std::string mode;
    int multifd;
    std::vector<double> total, down, mib, cpu;
    std::string fail;
    int ram_equal = 0;
  };
  std::vector<Row> rows;
  testing::TempDir dir("ktm-qbench");
  auto src = StartQemu(dir.path, "src", false, 800,
                       {"-object", "tls-creds-x509,id=tls0,dir=" + Pki() + ",endpoint=client,verify-peer=on"});
  ASSERT_TRUE(WaitForFileText(src->serial(), "KTM-GUEST: TICK 1", 240s)) << ReadFileText(src->serial());
  for (int multifd : {0, 4}) {
    for (const std::string mode : {"plain", "qemu-tls", "tunnel", "socat"}) {
      Row row{mode, multifd, {}, {}, {}, {}, "", 0};
      for (int i = 0; i < runs; ++i) {
        BenchRun b;
        try {
          b = BenchOnce(*src, dir.path, mode, multifd);
        } catch (const std::exception& e) {
          b.why = e.what();  // e.g. a QEMU exited and its QMP socket closed
        }
        std::fprintf(stderr, "  %-8s multifd %d run %d: %s\n", mode.c_str(), multifd, i + 1,
                     b.ok ? (std::to_string(b.total_ms) + " ms, RAM " + b.diff.Describe()).c_str() : b.why.c_str());
        if (!b.ok) {
          row.fail = b.why;
          continue;
        }
        row.ram_equal += b.ram_equal ? 1 : 0;
        row.total.push_back(b.total_ms);
        row.down.push_back(b.downtime_ms);
        row.mib.push_back(b.mib);
        row.cpu.push_back(b.tunnel_cpu);
      }
      rows.push_back(row);
    }
  }
  std::printf("\nQEMU 7.2 live migration, %llu KiB guest (800 MiB random, dirtying 4 MiB/s), TCG, medians of %d runs\n",
              (unsigned long long)RamKib(), runs);
  std::printf("%-10s %7s %10s %9s %9s %11s %10s  %-8s %s\n", "mode", "multifd", "total ms", "downtime", "MiB", "tunnel CPU",
              "CPU s/GiB", "runs ok", "RAM equal");
  for (const auto& r : rows) {
    const double cpu_per_gib = Median(r.mib) > 0 ? Median(r.cpu) / (Median(r.mib) / 1024) : 0;
    std::printf("%-10s %7d %10.0f %9.0f %9.0f %11.2f %10.2f  %zu/%-6d %d/%zu%s\n", r.mode.c_str(), r.multifd, Median(r.total),
                Median(r.down), Median(r.mib), Median(r.cpu), cpu_per_gib, r.total.size(), runs, r.ram_equal,
                r.total.size(), r.fail.empty() ? "" : ("  (failed: " + r.fail + ")").c_str());
  }
  auto med = [&](const std::string& mode, int mf) -> const Row* {
    for (const auto& r : rows) {
      if (r.mode == mode && r.multifd == mf && !r.total.empty()) return &r;
    }
    return nullptr;
  };
  std::printf("\nTargets (this run):\n");
  for (int mf : {0, 4}) {
    const Row *a = med("plain", mf), *b = med("qemu-tls", mf), *c = med("tunnel", mf), *d = med("socat", mf);
    if (a && c) {
      std::printf("  multifd %d: tunnel / plain total-time = %.2fx (target <= 1.15x): %s\n", mf,
                  Median(c->total) / Median(a->total), Median(c->total) <= 1.15 * Median(a->total) ? "met" : "NOT met");
    }
    if (b && c) {
      std::printf("  multifd %d: tunnel faster than QEMU's TLS (%.0f vs %.0f ms): %s\n", mf, Median(c->total),
                  Median(b->total), Median(c->total) < Median(b->total) ? "met" : "NOT met");
    }
    if (c && d) {
      const double cc = Median(c->cpu) / (Median(c->mib) / 1024), dc = Median(d->cpu) / (Median(d->mib) / 1024);
      std::printf("  multifd %d: tunnel CPU/GiB %.2f vs socat %.2f: %s\n", mf, cc, dc, cc < dc ? "met" : "NOT met");
    }
  }
}

// make stress-qemu (KTM_QEMU_STRESS=N): N multifd (4 channels) migrations
// through the tunnel and N straight over UNIX, interleaved, from one source
// guest that keeps dirtying memory; every completed run compares all RAM
// page by page once the destination's own migration has completed. Run it
// beside a CPU hog: a RAM difference that shows up in both columns is
// QEMU's, one that shows up only through the tunnel is ours.
TEST(QemuStress, MultifdThroughTheTunnelAndDirect) {
  if (Env("KTM_QEMU_STRESS").empty()) GTEST_SKIP() << "make stress-qemu runs this";
  const int n = std::stoi(Env("KTM_QEMU_STRESS"));
  testing::TempDir dir("ktm-qstress");
  auto src = StartQemu(dir.path, "src", false, 800);
  ASSERT_TRUE(WaitForFileText(src->serial(), "KTM-GUEST: TICK 1", 240s)) << ReadFileText(src->serial());
  struct Tally {
    int completed = 0, equal = 0, streams_exact = 0;
    uint64_t unread_packets = 0, unread_pages = 0;
    std::vector<std::string> failures;
  };
  std::map<std::string, Tally> tally;
  std::vector<std::string> modes = {"tunnel", "plain"};
  if (Env("KTM_QEMU_STRESS_MODES") == "plain") modes = {"plain"};
  for (int i = 0; i < n; ++i) {
    for (const std::string& mode : modes) {
      BenchRun b;
      try {
        b = BenchOnce(*src, dir.path, mode, 4);
      } catch (const std::exception& e) {
        b.why = e.what();
      }
      Tally& t = tally[mode];
      t.completed += b.ok ? 1 : 0;
      t.equal += b.ram_equal ? 1 : 0;
      if (!b.ok) t.failures.push_back(b.why);
      if (b.ok && !b.ram_equal) {
        t.failures.push_back("RAM: " + b.diff.Describe() +
                             (mode == "tunnel" && b.streams_exact ? " (tunnel streams byte-exact: QEMU's own)" : ""));
      }
      std::printf("  run %d %-6s: %s; destination when the source completed: %s\n    multifd sent/read by QEMU: %s\n",
                  i + 1, mode.c_str(),
                  b.ok ? ("completed in " + std::to_string(static_cast<int>(b.total_ms)) + " ms, RAM " + b.diff.Describe()).c_str()
                       : b.why.c_str(),
                  b.dst_first.c_str(), b.multifd.text.c_str());
      if (!b.tunnel_failures.empty()) std::printf("    tunnel:%s\n", b.tunnel_failures.c_str());
      if (mode == "tunnel" && b.ok) {
        std::printf("    tunnel streams: %s (%s)\n", b.streams_exact ? "byte-exact" : "DIFFER", b.streams.c_str());
        t.streams_exact += b.streams_exact ? 1 : 0;
        EXPECT_TRUE(b.streams_exact) << b.streams;
      }
      t.unread_packets += b.multifd.unread_packets;
      t.unread_pages += b.multifd.unread_pages;
      std::fflush(stdout);
    }
  }
  std::printf("\nmultifd 4, %d runs each: tunnel %d completed, %d RAM equal, %d with byte-exact streams; direct %d "
              "completed, %d RAM equal (guest RAM %llu KiB)\n",
              n, tally["tunnel"].completed, tally["tunnel"].equal, tally["tunnel"].streams_exact,
              tally["plain"].completed, tally["plain"].equal, (unsigned long long)RamKib());
  std::printf("multifd packets the destination QEMU never read: tunnel %llu (with %llu pages), direct %llu (with %llu pages)\n",
              (unsigned long long)tally["tunnel"].unread_packets, (unsigned long long)tally["tunnel"].unread_pages,
              (unsigned long long)tally["plain"].unread_packets, (unsigned long long)tally["plain"].unread_pages);
  EXPECT_EQ(tally["tunnel"].equal, n) << ::testing::PrintToString(tally["tunnel"].failures);
  EXPECT_EQ(tally["plain"].equal, n) << "QEMU itself (no tunnel): " << ::testing::PrintToString(tally["plain"].failures);
}

}  // namespace
}  // namespace ktm

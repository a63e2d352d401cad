// The harness of the real QEMU migration tests (tests/qemu_test.cc,
// tests/qemu_bench.cc): QEMU processes under TCG driven over QMP, the two
// tunnel ends, and the checks every run makes (destination really done, RAM
// equal page by page, tunnel streams byte-exact). Which QEMU runs comes from
// the environment (scripts/run-qemu-tests.sh, once per version).
//
// Env: KTM_QEMU_KERNEL, KTM_QEMU_INITRD, KTM_CLI, KTM_RELAY, and the
// KTM_QEMU_* below. Waits are for events (a console line, a QMP status),
// each bounded.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/fd_wait.h"
#include "base/proc.h"
#include "channel/address.h"
#include "tests/cli_util.h"
#include "util/sha256.h"

namespace ktm::qemutest {

using namespace std::chrono_literals;
using nlohmann::json;
using testing::Subprocess;
using Clock = std::chrono::steady_clock;

inline std::string Env(const char* name) {
  const char* v = getenv(name);
  return v ? v : "";
}

// Which QEMU runs (scripts/run-qemu-tests.sh sets these per version):
// KTM_QEMU_BIN (default qemu-system-x86_64 from PATH, Debian 12's 7.2),
// KTM_QEMU_DATADIR (its own firmware/data, passed with -L; empty for the
// installed one), KTM_QEMU_MODDIR (its module directory, so QEMU 10 never
// loads 7.2's modules), KTM_QEMU_VERSION ("7.2.22", "10.0.2").
inline std::string QemuBin() { return Env("KTM_QEMU_BIN").empty() ? "qemu-system-x86_64" : Env("KTM_QEMU_BIN"); }
inline std::string QemuVersion() { return Env("KTM_QEMU_VERSION").empty() ? "7.2" : Env("KTM_QEMU_VERSION"); }
inline int QemuMajor() { return std::atoi(QemuVersion().c_str()); }

// Guest RAM in KiB (KTM_QEMU_RAM_KIB overrides). QEMU 9.0 and later: an
// ordinary 1 GiB. Before 9.0, 1 GiB and 8 KiB. Why the 8 KiB: QEMU before
// 9.0 (upstream commit 03bfc2188f, "physmem: Fix migration dirty bitmap
// coherency with TCG memory access"; Debian 12's 7.2.22 does not carry it)
// clears the migration dirty bits of a RAM block whose size is a multiple of
// 64 pages without resetting TCG's TLB entries, so a guest store through
// such an entry is never marked dirty and may never be sent: a few pages of
// the destination keep an older copy. A block size that is not a multiple of
// 64 pages takes QEMU's per-page path, which does reset them. Our streams
// are checked on their own (--stream-digest).
inline uint64_t RamKib() {
  if (!Env("KTM_QEMU_RAM_KIB").empty()) return std::stoull(Env("KTM_QEMU_RAM_KIB"));
  return QemuMajor() >= 9 ? (1ull << 20) : (1ull << 20) + 8;
}
inline uint64_t RamBytes() { return RamKib() << 10; }

using testing::Has;

inline std::string ReadFileText(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), {});
}

inline bool WaitForFileText(const std::string& path, const std::string& needle, std::chrono::seconds timeout) {
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

inline std::unique_ptr<Guest> StartQemu(const std::string& dir, const std::string& name, bool incoming, int fill_mib,
                                 const std::vector<std::string>& extra = {}) {
  auto g = std::make_unique<Guest>();
  g->name = name;
  g->dir = dir;
  // A QEMU unpacked beside the installed one loads its own modules
  // (QEMU_MODULE_DIR); the installed one gets no stray value ("env -u").
  const std::string moddir = Env("KTM_QEMU_MODDIR");
  std::vector<std::string> args = {"env"};
  if (moddir.empty()) {
    args.insert(args.end(), {"-u", "QEMU_MODULE_DIR"});
  } else {
    args.push_back("QEMU_MODULE_DIR=" + moddir);
  }
  args.insert(args.end(), {QemuBin(), "-accel", "tcg", "-cpu", "max", "-m", std::to_string(RamKib()) + "k", "-smp", "1",
                                   "-display", "none", "-vga", "none", "-nic", "none", "-monitor", "none",
                                   "-serial", "file:" + g->serial(), "-qmp", "unix:" + g->qmp_path() + ",server=on,wait=off",
                                   "-kernel", Env("KTM_QEMU_KERNEL"), "-initrd", Env("KTM_QEMU_INITRD"), "-append",
                                   "console=ttyS0 quiet panic=-1 ktm_fill=" + std::to_string(fill_mib)});
  // QEMU's own count of multifd packets and pages per channel, printed when
  // each channel's thread ends (log trace backend, to stderr): what the
  // source sent against what the destination read (MultifdAccount).
  args.insert(args.end(), {"-trace", "multifd_send_thread_end", "-trace", "multifd_recv_thread_end"});
  // ... and its own firmware and data (-L; QEMU still searches its built-in
  // path after it, where Debian 12's seabios is).
  if (!Env("KTM_QEMU_DATADIR").empty()) args.insert(args.end(), {"-L", Env("KTM_QEMU_DATADIR")});
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
inline std::map<int, std::pair<uint64_t, uint64_t>> MultifdThreadEnd(const std::string& log, const std::string& event) {
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

inline MultifdAccount AccountMultifd(const std::string& src_log, const std::string& dst_log, size_t channels) {
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
inline MultifdAccount WaitMultifdAccount(Subprocess& src, size_t src_from, Subprocess& dst, int channels) {
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

inline std::string FileSha256(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  Sha256 h;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), buf.size());
    h.Update(buf.data(), static_cast<size_t>(f.gcount()));
  }
  return Sha256::Hex(h.Final());
}

inline const std::string& Pki() { return testing::SharedPki("ktm-qemu-pki"); }

struct Tunnels {
  std::unique_ptr<Subprocess> dst, src, relay;
  std::string src_sock;
  std::string Outputs() {
    return "--- tunnel dst:\n" + dst->output() + "--- tunnel src:\n" + src->output() +
           (relay ? "--- relay:\n" + relay->output() : "");
  }
};

inline std::string PortFrom(const std::string& out) { return testing::ListeningPort(out); }

// In the kTLS VM (KTM_TEST_KTLS=require) both tunnel ends must use kernel
// TLS, or the connection fails: the flag for every tunnel end a test starts.
inline std::vector<std::string> TunnelKtlsArgs() {
  return testing::KtlsRequired() ? std::vector<std::string>{"--ktls", "require"} : std::vector<std::string>{};
}

// The command lines of the two tunnel ends, as every QEMU test starts them
// (a restarted end gets the same): the destination end listening for TLS
// on `tls_listen` and forwarding to QEMU's incoming socket; the source end
// on a UNIX socket for the source QEMU, connecting to `connect`.
inline std::vector<std::string> DestinationEndArgs(const std::string& tls_listen, const std::string& incoming_sock,
                                                   const std::string& pki, bool stream_digest = true) {
  std::vector<std::string> a = {testing::Cli(), "tunnel", "--tls-listen", tls_listen, "--forward",
                                "unix:" + incoming_sock, "--tls-creds", pki};
  if (stream_digest) a.push_back("--stream-digest");
  for (const auto& k : TunnelKtlsArgs()) a.push_back(k);
  return a;
}
inline std::vector<std::string> SourceEndArgs(const std::string& sock, const std::string& connect,
                                              bool stream_digest = true) {
  std::vector<std::string> a = {testing::Cli(), "tunnel", "--listen", "unix:" + sock, "--connect", connect,
                                "--tls-creds", Pki(), "--tls-hostname", "localhost"};
  if (stream_digest) a.push_back("--stream-digest");
  for (const auto& k : TunnelKtlsArgs()) a.push_back(k);
  return a;
}

// Waits for a guest's boot are multiplied by KTM_QEMU_TIME_SCALE (default
// 1): a guest under TCG inside the TCG-emulated kTLS VM boots in minutes.
inline std::chrono::seconds Scaled(std::chrono::seconds s) {
  const int k = Env("KTM_QEMU_TIME_SCALE").empty() ? 1 : std::max(1, std::atoi(Env("KTM_QEMU_TIME_SCALE").c_str()));
  return s * k;
}

// An integer knob from the environment, `def` when unset.
inline int EnvInt(const char* name, int def) { return Env(name).empty() ? def : std::atoi(Env(name).c_str()); }

// dst tunnel -> QEMU's incoming socket; src tunnel on a UNIX socket for the
// source QEMU; optionally a fault relay between them. `stream_digest`: both
// ends prove their streams byte-exact (StreamsExact); the timed benchmark
// leaves the extra hashing out.
inline Tunnels StartTunnels(const std::string& dir, const std::string& incoming_sock, const std::string& dst_pki,
                     const std::vector<std::string>& relay_faults = {}, const std::string& resume = "",
                     bool stream_digest = true) {
  Tunnels t;
  const std::vector<std::string> d = DestinationEndArgs("127.0.0.1:0", incoming_sock, dst_pki, stream_digest);
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
  const std::vector<std::string> src = SourceEndArgs(t.src_sock, "127.0.0.1:" + port, stream_digest);
  t.src = std::make_unique<Subprocess>(src);
  EXPECT_TRUE(t.src->WaitFor("listening on", 30s)) << t.src->output();
  return t;
}

// Did the tunnel deliver exactly what QEMU gave it, each way, on every
// connection? Both ends ran with --stream-digest; their digests per
// connection must be the same. `why` says which differ or are missing.
inline bool StreamsExact(const std::string& src_out, const std::string& dst_out, std::string* why) {
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

inline void EnableMultifd(Guest& g, int channels) {
  g.qmp->Execute("migrate-set-capabilities", {{"capabilities", {{{"capability", "multifd"}, {"state", true}}}}});
  g.qmp->Execute("migrate-set-parameters", {{"multifd-channels", channels}});
}

// Polls query-migrate until a final state; returns the last answer.
inline json WaitMigration(Guest& src, std::chrono::seconds timeout) {
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

inline RamDiff DiffPages(const std::string& a, const std::string& b) {
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
inline json WaitIncomingDone(Guest& dst, std::chrono::seconds timeout, std::string* seen_first) {
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

// ---------------------------------------------------------------------------
// Postcopy helpers (tests/qemu_postcopy_test.cc).

// The guest's kernel command line with the self-check region of
// scripts/make-qemu-guest.sh (ktm_check MiB written once, re-read every
// `every` ticks). Passed as a second -append: QEMU keeps the last one.
inline std::vector<std::string> SelfCheckAppend(int fill_mib, int check_mib, int every) {
  return {"-append", "console=ttyS0 quiet panic=-1 ktm_fill=" + std::to_string(fill_mib) +
                         " ktm_check=" + std::to_string(check_mib) + " ktm_check_every=" + std::to_string(every)};
}

inline void SetCapabilities(Guest& g, const std::vector<std::string>& caps) {
  json list = json::array();
  for (const auto& c : caps) list.push_back({{"capability", c}, {"state", true}});
  g.qmp->Execute("migrate-set-capabilities", {{"capabilities", list}});
}

// Polls query-migrate until its status is one of `want` (or a final one),
// bounded; returns the last answer.
inline json WaitMigrationStatus(Guest& g, const std::vector<std::string>& want, std::chrono::milliseconds timeout) {
  const auto deadline = Clock::now() + timeout;
  json last;
  for (;;) {
    last = g.qmp->Execute("query-migrate");
    const std::string st = last.value("status", "");
    if (std::find(want.begin(), want.end(), st) != want.end() || st == "failed" || st == "cancelled") return last;
    if (Clock::now() >= deadline) return last;
    std::this_thread::sleep_for(20ms);
  }
}

// The guest self-check's verdict on `serial` for a pass that STARTED in this
// log: waits (bounded) for "CHECK START pass p" and then its "CHECK OK ...
// (pass p)"; any "CHECK FAILED" line fails at once. On a migration
// destination the log holds only what the guest printed there, so the pass
// read all of its memory after the switch-over (`from`: only the log after
// this offset counts, e.g. after a recovery). Returns "" when it passed,
// else what was seen.
inline std::string WaitSelfCheckPass(const std::string& serial, std::chrono::seconds timeout, size_t from = 0) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    const std::string all = ReadFileText(serial);
    const std::string log = all.size() > from ? all.substr(from) : "";
    const auto failed = log.find("KTM-GUEST: CHECK FAILED");
    if (failed != std::string::npos) return log.substr(failed, log.find('\n', failed) - failed);
    const auto start = log.find("KTM-GUEST: CHECK START pass ");
    if (start != std::string::npos) {
      const std::string pass = log.substr(start + 28, log.find_first_not_of("0123456789", start + 28) - start - 28);
      const auto ok = log.find("KTM-GUEST: CHECK OK ", start);
      if (ok != std::string::npos && Has(log.substr(ok, log.find('\n', ok) - ok), "(pass " + pass + ")")) return "";
    }
    if (Clock::now() >= deadline) return "no complete self-check pass within " + std::to_string(timeout.count()) + " s";
    std::this_thread::sleep_for(100ms);
  }
}

}  // namespace ktm::qemutest

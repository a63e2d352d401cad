// Postcopy live migration through `tls-migrate tunnel` (issue 21), on the
// QEMU the binary runs with (scripts/run-qemu-tests.sh: 7.2 and 10.0).
// In postcopy the destination runs before it has all of its RAM: each page
// its guest touches that has not arrived yet is requested from the source
// over the return path (the tunnel's down direction) while the source keeps
// pushing the rest. The guest (scripts/make-qemu-guest.sh) holds a region of
// random data written once and re-reads all of it every few ticks, printing
// "KTM-GUEST: CHECK OK"; on the destination that re-read faults pages over
// the tunnel, so a pass that starts on the destination's console is the
// integrity check of a running destination.
//
// The cases: postcopy with the destination running (a), with QEMU's
// postcopy-preempt channel (b), with the destination kept paused (c: RAM
// compared page by page), and recovery (postcopy-paused, migrate-recover,
// migrate resume=true) after the source tunnel end is killed (d), after the
// destination tunnel end is killed (e), and after the path between the ends
// goes dead (f: needs root, iproute2, veth and sch_blackhole). The harness
// is tests/qemu_harness.h.
#include <cinttypes>

#include "tests/netns.h"
#include "tests/qemu_harness.h"

namespace ktm::qemutest {
namespace {

// 128 MiB rewritten + 128 MiB self-check region in a 1 GiB guest: boots in
// about 20 s, and at the bandwidths below postcopy lasts long enough to be
// interrupted and to serve page requests.
// KTM_QEMU_PC_FILL_MIB / KTM_QEMU_PC_CHECK_MIB shrink them for the guest
// inside the kTLS VM (scripts/run-vm-tests.sh, KTM_VM_QEMU=1).
const int kFillMib = EnvInt("KTM_QEMU_PC_FILL_MIB", 128), kCheckMib = EnvInt("KTM_QEMU_PC_CHECK_MIB", 128);
constexpr int kCheckEvery = 3;
constexpr int64_t kPrecopyBandwidth = 32ll << 20;  // bytes/s: pages must remain for postcopy
const int64_t kPrecopyBytes = int64_t{EnvInt("KTM_QEMU_PC_PRECOPY_MIB", 48)} << 20;  // moved before the switch
// The background push while a recovery case interrupts postcopy, bytes/s.
const int64_t kInterruptedBandwidth = int64_t{EnvInt("KTM_QEMU_PC_INTERRUPTED_MIBS", 16)} << 20;

struct Postcopy {
  testing::TempDir dir{"ktm-qemu-pc"};
  std::unique_ptr<Guest> dst, src;
  Tunnels t;
  std::string incoming;
  Clock::time_point postcopy_at;  // when the source was first seen postcopy-active
  // A QEMU in postcopy-paused may not exit on SIGTERM (its incoming side
  // waits for a recovery), which Subprocess's destructor would wait for.
  ~Postcopy() {
    for (Guest* g : {dst.get(), src.get()}) {
      if (g) g->proc->Signal(SIGKILL);
    }
  }
};

int64_t Ms(Clock::duration d) { return std::chrono::duration_cast<std::chrono::milliseconds>(d).count(); }

std::string After(const std::string& s, size_t from) { return s.size() > from ? s.substr(from) : ""; }

// Boots both QEMUs; the source's guest has recorded its check region and
// passed one check before anything migrates.
void StartGuests(Postcopy& p, const std::vector<std::string>& dst_trace = {}) {
  std::vector<std::string> dst_extra = SelfCheckAppend(kFillMib, kCheckMib, kCheckEvery);
  dst_extra.insert(dst_extra.end(), dst_trace.begin(), dst_trace.end());
  p.dst = StartQemu(p.dir.path, "dst", /*incoming=*/true, kFillMib, dst_extra);
  p.src = StartQemu(p.dir.path, "src", /*incoming=*/false, kFillMib, SelfCheckAppend(kFillMib, kCheckMib, kCheckEvery));
  p.incoming = p.dir.path + "/dst-mig.sock";
  ASSERT_EQ(WaitSelfCheckPass(p.src->serial(), Scaled(240s)), "") << ReadFileText(p.src->serial());
}

struct PostcopyOptions {
  bool preempt = false;
  // Destination: `cont` while still inmigrate (QEMU then starts it at the
  // switch-over, like no -S); false keeps it paused (-S).
  bool run_destination = true;
  int64_t postcopy_bandwidth = 32ll << 20;  // max-postcopy-bandwidth, bytes/s
};

// Capabilities on both sides, precopy until kPrecopyBytes have moved, then
// migrate-start-postcopy; returns when the source is postcopy-active.
void BeginPostcopy(Postcopy& p, const PostcopyOptions& o) {
  // postcopy-ram opens the return path by itself (no return-path capability
  // needed); postcopy-preempt needs postcopy-ram and is set on both sides
  // before the destination listens.
  std::vector<std::string> caps = {"postcopy-ram"};
  if (o.preempt) caps.push_back("postcopy-preempt");
  SetCapabilities(*p.src, caps);
  SetCapabilities(*p.dst, caps);
  p.src->qmp->Execute("migrate-set-parameters",
                      {{"max-bandwidth", kPrecopyBandwidth}, {"max-postcopy-bandwidth", o.postcopy_bandwidth}});
  p.dst->qmp->Execute("migrate-incoming", {{"uri", "unix:" + p.incoming}});
  if (o.run_destination) p.dst->qmp->Execute("cont");
  p.src->qmp->Execute("migrate", {{"uri", "unix:" + p.t.src_sock}});
  json m;
  const auto deadline = Clock::now() + 120s;
  for (;;) {
    m = p.src->qmp->Execute("query-migrate");
    if (m.contains("ram") && m["ram"].value("transferred", 0ll) >= kPrecopyBytes) break;
    ASSERT_LT(Clock::now(), deadline) << "precopy did not move " << (kPrecopyBytes >> 20) << " MiB: " << m.dump()
                                      << p.t.Outputs();
    const std::string st = m.value("status", "");
    ASSERT_TRUE(st == "setup" || st == "active") << m.dump() << p.t.Outputs();
    std::this_thread::sleep_for(50ms);
  }
  p.src->qmp->Execute("migrate-start-postcopy");
  m = WaitMigrationStatus(*p.src, {"postcopy-active", "completed"}, 60s);
  p.postcopy_at = Clock::now();
  ASSERT_EQ(m.value("status", ""), "postcopy-active") << m.dump() << p.t.Outputs();
}

// Waits for completed on both sides; prints the postcopy phase time and the
// page requests the source served. Returns the source's last query-migrate.
json FinishPostcopy(Postcopy& p, const char* label) {
  const json m = WaitMigrationStatus(*p.src, {"completed"}, 300s);
  const auto phase = Clock::now() - p.postcopy_at;
  EXPECT_EQ(m.value("status", ""), "completed") << m.dump(1) << p.t.Outputs();
  const json d = WaitMigrationStatus(*p.dst, {"completed"}, 60s);
  EXPECT_EQ(d.value("status", ""), "completed") << d.dump(1);
  const json ram = m.value("ram", json::object());
  std::printf("  %s (QEMU %s): postcopy phase %" PRId64 " ms (switch to completed), page requests served %lld,"
              " total-time %lld ms, downtime %lld ms, transferred %lld MiB\n",
              label, QemuVersion().c_str(), Ms(phase), ram.value("postcopy-requests", 0ll), m.value("total-time", 0ll),
              m.value("downtime", 0ll), ram.value("transferred", 0ll) >> 20);
  return m;
}

// Stops a tunnel end and waits for its summary lines.
void Stop(Subprocess& s) {
  s.Signal(SIGTERM);
  s.Wait(30s);
}

// Both tunnel ends' digests agree on every connection both printed after the
// given offsets (earlier connections broke with a killed end or a dead path).
void ExpectStreamsExact(const std::string& src_out, const std::string& dst_out) {
  std::string why;
  const bool exact = StreamsExact(src_out, dst_out, &why);
  EXPECT_TRUE(exact) << "the tunnel did not deliver exactly what QEMU sent: " << why << "\n--- src:\n"
                     << src_out << "--- dst:\n"
                     << dst_out;
  std::printf("  tunnel streams: %s, %s\n", exact ? "byte-exact (digests equal on both ends)" : "DIFFER", why.c_str());
}

// (a)/(b): postcopy with the destination running; the guest's self-check
// passes on the destination, page requests were served.
void RunningDestination(bool preempt) {
  Postcopy p;
  const std::vector<std::string> trace = {"-trace", "postcopy_preempt_new_channel"};
  ASSERT_NO_FATAL_FAILURE(StartGuests(p, preempt ? trace : std::vector<std::string>{}));
  p.t = StartTunnels(p.dir.path, p.incoming, Pki());
  ASSERT_NO_FATAL_FAILURE(BeginPostcopy(p, {.preempt = preempt}));
  const json m = FinishPostcopy(p, preempt ? "postcopy-preempt" : "postcopy");
  EXPECT_GT(m.value("ram", json::object()).value("postcopy-requests", 0ll), 0) << m.dump(1);
  EXPECT_EQ(p.dst->qmp->Execute("query-status").value("status", ""), "running");
  EXPECT_EQ(WaitSelfCheckPass(p.dst->serial(), 120s), "") << ReadFileText(p.dst->serial());
  Stop(*p.t.src);
  Stop(*p.t.dst);
  if (preempt) {
    // The destination QEMU took the second connection as its preempt
    // channel: its trace says so, and the tunnel forwarded two connections
    // in the source's order.
    EXPECT_TRUE(Has(p.dst->proc->output(), "postcopy_preempt_new_channel")) << p.dst->proc->output();
    EXPECT_TRUE(Has(p.t.dst->output(), "connection 1 from")) << p.t.dst->output();
  }
  ExpectStreamsExact(p.t.src->output(), p.t.dst->output());
}

TEST(QemuPostcopy, DestinationRunsAndFaultsPagesThroughTheTunnel) { RunningDestination(false); }

// QEMU 7.2 has the postcopy-preempt capability too (query-migrate-
// capabilities lists it on both versions), so this runs on both.
TEST(QemuPostcopy, PreemptChannelThroughTheTunnel) { RunningDestination(true); }

// (c) The destination kept paused (-S, no cont). QEMU allows it: at the
// switch-over the destination loads the device state and stays paused,
// and the source pushes every remaining page in the background until
// "completed" (nothing faults, so few or no page requests). The source's
// guest is stopped from the switch-over on, so both RAMs must then be equal
// page by page (pmemsave, as tests/qemu_test.cc); after `cont` the guest's
// self-check passes on the destination.
TEST(QemuPostcopy, PausedDestinationCompletesByBackgroundPushRamEqual) {
  Postcopy p;
  ASSERT_NO_FATAL_FAILURE(StartGuests(p));
  p.t = StartTunnels(p.dir.path, p.incoming, Pki());
  ASSERT_NO_FATAL_FAILURE(BeginPostcopy(p, {.run_destination = false, .postcopy_bandwidth = 64ll << 20}));
  FinishPostcopy(p, "postcopy, destination paused");
  EXPECT_EQ(p.dst->qmp->Execute("query-status").value("status", ""), "paused");
  const std::string sm = p.dir.path + "/src.mem", dm = p.dir.path + "/dst.mem";
  p.src->qmp->Execute("pmemsave", {{"val", 0}, {"size", RamBytes()}, {"filename", sm}});
  p.dst->qmp->Execute("pmemsave", {{"val", 0}, {"size", RamBytes()}, {"filename", dm}});
  const std::string hs = FileSha256(sm), hd = FileSha256(dm);
  EXPECT_EQ(hs, hd) << DiffPages(sm, dm).Describe();
  std::printf("  RAM sha256 %s / %s\n", hs.substr(0, 16).c_str(), hd.substr(0, 16).c_str());
  std::remove(sm.c_str());
  std::remove(dm.c_str());
  p.dst->qmp->Execute("cont");
  EXPECT_EQ(WaitSelfCheckPass(p.dst->serial(), 120s), "") << ReadFileText(p.dst->serial());
  Stop(*p.t.src);
  Stop(*p.t.dst);
  ExpectStreamsExact(p.t.src->output(), p.t.dst->output());
}

// ---------------------------------------------------------------------------
// Recovery. A broken migration connection in postcopy cannot fail the
// migration (the destination runs with part of its RAM): both QEMUs go to
// "postcopy-paused" and wait for `migrate-recover` (destination: listen
// again) and `migrate resume=true` (source).

// Postcopy slow enough (16 MiB/s) to be interrupted; returns once the
// destination's guest runs (runstate "running": the switch-over's device
// state is loaded) and the source has served a page request, so the
// interruption lands inside a live postcopy, well before its end (printed:
// how far into postcopy). Not earlier: a break while the destination is
// still loading the device state is outside what recovery covers (QEMU
// 10.0's source then stopped answering QMP in a trial).
void PostcopyUnderway(Postcopy& p) {
  ASSERT_NO_FATAL_FAILURE(BeginPostcopy(p, {.postcopy_bandwidth = kInterruptedBandwidth}));
  json m;
  for (const auto deadline = Clock::now() + 60s;; std::this_thread::sleep_for(20ms)) {
    m = p.src->qmp->Execute("query-migrate");
    if (m.value("status", "") != "postcopy-active") break;
    if (m.value("ram", json::object()).value("postcopy-requests", 0ll) > 0 &&
        p.dst->qmp->Execute("query-status").value("status", "") == "running") {
      break;
    }
    ASSERT_LT(Clock::now(), deadline) << "destination not running with page requests served within 60 s: "
                                      << m.dump();
  }
  ASSERT_EQ(m.value("status", ""), "postcopy-active") << "postcopy ended before it could be interrupted: " << m.dump();
  std::printf("  interrupting %" PRId64 " ms into postcopy, %lld page requests served so far\n",
              Ms(Clock::now() - p.postcopy_at), m.value("ram", json::object()).value("postcopy-requests", 0ll));
}

// Waits (bounded) until both QEMUs say postcopy-paused; prints how long each
// took from `t0`.
void ExpectBothPaused(Postcopy& p, Clock::time_point t0, std::chrono::seconds bound) {
  int64_t src_ms = -1, dst_ms = -1;
  std::string src_st, dst_st;
  while ((src_ms < 0 || dst_ms < 0) && Clock::now() - t0 < bound) {
    if (src_ms < 0 && (src_st = p.src->qmp->Execute("query-migrate").value("status", "")) == "postcopy-paused") {
      src_ms = Ms(Clock::now() - t0);
    }
    if (dst_ms < 0 && (dst_st = p.dst->qmp->Execute("query-migrate").value("status", "")) == "postcopy-paused") {
      dst_ms = Ms(Clock::now() - t0);
    }
    std::this_thread::sleep_for(20ms);
  }
  std::printf("  postcopy-paused after: source %" PRId64 " ms, destination %" PRId64 " ms (QEMU %s)\n", src_ms, dst_ms,
              QemuVersion().c_str());
  EXPECT_GE(src_ms, 0) << "source: " << src_st;
  EXPECT_GE(dst_ms, 0) << "destination: " << dst_st;
}

// migrate-recover on the destination (it listens on its incoming socket
// again, where the destination tunnel end forwards every new connection),
// migrate resume=true on the source; then completed on both and a
// self-check pass that started after the recovery.
void RecoverAndFinish(Postcopy& p, const char* label) {
  const size_t serial_from = ReadFileText(p.dst->serial()).size();
  const auto t0 = Clock::now();
  p.dst->qmp->Execute("migrate-recover", {{"uri", "unix:" + p.incoming}});
  p.src->qmp->Execute("migrate", {{"uri", "unix:" + p.t.src_sock}, {"resume", true}});
  const json r = WaitMigrationStatus(*p.src, {"postcopy-active", "completed"}, 120s);
  const int64_t resumed_ms = Ms(Clock::now() - t0);
  EXPECT_TRUE(r.value("status", "") == "postcopy-active" || r.value("status", "") == "completed") << r.dump(1);
  // Well under the destination end's order timeout (10 s): nothing in the
  // tunnel may wait for connections that cannot come.
  EXPECT_LT(resumed_ms, 8000) << p.t.Outputs();
  const json m = FinishPostcopy(p, label);
  std::printf("  recovery: source %s %" PRId64 " ms after migrate-recover, completed %" PRId64 " ms after it\n",
              r.value("status", "").c_str(), resumed_ms, Ms(Clock::now() - t0));
  EXPECT_EQ(WaitSelfCheckPass(p.dst->serial(), 120s, serial_from), "") << ReadFileText(p.dst->serial());
}

std::vector<std::string> SourceEndArgs(const Postcopy& p, const std::string& connect) {
  return qemutest::SourceEndArgs(p.t.src_sock, connect);
}

// (d) The source tunnel end SIGKILLed in postcopy: a new one on the same
// socket path (the listener replaces the stale socket file) starts a new
// tunnel session; the destination end stays up and forwards its first
// connection like any other.
TEST(QemuPostcopy, RecoversAfterSourceTunnelEndKilled) {
  Postcopy p;
  ASSERT_NO_FATAL_FAILURE(StartGuests(p));
  p.t = StartTunnels(p.dir.path, p.incoming, Pki());
  ASSERT_NO_FATAL_FAILURE(PostcopyUnderway(p));
  p.t.src->Signal(SIGKILL);
  const auto t0 = Clock::now();
  p.t.src->Wait(10s);
  ASSERT_NO_FATAL_FAILURE(ExpectBothPaused(p, t0, 60s));
  // The broken connection's line first, so what follows is the new session.
  EXPECT_TRUE(p.t.dst->WaitFor("FAILED", 30s)) << p.t.dst->output();
  const size_t dst_from = p.t.dst->output().size();
  p.t.src = std::make_unique<Subprocess>(SourceEndArgs(p, "127.0.0.1:" + PortFrom(p.t.dst->output())));
  ASSERT_TRUE(p.t.src->WaitFor("listening on", 30s)) << p.t.src->output();
  RecoverAndFinish(p, "postcopy recovered (source end killed)");
  Stop(*p.t.src);
  Stop(*p.t.dst);
  if (!TunnelKtlsArgs().empty()) {  // the kTLS VM: both ends spliced through kernel TLS, before and after
    EXPECT_TRUE(Has(After(p.t.dst->output(), dst_from), "splice (kTLS")) << p.t.dst->output();
    EXPECT_TRUE(Has(p.t.src->output(), "splice (kTLS")) << p.t.src->output();
  }
  ExpectStreamsExact(p.t.src->output(), After(p.t.dst->output(), dst_from));
}

// (e) The destination tunnel end SIGKILLed in postcopy: a new one on the
// same port (the source end's --connect target), the source end stays up.
// Its next connection carries the source session's next number, whose
// predecessors the new destination end never saw; its header says they all
// ended at the source (TunnelHeader::first_open), so it is forwarded at
// once, not after the order timeout (10 s).
TEST(QemuPostcopy, RecoversAfterDestinationTunnelEndKilled) {
  Postcopy p;
  ASSERT_NO_FATAL_FAILURE(StartGuests(p));
  p.t = StartTunnels(p.dir.path, p.incoming, Pki());
  const std::string port = PortFrom(p.t.dst->output());
  ASSERT_NO_FATAL_FAILURE(PostcopyUnderway(p));
  p.t.dst->Signal(SIGKILL);
  const auto t0 = Clock::now();
  p.t.dst->Wait(10s);
  ASSERT_NO_FATAL_FAILURE(ExpectBothPaused(p, t0, 60s));
  EXPECT_TRUE(p.t.src->WaitFor("FAILED", 30s)) << p.t.src->output();
  const size_t src_from = p.t.src->output().size();
  const std::vector<std::string> dst_args = DestinationEndArgs("127.0.0.1:" + port, p.incoming, Pki());
  p.t.dst = std::make_unique<Subprocess>(dst_args);
  ASSERT_TRUE(p.t.dst->WaitFor("listening on", 30s)) << p.t.dst->output();
  RecoverAndFinish(p, "postcopy recovered (destination end killed)");
  EXPECT_FALSE(Has(p.t.dst->output(), "never arrived")) << "the new end waited its order timeout\n"
                                                         << p.t.dst->output();
  EXPECT_TRUE(Has(p.t.dst->output(), "ended at the source before reaching this tunnel end")) << p.t.dst->output();
  Stop(*p.t.src);
  Stop(*p.t.dst);
  ExpectStreamsExact(After(p.t.src->output(), src_from), p.t.dst->output());
}

// (f) The path between the tunnel ends goes silently dead in postcopy (no
// RST, no FIN: tc's blackhole qdisc on both ends of a veth pair between two
// network namespaces, one per tunnel end; the QEMUs stay in the root
// namespace and reach the ends over UNIX socket paths, which work across
// namespaces). Both ends run with --dead-peer-timeout: each declares the
// peer dead and resets its local connection, so both QEMUs pause. Then the
// qdiscs go, both ends (still running) carry the recovery: the source end's
// next connection is the next of its session, forwarded at once.
class QemuPostcopyDeadPath : public ::testing::Test {
 protected:
  static constexpr int kDeadPeerSec = 5;

  void SetUp() override {
    const std::string failed = net_.Create("pc", 79);
    ASSERT_EQ(failed, "") << "setup failed (needs root, iproute2, veth)";
    src_ns_ = net_.a;
    dst_ns_ = net_.b;
    dst_ip_ = net_.ip_b;
  }
  void TearDown() override { net_.Destroy(); }

  // The tunnel ends, one per namespace, as StartTunnels has them otherwise.
  void StartEnds(Postcopy& p) {
    const std::string dead = std::to_string(kDeadPeerSec);
    std::vector<std::string> d = testing::TwoNamespaces::Exec(dst_ns_);
    for (const auto& a : DestinationEndArgs(dst_ip_ + ":0", p.incoming, Pki())) d.push_back(a);
    d.insert(d.end(), {"--dead-peer-timeout", dead});
    p.t.dst = std::make_unique<Subprocess>(d);
    ASSERT_TRUE(p.t.dst->WaitFor("listening on", 30s)) << p.t.dst->output();
    p.t.src_sock = p.dir.path + "/src-mig.sock";
    std::vector<std::string> s = testing::TwoNamespaces::Exec(src_ns_);
    for (const auto& a : SourceEndArgs(p, dst_ip_ + ":" + PortFrom(p.t.dst->output()))) s.push_back(a);
    s.insert(s.end(), {"--dead-peer-timeout", dead});
    p.t.src = std::make_unique<Subprocess>(s);
    ASSERT_TRUE(p.t.src->WaitFor("listening on", 30s)) << p.t.src->output();
  }

  // Every packet leaving either veth end dropped (on), or flowing again.
  void Blackhole(bool on) { ASSERT_EQ(net_.Blackhole(on), "") << "(sch_blackhole?)"; }

  testing::TwoNamespaces net_;
  std::string src_ns_, dst_ns_, dst_ip_;
};

TEST_F(QemuPostcopyDeadPath, RecoversAfterTheSilentlyDeadPathComesBack) {
  Postcopy p;
  ASSERT_NO_FATAL_FAILURE(StartGuests(p));
  ASSERT_NO_FATAL_FAILURE(StartEnds(p));
  ASSERT_NO_FATAL_FAILURE(PostcopyUnderway(p));
  ASSERT_NO_FATAL_FAILURE(Blackhole(true));
  const auto t0 = Clock::now();
  // Bound: the dead-peer timeout plus the kernel's timers and a loaded
  // machine's slack; printed per QEMU.
  ASSERT_NO_FATAL_FAILURE(ExpectBothPaused(p, t0, std::chrono::seconds(kDeadPeerSec * 4)));
  EXPECT_TRUE(p.t.src->WaitFor("stopped answering", 30s)) << p.t.src->output();
  EXPECT_TRUE(p.t.dst->WaitFor("stopped answering", 30s)) << p.t.dst->output();
  std::printf("  tunnel ends declared the peer dead: source end %s, destination end %s\n",
              Has(p.t.src->output(), "stopped answering") ? "yes" : "no",
              Has(p.t.dst->output(), "stopped answering") ? "yes" : "no");
  const size_t src_from = p.t.src->output().size(), dst_from = p.t.dst->output().size();
  ASSERT_NO_FATAL_FAILURE(Blackhole(false));
  RecoverAndFinish(p, "postcopy recovered (dead path)");
  Stop(*p.t.src);
  Stop(*p.t.dst);
  ExpectStreamsExact(After(p.t.src->output(), src_from), After(p.t.dst->output(), dst_from));
}

}  // namespace
}  // namespace ktm::qemutest

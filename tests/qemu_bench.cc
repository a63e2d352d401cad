// make bench-qemu and make stress-qemu (tests/qemu_harness.h): the same
// guest migrated plain, with QEMU's own TLS, through our tunnel and through
// socat, timed; and many multifd migrations with every page compared.
#include "tests/qemu_harness.h"

namespace ktm::qemutest {
namespace {

// ---------------------------------------------------------------------------
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
      src.qmp->Execute("pmemsave", {{"val", 0}, {"size", RamBytes()}, {"filename", run_dir + "/src.mem"}});
      dst->qmp->Execute("pmemsave", {{"val", 0}, {"size", RamBytes()}, {"filename", run_dir + "/dst.mem"}});
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

// ---------------------------------------------------------------------------
// Postcopy rows of make bench-qemu. Precopy runs until 128 MiB have moved,
// then migrate-start-postcopy; the destination (-S) gets `cont` as soon as
// it is postcopy-active, so its guest runs and faults the pages it touches
// over the return path. Measured: the postcopy phase (start-postcopy to the
// source's completed), QEMU's downtime, the page requests the source served,
// and for "recovery" the source tunnel end SIGKILLed 1 s into postcopy (with
// the background push capped at 32 MiB/s so pages remain): time until both
// QEMUs are postcopy-paused, and from `migrate resume=true` through a new
// tunnel end until the source is postcopy-active again.
struct PostcopyRun {
  bool ok = false;
  double total_ms = 0, downtime_ms = 0, postcopy_ms = 0, requests = 0, tunnel_cpu = 0, mib = 0;
  double paused_ms = -1, recovered_ms = -1;
  std::string why;
};

std::string MigStatus(Guest& g) { return g.qmp->Execute("query-migrate").value("status", ""); }

// Whether `g`'s migration reaches `want` within `timeout` (false at once on
// another final state).
bool Reaches(Guest& g, const std::string& want, std::chrono::seconds timeout) {
  return WaitMigrationStatus(g, {want, "completed"}, timeout).value("status", "") == want;
}

// Sets a capability only where this QEMU has it (7.2 lacks some newer ones).
bool SetCapability(Guest& g, const std::string& cap, bool on) {
  for (const auto& c : g.qmp->Execute("query-migrate-capabilities")) {
    if (c.value("capability", "") != cap) continue;
    g.qmp->Execute("migrate-set-capabilities", {{"capabilities", {{{"capability", cap}, {"state", on}}}}});
    return true;
  }
  return false;
}

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Kills the source tunnel end, waits for both QEMUs to pause, starts a new
// source end on the same socket, recovers. Fills paused_ms/recovered_ms.
bool KillSourceEndAndRecover(Guest& src, Guest& dst, Tunnels& t, const std::string& incoming, PostcopyRun& r) {
  const std::string port = PortFrom(t.dst->output());
  const double cpu_before = TreeCpuSeconds(t.src->pid());
  t.src->Signal(SIGKILL);
  const auto killed = Clock::now();
  if (!Reaches(src, "postcopy-paused", 60s) || !Reaches(dst, "postcopy-paused", 60s)) {
    r.why = "not postcopy-paused after the source tunnel end died: source " + MigStatus(src) + ", destination " +
            MigStatus(dst);
    return false;
  }
  r.paused_ms = MsSince(killed);
  t.src->Wait(10s);
  r.tunnel_cpu += cpu_before;
  t.src = std::make_unique<Subprocess>(SourceEndArgs(t.src_sock, "127.0.0.1:" + port, /*stream_digest=*/false));
  if (!t.src->WaitFor("listening on", 30s)) {
    r.why = "the new source tunnel end did not listen: " + t.src->output();
    return false;
  }
  dst.qmp->Execute("migrate-recover", {{"uri", "unix:" + incoming}});
  const auto resumed = Clock::now();
  src.qmp->Execute("migrate", {{"uri", "unix:" + t.src_sock}, {"resume", true}});
  if (!Reaches(src, "postcopy-active", 60s) && MigStatus(src) != "completed") {
    r.why = "recovery did not reach postcopy-active: source " + MigStatus(src) + "\n" + t.Outputs();
    return false;
  }
  r.recovered_ms = MsSince(resumed);
  return true;
}

PostcopyRun PostcopyOnce(Guest& src, const std::string& dir, const std::string& kind) {
  PostcopyRun r;
  const std::string run_dir = dir + "/run" + std::to_string(++g_bench_runs);
  mkdir(run_dir.c_str(), 0700);
  auto dst = StartQemu(run_dir, "dst", true, 800);
  const std::string incoming = run_dir + "/dst-mig.sock";
  const bool tunnel = kind != "plain", preempt = kind == "tunnel-preempt", recovery = kind == "tunnel-recovery";
  Tunnels t;
  if (tunnel) t = StartTunnels(run_dir, incoming, Pki(), {}, "", /*stream_digest=*/false);
  for (Guest* g : {&src, dst.get()}) {
    g->qmp->Execute("migrate-set-capabilities", {{"capabilities", {{{"capability", "multifd"}, {"state", false}}}}});
    g->qmp->Execute("migrate-set-capabilities", {{"capabilities", {{{"capability", "postcopy-ram"}, {"state", true}}}}});
    if (!SetCapability(*g, "postcopy-preempt", preempt) && preempt) {
      r.why = "this QEMU has no postcopy-preempt capability";
      return r;
    }
  }
  src.qmp->Execute("migrate-set-parameters", {{"max-bandwidth", 10ll << 30}, {"downtime-limit", 300},
                                             {"max-postcopy-bandwidth", recovery ? (32ll << 20) : 0ll}});
  dst->qmp->Execute("migrate-incoming", {{"uri", "unix:" + incoming}});
  src.qmp->Execute("migrate", {{"uri", tunnel ? "unix:" + t.src_sock : "unix:" + incoming}});
  for (auto by = Clock::now() + 120s; Clock::now() < by; std::this_thread::sleep_for(20ms)) {
    const json m = src.qmp->Execute("query-migrate");
    if (m.contains("ram") && m["ram"].value("transferred", 0ll) > (128ll << 20)) break;
  }
  src.qmp->Execute("migrate-start-postcopy");
  const auto switched = Clock::now();
  if (!Reaches(*dst, "postcopy-active", 60s)) {
    r.why = "the destination never became postcopy-active: " + MigStatus(*dst);
    return r;
  }
  dst->qmp->Execute("cont");
  if (recovery) {
    WaitForFileText(dst->serial(), "KTM-GUEST: TICK", 30s);  // the guest runs, faulting pages
    if (!KillSourceEndAndRecover(src, *dst, t, incoming, r)) return r;
  }
  const json m = WaitMigration(src, 300s);
  r.postcopy_ms = MsSince(switched);
  if (m.value("status", "") != "completed") {
    r.why = "status " + m.value("status", std::string("?")) + " " + m.value("error-desc", std::string());
    return r;
  }
  r.total_ms = m.value("total-time", 0.0);
  r.downtime_ms = m.value("downtime", 0.0);
  r.mib = m.contains("ram") ? m["ram"].value("transferred", 0.0) / (1 << 20) : 0;
  r.requests = m.contains("ram") ? m["ram"].value("postcopy-requests", 0.0) : 0;
  if (tunnel) r.tunnel_cpu += TreeCpuSeconds(t.src->pid()) + TreeCpuSeconds(t.dst->pid());
  r.ok = Reaches(*dst, "completed", 60s) || MigStatus(*dst) == "completed";
  if (!r.ok) r.why = "the destination did not complete: " + MigStatus(*dst);
  if (r.ok && !WaitForFileText(dst->serial(), "KTM-GUEST: TICK", 60s)) {
    r.ok = false;
    r.why = "the destination's guest printed nothing after postcopy";
  }
  return r;
}

// The source is in postmigrate after a completed run: take it back.
void ResumeSource(Guest& src) {
  const auto before = ReadFileText(src.serial()).size();
  src.qmp->Execute("cont");
  for (auto by = Clock::now() + 60s; ReadFileText(src.serial()).size() == before && Clock::now() < by;) {
    std::this_thread::sleep_for(50ms);
  }
}

void BenchPostcopy(Guest& src, const std::string& dir, int runs) {
  struct Row {
    std::string kind;
    std::vector<double> total, down, post, req, cpu, mib, paused, recovered;
    std::string fail;
  };
  std::vector<Row> rows;
  for (const std::string kind : {"plain", "tunnel", "tunnel-preempt", "tunnel-recovery"}) {
    Row row{kind, {}, {}, {}, {}, {}, {}, {}, {}, ""};
    for (int i = 0; i < runs; ++i) {
      PostcopyRun b;
      try {
        b = PostcopyOnce(src, dir, kind);
      } catch (const std::exception& e) {
        b.why = e.what();
      }
      std::fprintf(stderr, "  postcopy %-15s run %d: %s\n", kind.c_str(), i + 1,
                   b.ok ? (std::to_string(static_cast<int>(b.postcopy_ms)) + " ms postcopy, " +
                           std::to_string(static_cast<int>(b.requests)) + " requests").c_str()
                        : b.why.c_str());
      if (MigStatus(src) == "postcopy-active" || MigStatus(src) == "active") src.qmp->Execute("migrate_cancel");
      WaitMigration(src, 60s);
      ResumeSource(src);
      if (!b.ok) {
        row.fail = b.why;
        if (b.why.find("no postcopy-preempt") != std::string::npos) break;
        continue;
      }
      row.total.push_back(b.total_ms);
      row.down.push_back(b.downtime_ms);
      row.post.push_back(b.postcopy_ms);
      row.req.push_back(b.requests);
      row.cpu.push_back(b.tunnel_cpu);
      row.mib.push_back(b.mib);
      if (b.paused_ms >= 0) row.paused.push_back(b.paused_ms);
      if (b.recovered_ms >= 0) row.recovered.push_back(b.recovered_ms);
    }
    rows.push_back(row);
  }
  std::printf("\nQEMU %s postcopy (switch after 128 MiB of precopy; destination runs at once), medians of %d runs\n",
              QemuVersion().c_str(), runs);
  std::printf("%-16s %10s %9s %12s %9s %10s %10s %12s  %s\n", "mode", "total ms", "downtime", "postcopy ms", "requests",
              "CPU s/GiB", "paused ms", "recovery ms", "runs ok");
  for (const auto& r : rows) {
    const double cpu_per_gib = Median(r.mib) > 0 ? Median(r.cpu) / (Median(r.mib) / 1024) : 0;
    auto opt = [](const std::vector<double>& v) { return v.empty() ? std::string("-") : std::to_string(static_cast<int>(Median(v))); };
    std::printf("%-16s %10.0f %9.0f %12.0f %9.0f %10.2f %10s %12s  %zu/%d%s\n", r.kind.c_str(), Median(r.total),
                Median(r.down), Median(r.post), Median(r.req), cpu_per_gib, opt(r.paused).c_str(),
                opt(r.recovered).c_str(), r.total.size(), runs, r.fail.empty() ? "" : ("  (failed: " + r.fail + ")").c_str());
  }
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
  // KTM_QEMU_BENCH_ROWS=postcopy: only the postcopy rows (=precopy: only those).
  const std::string only = Env("KTM_QEMU_BENCH_ROWS");
  for (int multifd : {0, 4}) {
    if (only == "postcopy") break;
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
  std::printf("\nQEMU %s live migration, %llu KiB guest (800 MiB random, dirtying 4 MiB/s), TCG, medians of %d runs\n",
              QemuVersion().c_str(), (unsigned long long)RamKib(), runs);
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
  std::fflush(stdout);
  if (only != "precopy") BenchPostcopy(*src, dir.path, runs);
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
}  // namespace ktm::qemutest

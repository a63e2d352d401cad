// `tls-migrate tunnel --dead-peer-timeout` against a real silent network
// failure, not a process death: the two tunnel ends live in two network
// namespaces joined by a veth pair, the destination end (and its local
// target) in one, the source end (and its local client) in the other. Once
// a connection is established, tc's blackhole qdisc on both veth ends drops
// every packet between them: no RST, no FIN, nothing (a pulled cable). Both
// ends must give the connection up within the bound with the dead-peer
// sentence, reset their local connections at once, keep running, and carry
// a new connection once the path is back.
//
// The client and the target are sockets of this test process made inside
// the namespaces (setns(2) on a helper thread: a socket keeps the
// namespace it was created in). Needs root, iproute2 and sch_blackhole.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include <atomic>
#include <fstream>
#include <sstream>
#include <future>
#include <thread>

#include "channel/address.h"
#include "tests/cli_util.h"
#include "tests/netns.h"
#include "tests/tls_util.h"

namespace ktm {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::Has;
using testing::Subprocess;

constexpr int kBound = 3;  // --dead-peer-timeout in these tests (seconds)
// Allowed on top of the bound, from the blackhole to each end's report:
// the kernel's keepalive and retransmit timers fire within a jiffy of the
// bound (DeadPeerSettingsFor picks a 1 s probe interval that hits it), and
// the test polls the ends' output every 20 ms; the rest is for two shared
// cores under load.
constexpr double kSlack = 2.0;

const std::string& Pki() { return testing::SharedPki("ktm-deadpath-pki"); }

std::vector<std::string> Ktls() {
  return testing::KtlsRequired() ? std::vector<std::string>{"--ktls", "require"} : std::vector<std::string>{};
}

// Runs `fn` on a thread that has entered network namespace `ns`; what it
// creates (sockets) stays in that namespace.
template <typename F>
auto InNetns(const std::string& ns, F fn) -> decltype(fn()) {
  return std::async(std::launch::async, [&] {
           UniqueFd nsfd(open(("/var/run/netns/" + ns).c_str(), O_RDONLY | O_CLOEXEC));
           if (!nsfd || setns(nsfd.get(), CLONE_NEWNET) != 0) {
             ThrowErrno(ErrorKind::kInternal, errno, "setns into " + ns);
           }
           return fn();
         })
      .get();
}

std::string Capture(const std::string& cmd) {
  std::string out;
  if (FILE* f = popen((cmd + " 2>&1").c_str(), "r")) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    pclose(f);
  }
  return out;
}

// A process that has not exited (a zombie has).
bool Alive(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string pid_s, comm, state;
  f >> pid_s >> comm >> state;
  return f && state != "Z";
}

void SendAllFd(int fd, const std::vector<uint8_t>& v) {
  for (size_t off = 0; off < v.size();) {
    const ssize_t w = ::send(fd, v.data() + off, v.size() - off, MSG_NOSIGNAL);
    ASSERT_GT(w, 0) << strerror(errno);
    off += static_cast<size_t>(w);
  }
}

std::vector<uint8_t> RecvExactly(int fd, size_t n) {
  std::vector<uint8_t> v(n);
  const ssize_t r = ::recv(fd, v.data(), n, MSG_WAITALL);
  v.resize(r > 0 ? static_cast<size_t>(r) : 0);
  return v;
}

std::vector<uint8_t> Pattern(size_t n, uint64_t seed) {
  std::vector<uint8_t> v(n);
  testing::FillPattern(v.data(), v.size(), seed);
  return v;
}

// Blocks until the socket's connection ends; returns the errno (0: EOF).
int WaitForEnd(int fd) {
  std::vector<uint8_t> buf(1 << 16);
  for (;;) {
    const ssize_t r = ::recv(fd, buf.data(), buf.size(), 0);
    if (r == 0) return 0;
    if (r < 0 && errno != EINTR) return errno;
  }
}

// The dead-peer options of a process's socket, read through pidfd_getfd:
// the kernel's answer, not the program's idea of what it set.
std::string KernelOptions(pid_t pid, int remote_fd) {
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  UniqueFd fd(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), remote_fd, 0)));
  if (!fd) return std::string("pidfd_getfd: ") + strerror(errno);
  auto get = [&](int level, int name) {
    int v = -1;
    socklen_t l = sizeof(v);
    (void)getsockopt(fd.get(), level, name, &v, &l);
    return std::to_string(v);
  };
  return "keepalive " + get(SOL_SOCKET, SO_KEEPALIVE) + " idle " + get(IPPROTO_TCP, TCP_KEEPIDLE) + " intvl " +
         get(IPPROTO_TCP, TCP_KEEPINTVL) + " cnt " + get(IPPROTO_TCP, TCP_KEEPCNT) + " user_timeout " +
         get(IPPROTO_TCP, TCP_USER_TIMEOUT);
}

class DeadPath : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string failed = net_.Create("dp", 78);
    ASSERT_EQ(failed, "") << "setup failed (needs root, iproute2, veth)";
    src_ns_ = net_.a;
    dst_ns_ = net_.b;
    src_ip_ = net_.ip_a;
    dst_ip_ = net_.ip_b;
    target_ = std::make_unique<Listener>(InNetns(dst_ns_, [] { return Listener::Listen("127.0.0.1:0"); }));
    std::vector<std::string> d = {"ip", "netns", "exec", dst_ns_, testing::Cli(), "tunnel", "--tls-listen",
                                  dst_ip_ + ":0", "--forward", target_->address(), "--tls-creds", Pki(),
                                  "--dead-peer-timeout", std::to_string(kBound)};
    for (const auto& a : Ktls()) d.push_back(a);
    dst_ = std::make_unique<Subprocess>(testing::WithBackend(d));
    ASSERT_TRUE(dst_->WaitFor("listening on", 30s)) << dst_->output();
    tls_port_ = testing::ListeningPort(dst_->output());
    std::vector<std::string> s = {"ip", "netns", "exec", src_ns_, testing::Cli(), "tunnel", "--listen", "127.0.0.1:0",
                                  "--connect", dst_ip_ + ":" + tls_port_, "--tls-creds", Pki(), "--tls-hostname",
                                  "localhost", "--dead-peer-timeout", std::to_string(kBound)};
    for (const auto& a : Ktls()) s.push_back(a);
    src_ = std::make_unique<Subprocess>(testing::WithBackend(s));
    ASSERT_TRUE(src_->WaitFor("listening on", 30s)) << src_->output();
    src_addr_ = "127.0.0.1:" + testing::ListeningPort(src_->output());
  }

  void TearDown() override {
    if (src_) src_->Signal(SIGTERM);
    if (dst_) dst_->Signal(SIGTERM);
    if (src_) src_->Wait(30s);
    if (dst_) dst_->Wait(30s);
    net_.Destroy();
  }

  std::string Outputs() { return "--- dst:\n" + dst_->output() + "--- src:\n" + src_->output(); }

  // The silent failure: every packet leaving either veth end is dropped.
  void CutPath() { ASSERT_EQ(net_.Blackhole(true), "") << "no blackhole qdisc (sch_blackhole)?"; }
  void RestorePath() { EXPECT_EQ(net_.Blackhole(false), ""); }

  // A client of the source end and the target's side of the same tunnel
  // connection, after `up`/`down` bytes went through each way byte-exact.
  std::pair<UniqueFd, UniqueFd> Connect(size_t up, size_t down, uint64_t seed) {
    UniqueFd c = InNetns(src_ns_, [&] { return ConnectStream(src_addr_, 10s); });
    const auto a = Pattern(up, seed), b = Pattern(down, seed + 1);
    SendAllFd(c.get(), a);
    UniqueFd served = target_->AcceptFd(30s);
    const timeval limit{30, 0};
    for (int fd : {c.get(), served.get()}) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof(limit));
    EXPECT_TRUE(RecvExactly(served.get(), up) == a) << "up, byte-exact";
    SendAllFd(served.get(), b);
    EXPECT_TRUE(RecvExactly(c.get(), down) == b) << "down, byte-exact";
    return {std::move(c), std::move(served)};
  }

  // Seconds from `t0` until `p` reports connection `seq` failed (-1: not
  // within the bound plus 10 s).
  static double SecondsUntilFailed(Subprocess& p, int seq, Clock::time_point t0) {
    if (!p.WaitFor("connection " + std::to_string(seq) + " FAILED", std::chrono::seconds(kBound + 10))) return -1;
    return std::chrono::duration<double>(Clock::now() - t0).count();
  }

  // Both ends report the dead peer within the bound of the path's death,
  // neither exits. The path is dead once both qdiscs are in place (`cut`:
  // until then one direction still flows, and a segment that gets through
  // is a sign of life); the times printed are from the first qdisc (`t0`),
  // which under TCG may be a second or more earlier.
  void ExpectBothEndsDeclareThePeerDead(Clock::time_point t0, Clock::time_point cut, int seq) {
    auto src_t = std::async(std::launch::async, [&] { return SecondsUntilFailed(*src_, seq, t0); });
    const double dst_s = SecondsUntilFailed(*dst_, seq, t0);
    // Should the source end be late, its kernel's view of the connection
    // then says why (timers, unacknowledged data, retransmits).
    const std::string src_tcp = Capture("ip netns exec " + src_ns_ + " ss -tinoe");
    const double src_s = src_t.get();
    const double cut_s = std::chrono::duration<double>(cut - t0).count();
    std::printf("  dead-peer detection (--dead-peer-timeout %d), from the first qdisc: source end %.2f s, "
                "destination end %.2f s (both qdiscs in place after %.2f s)\n", kBound, src_s, dst_s, cut_s);
    for (double s : {src_s, dst_s}) {
      EXPECT_GT(s, 0) << Outputs();
      EXPECT_LE(s - cut_s, kBound + kSlack) << Outputs() << "--- source namespace's TCP sockets when the "
                                                           "destination end reported:\n" << src_tcp;
    }
    const std::string sentence = "the tunnel peer stopped answering: no TCP acknowledgement or keepalive reply for " +
                                 std::to_string(kBound) + " s (--dead-peer-timeout); the path is down or the peer "
                                 "host is gone";
    EXPECT_TRUE(Has(src_->output(), sentence)) << Outputs();
    EXPECT_TRUE(Has(dst_->output(), sentence)) << Outputs();
    EXPECT_TRUE(Alive(src_->pid()) && Alive(dst_->pid())) << Outputs();
  }

  // After the path is back: a new connection through the same two ends.
  void ExpectANewConnectionCarriesData(int seq) {
    RestorePath();
    auto [c, served] = Connect(1 << 20, 1 << 20, 100 + seq);
    c.reset();
    served.reset();
    EXPECT_TRUE(src_->WaitFor("connection " + std::to_string(seq) + " done", 30s)) << Outputs();
    EXPECT_TRUE(dst_->WaitFor("connection " + std::to_string(seq) + " done", 30s)) << Outputs();
    if (!testing::KtlsRequired()) return;
    ASSERT_TRUE(Has(NsTlsStat(src_ns_), "TlsTxSw ")) << "no kTLS counters";
    // The kTLS VM: both ends spliced into kernel TLS, the dead connection
    // included; the counters are per network namespace.
    EXPECT_TRUE(Has(src_->output(), "splice (kTLS")) << Outputs();
    EXPECT_TRUE(Has(dst_->output(), "splice (kTLS")) << Outputs();
    for (const std::string& ns : {src_ns_, dst_ns_}) {
      const std::string stat = NsTlsStat(ns);
      std::printf("  %s /proc/net/tls_stat: %s\n", ns.c_str(), stat.c_str());
      // At least the two connections' sockets (a process may also probe
      // kTLS on a socket of its own).
      EXPECT_GE(std::atoi(stat.c_str() + stat.find("TlsTxSw ") + 8), 2) << stat;
    }
  }

  // The TlsTxSw/TlsRxSw counters of namespace `ns`, one line.
  static std::string NsTlsStat(const std::string& ns) {
    std::string out;
    std::istringstream lines(Capture("ip netns exec " + ns + " cat /proc/net/tls_stat"));
    for (std::string line; std::getline(lines, line);) {
      std::istringstream is(line);
      std::string k, v;
      is >> k >> v;
      if (k == "TlsTxSw" || k == "TlsRxSw") out += (out.empty() ? "" : ", ") + k + " " + v;
    }
    return out;
  }

  testing::TwoNamespaces net_;  // A: the source end and its client; B: the destination end and the target
  std::string src_ns_, dst_ns_, src_ip_, dst_ip_, tls_port_, src_addr_;
  std::unique_ptr<Listener> target_;
  std::unique_ptr<Subprocess> dst_, src_;
};

// The options reach the kernel on both ends' TLS sockets (the accepted one
// on the destination end included: it inherits them from the listener),
// and each end logs what it read back from its socket.
TEST_F(DeadPath, OptionsAreOnBothEndsTlsSockets) {
  auto [c, served] = Connect(4096, 4096, 1);
  const std::string want = "keepalive 1 idle 1 intvl 1 cnt 2 user_timeout " + std::to_string(kBound * 1000);
  const std::string tls = dst_ip_ + ":" + tls_port_;
  int seen = 0;
  for (Subprocess* p : {src_.get(), dst_.get()}) {
    for (const auto& s : testing::ConnectedTcpSockets(p->pid())) {
      if (s.peer != tls && s.local != tls) continue;  // the local side's socket
      EXPECT_EQ(KernelOptions(p->pid(), s.fd), want) << (p == src_.get() ? "source" : "destination");
      ++seen;
    }
  }
  EXPECT_EQ(seen, 2) << Outputs();
  const std::string line = "connection 0: dead-peer detection on its TLS socket: SO_KEEPALIVE on, TCP_KEEPIDLE 1 s, "
                           "TCP_KEEPINTVL 1 s, TCP_KEEPCNT 2, TCP_USER_TIMEOUT 3000 ms";
  EXPECT_TRUE(Has(src_->output(), line)) << Outputs();
  EXPECT_TRUE(Has(dst_->output(), line)) << Outputs();
}

// The hard case: the connection is quiet both ways when the path dies
// (QEMU's return path between page requests), so no write is pending
// anywhere; keepalive finds the silence.
TEST_F(DeadPath, QuietConnectionEndsOnBothEndsWithinTheBound) {
  auto [c, served] = Connect(256 << 10, 256 << 10, 1);
  // Both local sides wait for their connection to end, as QEMU would.
  auto client_end = std::async(std::launch::async, [fd = c.get()] { return WaitForEnd(fd); });
  auto target_end = std::async(std::launch::async, [fd = served.get()] { return WaitForEnd(fd); });
  const auto t0 = Clock::now();  // the path starts dying with the first qdisc
  CutPath();
  ExpectBothEndsDeclareThePeerDead(t0, Clock::now(), 0);
  ASSERT_EQ(client_end.wait_for(5s), std::future_status::ready) << "the client's connection stayed open";
  ASSERT_EQ(target_end.wait_for(5s), std::future_status::ready) << "the target's connection stayed open";
  EXPECT_EQ(client_end.get(), ECONNRESET) << "the source end resets its local connection";
  EXPECT_EQ(target_end.get(), ECONNRESET) << "the destination end resets its local connection";
  ExpectANewConnectionCarriesData(1);
}

// One direction streams when the path dies: the sending end's data stays
// unacknowledged (TCP_USER_TIMEOUT ends it), the receiving end hears
// nothing (keepalive); both within the bound.
TEST_F(DeadPath, StreamingConnectionEndsOnBothEndsWithinTheBound) {
  auto [c, served] = Connect(4096, 4096, 2);
  std::atomic<bool> flowing{false};
  auto client = std::async(std::launch::async, [&, fd = c.get()] {
    const auto chunk = Pattern(64 << 10, 3);
    for (;;) {
      if (::send(fd, chunk.data(), chunk.size(), MSG_NOSIGNAL) < 0 && errno != EINTR) return errno;
      flowing = true;
    }
  });
  auto target = std::async(std::launch::async, [fd = served.get()] { return WaitForEnd(fd); });
  while (!flowing) std::this_thread::sleep_for(1ms);  // a flag, not a guessed delay: data is moving
  const auto t0 = Clock::now();  // the path starts dying with the first qdisc
  CutPath();
  ExpectBothEndsDeclareThePeerDead(t0, Clock::now(), 0);
  ASSERT_EQ(client.wait_for(5s), std::future_status::ready) << "the client's sends never failed";
  ASSERT_EQ(target.wait_for(5s), std::future_status::ready) << "the target's connection stayed open";
  const int client_err = client.get();
  EXPECT_TRUE(client_err == ECONNRESET || client_err == EPIPE) << strerror(client_err);
  EXPECT_EQ(target.get(), ECONNRESET);
  ExpectANewConnectionCarriesData(1);
}

}  // namespace
}  // namespace ktm

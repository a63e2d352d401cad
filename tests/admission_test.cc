// The admission component (transport/admission.h) in process, over real
// loopback sockets: the overflow rule, alone and under an idle flood, and
// the deadline every pending connection keeps.
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <dirent.h>

#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "channel/address.h"
#include "transport/admission.h"

namespace ktm {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

TEST(OverflowRule, DistinctSourcesLoseTheOldest) {
  EXPECT_EQ(ChooseEviction({"10.0.0.1", "10.0.0.2", "10.0.0.3"}), 0u);
}

TEST(OverflowRule, TheBusiestSourceLosesItsOldest) {
  // The real peer (10.0.0.1) is the oldest; the flood from 10.0.0.9 pays.
  EXPECT_EQ(ChooseEviction({"10.0.0.1", "10.0.0.9", "10.0.0.2", "10.0.0.9", "10.0.0.9"}), 1u);
}

TEST(OverflowRule, AmongEquallyBusySourcesTheOldestConnectionGoes) {
  EXPECT_EQ(ChooseEviction({"a", "b", "b", "a", "c"}), 0u);
  EXPECT_EQ(ChooseEviction({"c", "b", "a", "b", "a"}), 1u);
}

TEST(OverflowRule, OneSourceIsDropTheOldest) { EXPECT_EQ(ChooseEviction({"unix", "unix", "unix"}), 0u); }

sockaddr_storage V6(const char* text) {
  sockaddr_storage ss{};
  auto& a = reinterpret_cast<sockaddr_in6&>(ss);
  a.sin6_family = AF_INET6;
  EXPECT_EQ(inet_pton(AF_INET6, text, &a.sin6_addr), 1) << text;
  return ss;
}

TEST(OverflowRule, SourcesAreAddressesAndIpv6SlashSixtyFours) {
  sockaddr_storage v4{};
  auto& a = reinterpret_cast<sockaddr_in&>(v4);
  a.sin_family = AF_INET;
  a.sin_port = htons(4444);
  inet_pton(AF_INET, "192.0.2.7", &a.sin_addr);
  EXPECT_EQ(AdmissionSource(v4, sizeof(sockaddr_in)), "192.0.2.7");
  EXPECT_EQ(AdmissionSource(V6("2001:db8:1:2:aaaa::1"), sizeof(sockaddr_in6)), "2001:db8:1:2::/64");
  EXPECT_EQ(AdmissionSource(V6("2001:db8:1:2:bbbb::9"), sizeof(sockaddr_in6)), "2001:db8:1:2::/64");
  EXPECT_EQ(AdmissionSource(V6("::ffff:192.0.2.7"), sizeof(sockaddr_in6)), "192.0.2.7");
  sockaddr_storage un{};
  un.ss_family = AF_UNIX;
  EXPECT_EQ(AdmissionSource(un, sizeof(sa_family_t)), "unix");
}

// A TCP connection to `addr` from the local address `from` (any 127/8
// address is local on Linux: two "hosts" on one machine).
UniqueFd ConnectFrom(const char* from, uint16_t port) {
  UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  EXPECT_TRUE(fd) << strerror(errno);
  sockaddr_in src{};
  src.sin_family = AF_INET;
  inet_pton(AF_INET, from, &src.sin_addr);
  EXPECT_EQ(bind(fd.get(), reinterpret_cast<sockaddr*>(&src), sizeof(src)), 0) << strerror(errno);
  sockaddr_in dst{};
  dst.sin_family = AF_INET;
  dst.sin_port = htons(port);
  inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
  EXPECT_EQ(connect(fd.get(), reinterpret_cast<sockaddr*>(&dst), sizeof(dst)), 0) << strerror(errno);
  return fd;
}

struct Harness {
  Listener listener = Listener::Listen("127.0.0.1:0");
  std::vector<std::string> logs;
  std::vector<Admitted> finished;

  AdmissionOptions Options(size_t max_pending, std::chrono::milliseconds timeout) {
    AdmissionOptions o;
    o.security.tls = false;  // the rule is the same with TLS; plaintext keeps the test fast
    o.intro_size = 8;
    o.intro_name = "test intro";
    o.timeout = timeout;
    o.max_pending = max_pending;
    o.log = [this](const std::string& s) { logs.push_back(s); };
    return o;
  }

  // Drives the admission until `done` or the deadline.
  template <typename Pred>
  bool RunUntil(Admission& a, Pred done, std::chrono::milliseconds limit = 30s) {
    const auto by = Clock::now() + limit;
    while (!done()) {
      if (Clock::now() >= by) return false;
      a.Poll(50ms);
      for (auto& f : a.TakeFinished()) finished.push_back(std::move(f));
    }
    return true;
  }

  size_t Logged(const std::string& needle) const {
    size_t n = 0;
    for (const auto& l : logs) n += l.find(needle) != std::string::npos;
    return n;
  }
};

// Think like an attacker: idle connections from one address, before and
// after the real peer (another address) connects, many more than
// max_pending. Refusing the newest would refuse the real peer (the set is
// full when it arrives); dropping the oldest would evict it (it is older
// than the 40 that follow). Evicting from the busiest source lets it
// through, and every eviction hits the flood.
TEST(Admission, AnIdleFloodFromOneAddressCannotKeepARealPeerOut) {
  Harness h;
  Admission a(h.listener, h.Options(4, 10s));
  // Accepted so far: still pending (evicted ones until their thread ends)
  // or finished.
  auto accepted = [&] { return a.PendingPeers().size() + h.finished.size(); };
  std::vector<UniqueFd> flood;
  for (int i = 0; i < 10; ++i) flood.push_back(ConnectFrom("127.0.0.2", h.listener.port()));
  ASSERT_TRUE(h.RunUntil(a, [&] { return accepted() >= 10; }));
  UniqueFd real = ConnectFrom("127.0.0.1", h.listener.port());
  ASSERT_TRUE(h.RunUntil(a, [&] { return accepted() >= 11; }));
  for (int i = 0; i < 40; ++i) flood.push_back(ConnectFrom("127.0.0.2", h.listener.port()));
  ASSERT_TRUE(h.RunUntil(a, [&] { return accepted() >= 51; }));
  EXPECT_EQ(h.Logged("pending authentication: dropping"), 51u - 4u);
  // The real peer introduces itself only now, after the whole flood.
  ASSERT_EQ(::send(real.get(), "REALPEER", 8, MSG_NOSIGNAL), 8);
  const Admitted* admitted = nullptr;
  ASSERT_TRUE(h.RunUntil(a, [&] {
    for (const auto& f : h.finished) {
      if (!f.error) admitted = &f;
    }
    return admitted != nullptr;
  }));
  EXPECT_EQ(std::string(admitted->intro.begin(), admitted->intro.end()), "REALPEER");
  EXPECT_NE(admitted->peer.find("127.0.0.1:"), std::string::npos) << admitted->peer;
  // Evictions: only ever the flood's address, never the real peer.
  EXPECT_EQ(h.Logged("pending authentication: dropping the oldest from the busiest source (127.0.0.2"),
            h.Logged("pending authentication: dropping"));
  EXPECT_EQ(h.Logged("(127.0.0.1,"), 0u);
  for (const auto& f : h.finished) {
    if (f.evicted) {
      EXPECT_NE(f.peer.find("127.0.0.2:"), std::string::npos) << f.peer;
    }
  }
}

// All from one address (a NAT, loopback): the rule is drop the oldest, so
// every arrival gets a fresh handshake window.
TEST(Admission, OneAddressDropsTheOldest) {
  Harness h;
  Admission a(h.listener, h.Options(3, 10s));
  std::vector<UniqueFd> conns;
  for (int i = 0; i < 5; ++i) {
    conns.push_back(ConnectFrom("127.0.0.1", h.listener.port()));
    ASSERT_TRUE(h.RunUntil(a, [&] { return a.PendingPeers().size() + h.finished.size() >= size_t(i) + 1; }));
  }
  ASSERT_TRUE(h.RunUntil(a, [&] { return h.finished.size() >= 2; }));
  // The first two connected are the two evicted.
  const std::string first = SockName(conns[0].get(), false), second = SockName(conns[1].get(), false);
  ASSERT_EQ(h.finished.size(), 2u);
  EXPECT_TRUE(h.finished[0].evicted && h.finished[1].evicted);
  // (Their threads end in any order.)
  std::set<std::string> evicted = {h.finished[0].peer, h.finished[1].peer};
  EXPECT_EQ(evicted, (std::set<std::string>{first, second}));
  EXPECT_NE(std::string(h.finished[0].error->what()).find("pending authentication"), std::string::npos);
}

// A connection that never completes its introduction is cut at its
// deadline (twice the timeout from the accept), also when it trickles bytes
// so that no single read ever waits long.
TEST(Admission, EveryPendingConnectionKeepsItsDeadline) {
  Harness h;
  Admission a(h.listener, h.Options(32, 300ms));
  UniqueFd silent = ConnectFrom("127.0.0.1", h.listener.port());
  UniqueFd trickle = ConnectFrom("127.0.0.1", h.listener.port());
  const auto t0 = Clock::now();
  int sent = 0;
  ASSERT_TRUE(h.RunUntil(a, [&] {
    if (sent < 7 && Clock::now() - t0 > sent * 100ms) {  // 7 of 8 bytes, one per 100 ms
      (void)::send(trickle.get(), "x", 1, MSG_NOSIGNAL);
      ++sent;
    }
    return h.finished.size() == 2;
  }));
  const auto took = Clock::now() - t0;
  EXPECT_GE(took, 550ms);
  EXPECT_LT(took, 3s) << "a deadline ran long";
  for (const auto& f : h.finished) {
    ASSERT_TRUE(f.error);
    EXPECT_EQ(f.error->kind(), ErrorKind::kTimeout) << f.error->what();
    EXPECT_NE(std::string(f.error->what()).find("600 ms"), std::string::npos) << f.error->what();
  }
}

// The lowest descriptor number this process does not use.
int LowestFreeFd() {
  const int probe = dup(0);
  if (probe >= 0) close(probe);
  return probe;
}

// A one-shot accept (Listener::AcceptFd, the C API's ktm_channel_accept)
// out of descriptors follows the same policy: it backs off within its
// timeout and fails as a local resource problem naming the errno (before:
// Error(kInternal) "accept ...: Too many open files" at once), and takes
// the connection once descriptors are back.
TEST(Acceptor, OneShotAcceptBacksOffWithinItsTimeout) {
  Listener l = Listener::Listen("127.0.0.1:0");
  UniqueFd client = ConnectFrom("127.0.0.1", l.port());
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  low.rlim_cur = static_cast<rlim_t>(LowestFreeFd());
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0) << strerror(errno);
  const auto t0 = Clock::now();
  std::optional<Error> err;
  try {
    l.AcceptFd(300ms);
  } catch (const Error& e) {
    err = e;
  }
  const auto took = Clock::now() - t0;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  ASSERT_TRUE(err) << "accepted with no descriptor left?";
  EXPECT_EQ(err->kind(), ErrorKind::kLocalIo) << err->what();
  EXPECT_EQ(err->code(), EMFILE) << err->what();
  EXPECT_GE(took, 290ms);
  EXPECT_LT(took, 2s);
  UniqueFd fd = l.AcceptFd(5s);
  EXPECT_TRUE(fd);
}

}  // namespace
}  // namespace ktm

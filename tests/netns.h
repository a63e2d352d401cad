// Two "hosts" on one machine for tests: network namespaces A and B joined
// by a veth pair, A at 10.<net>.<id>.1 and B at 10.<net>.<id>.2, where id
// comes from the pid so concurrently running test binaries do not collide
// (each suite also passes its own `tag` and `net`). Needs root and
// iproute2; `Blackhole` needs tc's blackhole qdisc (built in wherever
// NET_SCHED is). Processes go in with `ip netns exec NS ...` (Exec).
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace ktm::testing {

class TwoNamespaces {
 public:
  std::string a, b, veth_a, veth_b, ip_a, ip_b;

  // Creates both namespaces, the link and the addresses, lo up in each.
  // Returns "" or the command that failed. `tag`: up to 3 letters.
  std::string Create(const std::string& tag, int net) {
    const std::string id = std::to_string(getpid() % 200 + 10);
    a = "ktm-" + tag + "a-" + id;
    b = "ktm-" + tag + "b-" + id;
    veth_a = "k" + tag + "a" + id;
    veth_b = "k" + tag + "b" + id;
    ip_a = "10." + std::to_string(net) + "." + id + ".1";
    ip_b = "10." + std::to_string(net) + "." + id + ".2";
    Destroy();  // leftovers of a killed earlier run with the same pid
    for (const std::string& c :
         {"ip netns add " + a, "ip netns add " + b,
          "ip link add " + veth_a + " netns " + a + " type veth peer name " + veth_b + " netns " + b,
          "ip -n " + a + " addr add " + ip_a + "/24 dev " + veth_a, "ip -n " + b + " addr add " + ip_b + "/24 dev " + veth_b,
          "ip -n " + a + " link set " + veth_a + " up", "ip -n " + b + " link set " + veth_b + " up",
          "ip -n " + a + " link set lo up", "ip -n " + b + " link set lo up"}) {
      if (!Shell(c)) return c;
    }
    return "";
  }

  void Destroy() {
    if (a.empty()) return;
    Shell("ip netns del " + a);
    Shell("ip netns del " + b);
  }

  // Every packet leaving either veth end dropped (on: a pulled cable, a dead
  // switch: no RST, no ICMP), or flowing again. Returns "" or the failed
  // command.
  std::string Blackhole(bool on) {
    for (const auto& [ns, dev] : {std::pair{a, veth_a}, std::pair{b, veth_b}}) {
      const std::string cmd = on ? "ip netns exec " + ns + " tc qdisc replace dev " + dev + " root blackhole"
                                 : "ip netns exec " + ns + " tc qdisc del dev " + dev + " root";
      if (!Shell(cmd)) return cmd;
    }
    return "";
  }

  // The prefix of a command line that runs in namespace `ns`.
  static std::vector<std::string> Exec(const std::string& ns) { return {"ip", "netns", "exec", ns}; }

  static bool Shell(const std::string& cmd) { return std::system((cmd + " >/dev/null 2>&1").c_str()) == 0; }
};

}  // namespace ktm::testing

// fault_relay: a TCP relay for fault-injection tests. It accepts connections
// on --listen, connects each one upstream to --connect in the order it was
// accepted (each connect completes before the next accept is served), and
// forwards both directions, applying the faults it was given:
//
//   --fault ACTION:DIR:CONN:OFFSET   (repeatable)
//     ACTION  flip   XOR the byte at OFFSET with 0xff (a forged/corrupted stream)
//             drop   close both sides of the connection when OFFSET bytes have passed
//             stall  stop forwarding DIR at OFFSET (connections stay open);
//                    with --resume-file F it goes on once F exists
//             dup    send the 4096 bytes starting at OFFSET twice
//     DIR     up (accepted side -> upstream) or down
//     CONN    index of the connection in accept order, or * for every one
//     OFFSET  byte offset in that direction (K/M suffixes allowed)
//
// It prints "relay: listening on HOST:PORT" once it accepts, and one line
// per fault it applies ("relay: stall up conn 0 at 1048576"), so tests wait
// for events, not for time. It runs until killed. Test tool only.
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/parse.h"
#include "base/unique_fd.h"
#include "channel/address.h"

namespace {

enum class Action { kFlip, kDrop, kStall, kDup };

struct Fault {
  Action action;
  bool up;
  int conn;  // -1: every connection
  uint64_t offset;
};

std::mutex g_print_mu;
std::string g_resume_file;

void Say(const std::string& s) {
  std::lock_guard<std::mutex> l(g_print_mu);
  std::printf("relay: %s\n", s.c_str());
  std::fflush(stdout);
}

uint64_t ParseOffset(std::string s) {
  uint64_t mult = 1;
  if (!s.empty() && (s.back() == 'K' || s.back() == 'M')) {
    mult = s.back() == 'K' ? 1024 : 1024 * 1024;
    s.pop_back();
  }
  auto v = ktm::ParseUnsigned(s);
  if (!v) throw std::runtime_error("bad offset '" + s + "'");
  return *v * mult;
}

Fault ParseFault(const std::string& spec) {
  std::vector<std::string> parts;
  size_t start = 0;
  for (size_t i = 0; i <= spec.size(); ++i) {
    if (i == spec.size() || spec[i] == ':') {
      parts.push_back(spec.substr(start, i - start));
      start = i + 1;
    }
  }
  if (parts.size() != 4) throw std::runtime_error("fault '" + spec + "': expected ACTION:DIR:CONN:OFFSET");
  Fault f{};
  if (parts[0] == "flip") f.action = Action::kFlip;
  else if (parts[0] == "drop") f.action = Action::kDrop;
  else if (parts[0] == "stall") f.action = Action::kStall;
  else if (parts[0] == "dup") f.action = Action::kDup;
  else throw std::runtime_error("fault '" + spec + "': unknown action");
  if (parts[1] != "up" && parts[1] != "down") throw std::runtime_error("fault '" + spec + "': DIR is up or down");
  f.up = parts[1] == "up";
  f.conn = parts[2] == "*" ? -1 : static_cast<int>(ktm::ParseUnsigned(parts[2]).value_or(0));
  f.offset = ParseOffset(parts[3]);
  return f;
}

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// One relayed connection: when the second direction has finished, both
// sockets are closed (a side still writing then gets a reset, as it would
// from a dead host: closing with unread input sends RST, where shutdown
// would leave the writer facing a zero window); the first to finish only
// half-closes, so what is in flight the other way (a final status) still
// arrives.
struct Conn {
  int down_fd, up_fd;
  std::atomic<int> finished{0};
  std::atomic<bool> dropped{false};
  void Finished() {
    if (finished.fetch_add(1) == 1) {
      close(down_fd);
      close(up_fd);
    }
  }
};

void Pump(int from, int to, int conn, bool up, const std::vector<Fault>& faults, Conn* state);

// Forwards one direction of one connection, applying its faults.
void PumpLoop(int from, int to, int conn, bool up, const std::vector<Fault>& faults, std::atomic<bool>* dropped) {
  const char* dir = up ? "up" : "down";
  std::vector<Fault> mine;
  for (const auto& f : faults) {
    if (f.up == up && (f.conn < 0 || f.conn == conn)) mine.push_back(f);
  }
  std::vector<char> buf(64 << 10);
  uint64_t pos = 0;
  for (;;) {
    // Never read past the next fault's offset, so it applies at that byte.
    size_t want = buf.size();
    for (const auto& f : mine) {
      if (f.offset >= pos && f.offset - pos < want) want = std::max<uint64_t>(1, f.offset - pos);
      if (f.offset == pos) want = f.action == Action::kDup ? 4096 : 1;
    }
    auto at = [&](Action a) {
      return std::find_if(mine.begin(), mine.end(), [&](const Fault& f) { return f.offset == pos && f.action == a; });
    };
    if (auto stall = at(Action::kStall); stall != mine.end()) {
      Say(std::string("stall ") + dir + " conn " + std::to_string(conn) + " at " + std::to_string(pos));
      // Polling a file is how the test tells the relay to go on: the relay
      // has no other channel to its test, and 10 ms is only latency.
      while (g_resume_file.empty() || access(g_resume_file.c_str(), F_OK) != 0) usleep(10 * 1000);
      Say(std::string("resume ") + dir + " conn " + std::to_string(conn));
      mine.erase(stall);
      continue;
    }
    if (at(Action::kDrop) != mine.end()) {
      Say(std::string("drop ") + dir + " conn " + std::to_string(conn) + " at " + std::to_string(pos));
      dropped->store(true);
      shutdown(from, SHUT_RDWR);
      shutdown(to, SHUT_RDWR);
      return;
    }
    ssize_t n = recv(from, buf.data(), want, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      shutdown(to, SHUT_WR);  // half-close propagates
      return;
    }
    if (n < 0) return;  // reset: Conn closes everything when both directions are done
    bool dup = false;
    for (const auto& f : mine) {
      if (f.action == Action::kFlip && f.offset >= pos && f.offset < pos + static_cast<uint64_t>(n)) {
        buf[f.offset - pos] = static_cast<char>(buf[f.offset - pos] ^ 0xff);
        Say(std::string("flip ") + dir + " conn " + std::to_string(conn) + " at " + std::to_string(f.offset));
      }
      if (f.action == Action::kDup && f.offset == pos) dup = true;
    }
    // A side that cannot take more is gone: stop this direction (Conn
    // closes everything once the other direction has ended too).
    if (!WriteAll(to, buf.data(), static_cast<size_t>(n))) return;
    if (dup) {
      Say(std::string("dup ") + dir + " conn " + std::to_string(conn) + " at " + std::to_string(pos));
      if (!WriteAll(to, buf.data(), static_cast<size_t>(n))) return;
    }
    pos += static_cast<uint64_t>(n);
  }
}

void Pump(int from, int to, int conn, bool up, const std::vector<Fault>& faults, Conn* state) {
  PumpLoop(from, to, conn, up, faults, &state->dropped);
  state->Finished();
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  std::string listen_addr, connect_addr;
  std::vector<Fault> faults;
  try {
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string a = argv[i];
      if (a == "--listen") listen_addr = argv[i + 1];
      else if (a == "--connect") connect_addr = argv[i + 1];
      else if (a == "--fault") faults.push_back(ParseFault(argv[i + 1]));
      else if (a == "--resume-file") g_resume_file = argv[i + 1];
      else throw std::runtime_error("unknown option " + a);
    }
    if (listen_addr.empty() || connect_addr.empty()) {
      throw std::runtime_error("usage: fault_relay --listen ADDR --connect ADDR [--fault ACTION:DIR:CONN:OFFSET]...");
    }
    ktm::Listener l = ktm::Listener::Listen(listen_addr);
    Say("listening on " + l.address());
    for (int conn = 0;; ++conn) {
      ktm::UniqueFd down(l.AcceptFd(std::chrono::milliseconds(-1)));
      ktm::UniqueFd upstream;
      try {
        upstream = ktm::ConnectStream(connect_addr, std::chrono::seconds(10));
      } catch (const ktm::Error& e) {
        Say(std::string("connect upstream failed: ") + e.what());
        continue;
      }
      Say("conn " + std::to_string(conn) + " accepted and connected upstream");
      auto* state = new Conn{down.release(), upstream.release()};  // lives as long as the process
      std::thread(Pump, state->down_fd, state->up_fd, conn, true, faults, state).detach();
      std::thread(Pump, state->up_fd, state->down_fd, conn, false, faults, state).detach();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fault_relay: %s\n", e.what());
    return 2;
  }
}

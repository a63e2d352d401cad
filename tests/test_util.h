// Helpers shared by the channel tests: connected socket pairs on loopback and
// deterministic page-like data.
#pragma once

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <linux/capability.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <functional>
#include <utility>
#include <vector>

#include "base/child.h"
#include "base/error.h"
#include "channel/socket_channel.h"
#include "util/sha256.h"

namespace ktm::testing {

struct Pair {
  std::unique_ptr<SocketChannel> client;
  std::unique_ptr<SocketChannel> server;
};

// Listens on `listen_addr` (port 0 = any), connects, accepts.
inline Pair ConnectedPair(const std::string& listen_addr, const SocketOptions& client_opts = {},
                          const SocketOptions& server_opts = {}) {
  Listener l = Listener::Listen(listen_addr);
  Pair p;
  p.client = SocketChannel::Connect(l.address(), std::chrono::seconds(5), client_opts);
  p.server = AcceptChannel(l, std::chrono::seconds(5), server_opts);
  return p;
}

// Makes the socket behind `fd` end with a reset (SO_LINGER 0) once its
// last descriptor is closed: a peer that has gone away, not one that
// closed in order.
inline void ResetOnClose(int fd) {
  const linger l{1, 0};
  if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l)) != 0) ThrowErrno(ErrorKind::kInternal, errno, "SO_LINGER");
}

// Waits (at most 10 s) until the connection of `fd` has been hung up or
// reset by the peer, without consuming the error. True if it has.
inline bool WaitHangup(int fd) {
  pollfd p{fd, 0, 0};  // POLLHUP and POLLERR are always reported
  return poll(&p, 1, 10000) == 1 && (p.revents & (POLLHUP | POLLERR));
}

// An anonymous private mapping, unmapped on destruction.
class Mapping {
 public:
  explicit Mapping(size_t len) : len_(len) {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) ThrowErrno(ErrorKind::kInternal, errno, "mmap");
    p_ = static_cast<uint8_t*>(p);
  }
  ~Mapping() { munmap(p_, len_); }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  uint8_t* data() const { return p_; }
  size_t size() const { return len_; }

 private:
  uint8_t* p_;
  size_t len_;
};

// Fills with a cheap xorshift stream so every page differs.
inline void FillPattern(uint8_t* p, size_t len, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  size_t i = 0;
  for (; i + 8 <= len; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, 8);
  }
  for (; i < len; ++i) p[i] = static_cast<uint8_t>(i);
}

// Reads until end of stream, hashing everything. Returns (bytes, digest).
inline std::pair<uint64_t, Sha256::Digest> DrainAndHash(Channel& ch) {
  std::vector<uint8_t> buf(1 << 20);
  Sha256 h;
  uint64_t total = 0;
  for (;;) {
    iovec v{buf.data(), buf.size()};
    ReadResult r = ch.readv(std::span<const iovec>(&v, 1));
    if (r.eof()) break;
    h.Update(buf.data(), r.bytes);
    total += r.bytes;
  }
  return {total, h.Final()};
}

// Drops CAP_IPC_LOCK (root bypasses RLIMIT_MEMLOCK with it).
inline bool DropIpcLock() {
  __user_cap_header_struct hdr{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2] = {};
  if (syscall(SYS_capget, &hdr, data) != 0) return false;
  for (auto& d : data) {
    d.effective &= ~(1u << CAP_IPC_LOCK);
    d.permitted &= ~(1u << CAP_IPC_LOCK);
    d.inheritable &= ~(1u << CAP_IPC_LOCK);
  }
  return syscall(SYS_capset, &hdr, data) == 0;
}

// RunInChild lives in base/child.h (the CLI uses it too).
using ::ktm::RunInChild;

// A fresh directory, removed with its contents at the end.
struct TempDir {
  std::string path;
  explicit TempDir(const char* prefix = "ktm-test") {
    std::string t = std::string("/tmp/") + prefix + "-XXXXXX";
    path = mkdtemp(t.data());
  }
  ~TempDir() { (void)!system(("rm -rf '" + path + "'").c_str()); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  bool Has(const std::string& name) const { return access((path + "/" + name).c_str(), F_OK) == 0; }
  std::vector<std::string> Entries() const {
    std::vector<std::string> out;
    DIR* d = opendir(path.c_str());
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] != '.') out.push_back(e->d_name);
    }
    closedir(d);
    return out;
  }
};

// One connected TCP socket of a process and whether Nagle is off on it.
struct TcpSocketState {
  int fd = -1;                // the fd number in that process
  std::string local, peer;    // SockName() of both ends
  bool nodelay = false;       // getsockopt(TCP_NODELAY) != 0
};

// Every connected TCP socket `pid` holds now (the test itself too: pass
// getpid()). Other processes' sockets are read through pidfd_getfd, so the
// answer is the kernel's, not the program's idea of what it set.
inline std::vector<TcpSocketState> ConnectedTcpSockets(pid_t pid) {
  std::vector<TcpSocketState> out;
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) ThrowErrno(ErrorKind::kInternal, errno, "pidfd_open");
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = opendir(dir.c_str());
  if (!d) ThrowErrno(ErrorKind::kInternal, errno, "opendir " + dir);
  while (dirent* e = readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char target[64] = {};
    if (readlink((dir + "/" + e->d_name).c_str(), target, sizeof(target) - 1) < 0) continue;
    if (std::strncmp(target, "socket:", 7) != 0) continue;
    const int remote = std::atoi(e->d_name);
    UniqueFd fd(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), remote, 0)));
    if (!fd) continue;  // closed meanwhile
    int type = 0, proto = 0;
    socklen_t l = sizeof(type);
    if (getsockopt(fd.get(), SOL_SOCKET, SO_TYPE, &type, &l) != 0 || type != SOCK_STREAM) continue;
    l = sizeof(proto);
    if (getsockopt(fd.get(), SOL_SOCKET, SO_PROTOCOL, &proto, &l) != 0 || proto != IPPROTO_TCP) continue;
    sockaddr_storage ss{};
    socklen_t sl = sizeof(ss);
    if (getpeername(fd.get(), reinterpret_cast<sockaddr*>(&ss), &sl) != 0) continue;  // listening
    int nodelay = 0;
    l = sizeof(nodelay);
    if (getsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &nodelay, &l) != 0) continue;
    out.push_back({remote, SockName(fd.get(), false), SockName(fd.get(), true), nodelay != 0});
  }
  closedir(d);
  return out;
}

}  // namespace ktm::testing

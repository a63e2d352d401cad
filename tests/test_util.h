// Helpers shared by the channel tests: connected socket pairs on loopback and
// deterministic page-like data.
#pragma once

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>

#include "channel/error.h"
#include "channel/socket_channel.h"

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
  p.server = l.Accept(std::chrono::seconds(5), server_opts);
  return p;
}

// An anonymous private mapping, unmapped on destruction.
class Mapping {
 public:
  explicit Mapping(size_t len) : len_(len) {
    void* p = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) ThrowErrno(errno, "mmap");
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

}  // namespace ktm::testing

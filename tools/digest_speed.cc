// Prints how long the end-to-end image digest takes on this machine, one
// thread vs all CPUs: the time the switch-over waits for it on each side.
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "util/sha256.h"

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 1024;
  const size_t len = mib << 20;
  auto* p = static_cast<uint8_t*>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  for (size_t i = 0; i < len; i += 4096) std::memset(p + i, static_cast<int>(i >> 12), 4096);
  auto time = [&](unsigned threads) {
    auto t0 = std::chrono::steady_clock::now();
    ktm::Sha256::Digest d = ktm::ImageDigest(p, len, threads);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  %u thread(s): %.3f s (%.2f GB/s)  %s...\n", threads, s, len / s / 1e9,
                ktm::Sha256::Hex(d).substr(0, 16).c_str());
    return s;
  };
  const unsigned all = std::thread::hardware_concurrency();
  std::printf("image digest of %zu MiB:\n", mib);
  const double one = time(1), many = time(all);
  std::printf("  speed-up with %u threads: %.2fx\n", all, one / many);
  return 0;
}

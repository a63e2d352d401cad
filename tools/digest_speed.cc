// Prints what the end-to-end image digest costs on this machine: hashing
// every page (done while pages move, util/image_digest.h) with XXH3-128 and
// with SHA-256, the switch-over's share (hashing the page digests only), and
// the former whole-image SHA-256 tree, which the switch-over used to wait for.
#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "util/image_digest.h"
#include "util/sha256.h"

namespace {

template <typename F>
double Seconds(F fn) {
  const auto t0 = std::chrono::steady_clock::now();
  fn();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  const size_t mib = argc > 1 ? std::strtoul(argv[1], nullptr, 10) : 1024;
  const size_t len = mib << 20;
  constexpr uint32_t kPage = 4096;
  auto* p = static_cast<uint8_t*>(mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  if (p == MAP_FAILED) return 1;
  for (size_t i = 0; i < len; i += kPage) std::memset(p + i, static_cast<int>(i >> 12), kPage);
  std::printf("image digest of %zu MiB, one thread unless said:\n", mib);
  for (ktm::DigestAlgorithm alg : {ktm::DigestAlgorithm::kXxh3, ktm::DigestAlgorithm::kSha256}) {
    ktm::PageDigests d(alg, len, kPage);
    const double pages = Seconds([&] {
      for (size_t i = 0; i < len / kPage; ++i) d.Update(i, p + i * kPage);
    });
    ktm::ImageHash h{};
    const double final = Seconds([&] { h = d.Final(); });
    std::printf("  %-6s every page %.3f s (%.2f GB/s, spread over the transfer); at switch-over %.4f s  %s\n",
                std::string(ktm::DigestName(alg)).c_str(), pages, len / pages / 1e9, final,
                ktm::DigestHex(alg, h).substr(0, 16).c_str());
  }
  const unsigned all = std::thread::hardware_concurrency();
  for (unsigned threads : {1u, all}) {
    const double s = Seconds([&] { (void)ktm::ImageDigest(p, len, threads); });
    std::printf("  former switch-over digest (SHA-256 tree of the whole image), %u thread(s): %.3f s\n", threads, s);
  }
  return 0;
}

// "No heap allocation per page in the send path", measured: every
// operator new in this binary is counted while a plaintext migration of
// 16384 pages runs in process.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <future>
#include <new>

#include "transport/migration.h"

namespace {
std::atomic<uint64_t> g_news{0};
}

void* operator new(size_t n) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace ktm {
namespace {

TEST(Alloc, SendPathDoesNotAllocatePerPageOrPerPacket) {
  auto img = MappedImage::Anonymous(64u << 20);  // 16384 pages, 256 data packets
  img->FillMixed(0, 3);
  Listener l = Listener::Listen("127.0.0.1:0");
  auto dst = std::async(std::launch::async, [&] {
    DestinationOptions d;
    d.security.tls = false;
    RunDestination(l, d);  // in memory
  });
  SourceOptions s;
  s.address = l.address();
  s.channels = 1;
  s.security.tls = false;
  const uint64_t before = g_news.load();
  MigrationReport r = RunSource(*img, s);
  dst.get();
  const uint64_t news = g_news.load() - before;
  std::printf("  %llu operator-new calls for %llu pages (both ends, setup included)\n",
              (unsigned long long)news, (unsigned long long)r.pages);
  EXPECT_EQ(r.pages, 16384u);
  // Setup (channel, sender ring, threads, buffers) is a fixed cost; one
  // allocation per data packet would already be 256.
  EXPECT_LT(news, 200u);
}

}  // namespace
}  // namespace ktm

#include "transport/page_source.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "base/error.h"

namespace ktm {

// Reads pages a live writer may be changing: that race is what precopy is
// about (a changed page is re-sent), so it is exempt from TSan.
__attribute__((no_sanitize("thread"))) bool IsZeroPage(const uint8_t* p, size_t len) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  for (size_t i = 0; i < len / 8; i += 8) {
    if ((w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7]) != 0) {
      return false;
    }
  }
  return true;
}

std::unique_ptr<MappedImage> MappedImage::FromFile(const std::string& path, uint32_t page_size) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot open input image " + path);
  struct stat st{};
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    ThrowErrno(ErrorKind::kLocalIo, e, "stat " + path);
  }
  if (st.st_size == 0) {
    close(fd);
    throw Error(ErrorKind::kLocalIo, EINVAL, "input image " + path + " is empty");
  }
  std::unique_ptr<MappedImage> m(new MappedImage());
  m->size_ = static_cast<uint64_t>(st.st_size);
  m->page_size_ = page_size;
  m->map_len_ = (m->size_ + page_size - 1) / page_size * page_size;
  // The tail of the last page reads as zeros past EOF, so whole pages can
  // always be sent.
  void* p = mmap(nullptr, m->map_len_, PROT_READ, MAP_PRIVATE, fd, 0);
  int e = errno;
  close(fd);
  if (p == MAP_FAILED) ThrowErrno(ErrorKind::kLocalIo, e, "mmap " + path);
  m->base_ = static_cast<uint8_t*>(p);
  madvise(p, m->map_len_, MADV_SEQUENTIAL);
  return m;
}

std::unique_ptr<MappedImage> MappedImage::Anonymous(uint64_t size, uint32_t page_size) {
  if (size == 0) throw Error(ErrorKind::kUsage, EINVAL, "image size must be > 0");
  std::unique_ptr<MappedImage> m(new MappedImage());
  m->size_ = size;
  m->page_size_ = page_size;
  m->map_len_ = (size + page_size - 1) / page_size * page_size;
  void* p = mmap(nullptr, m->map_len_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) ThrowErrno(ErrorKind::kLocalIo, errno, "mmap " + std::to_string(size) + " bytes for the image");
  m->base_ = static_cast<uint8_t*>(p);
  return m;
}

MappedImage::~MappedImage() {
  if (base_) munmap(base_, map_len_);
}

void MappedImage::CollectDirty(std::vector<uint64_t>& pages) {
  if (reported_) return;
  reported_ = true;
  for (uint64_t i = 0; i < page_count(); ++i) pages.push_back(i);
}

void MappedImage::FillMixed(unsigned zero_percent, uint64_t seed) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x1234567;
  for (uint64_t pg = 0; pg < page_count(); ++pg) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    uint8_t* p = base_ + pg * page_size_;
    if (x % 100 < zero_percent) continue;  // stays zero
    uint64_t y = x;
    for (uint32_t i = 0; i < page_size_; i += 8) {
      y ^= y << 13, y ^= y >> 7, y ^= y << 17;
      std::memcpy(p + i, &y, 8);
    }
  }
}

LiveImage::LiveImage(std::unique_ptr<MappedImage> image, uint64_t dirty_bytes_per_sec, uint64_t seed)
    : image_(std::move(image)), rate_(dirty_bytes_per_sec), dirty_((image_->page_count() + 63) / 64) {
  writer_ = std::thread([this, seed] { WriterLoop(seed); });
}

LiveImage::~LiveImage() { Freeze(); }

// The writer stands in for a running guest's vCPUs, whose stores a real
// migration never sees either: they race with the transport reading and
// sending the same pages, which is precopy's premise (a changed page is
// marked dirty and re-sent). So the writer is not instrumented by TSan;
// everything else is.
__attribute__((no_sanitize("thread"))) void LiveImage::WriterLoop(uint64_t seed) {
  using Clock = std::chrono::steady_clock;
  const uint64_t pages = image_->page_count();
  const uint32_t ps = image_->page_size();
  uint64_t x = seed * 0x2545F4914F6CDD1Dull + 99;
  auto start = Clock::now();
  uint64_t written = 0;
  while (!stop_.load(std::memory_order_relaxed)) {
    // Pace to the rate: write in bursts of 16 pages, sleep when ahead.
    double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    if (rate_ == 0 || double(written * ps) > elapsed * double(rate_)) {
      std::this_thread::sleep_for(std::chrono::microseconds(500));
      continue;
    }
    for (int k = 0; k < 16; ++k) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      const uint64_t pg = x % pages;
      uint8_t* p = image_->mutable_data() + pg * ps;
      // Change a few words, like a guest touching a page.
      for (int w = 0; w < 4; ++w) {
        uint64_t v = x + w;
        std::memcpy(p + ((x >> (8 * w)) % (ps / 8)) * 8, &v, 8);
      }
      // Mark after the write: see the class comment.
      dirty_[pg / 64].fetch_or(1ull << (pg % 64), std::memory_order_release);
      ++written;
    }
    pages_written_.store(written, std::memory_order_relaxed);
  }
}

void LiveImage::CollectDirty(std::vector<uint64_t>& pages) {
  if (first_) {
    first_ = false;
    for (auto& w : dirty_) w.store(0, std::memory_order_relaxed);
    image_->CollectDirty(pages);
    return;
  }
  for (uint64_t i = 0; i < dirty_.size(); ++i) {
    uint64_t bits = dirty_[i].exchange(0, std::memory_order_acquire);
    while (bits) {
      int b = __builtin_ctzll(bits);
      pages.push_back(i * 64 + b);
      bits &= bits - 1;
    }
  }
}

void LiveImage::Freeze() {
  stop_.store(true);
  if (writer_.joinable()) writer_.join();
}

}  // namespace ktm


#include "transport/page_source.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <algorithm>
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

namespace {

bool SameTime(const timespec& a, const timespec& b) { return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec; }

// What changes when a file's bytes are rewritten in place: a write that
// keeps the size still sets mtime and ctime (and ctime cannot be set back
// with utimes), as tar's "file changed as we read it" relies on. Times are
// compared to the nanosecond; since Linux 6.13 (multigrain timestamps) a
// change after our fstat always gets a newer time, before that a write in
// the same clock tick as our fstat (a few ms) could go unseen.
std::string ChangeOf(const struct stat& was, const struct stat& now) {
  if (now.st_size != was.st_size) {
    return "size " + std::to_string(was.st_size) + " -> " + std::to_string(now.st_size) + " bytes";
  }
  if (!SameTime(now.st_mtim, was.st_mtim)) return "rewritten in place: same size, new modification time";
  if (!SameTime(now.st_ctim, was.st_ctim)) return "rewritten in place or its metadata changed: new ctime";
  return "";
}

}  // namespace

std::unique_ptr<MappedImage> MappedImage::FromFile(const std::string& path, uint32_t page_size) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused
  // below); regular files ignore the flag.
  UniqueFd fd(open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot open input image " + path);
  struct stat st{};
  if (fstat(fd.get(), &st) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "stat " + path);
  if (S_ISDIR(st.st_mode)) throw Error(ErrorKind::kLocalIo, EISDIR, "input image " + path + " is a directory");
  if (!S_ISREG(st.st_mode)) {
    throw Error(ErrorKind::kLocalIo, EINVAL,
                "input image " + path + " is not a regular file (a pipe or device has no fixed size to migrate)");
  }
  if (st.st_size == 0) throw Error(ErrorKind::kLocalIo, EINVAL, "input image " + path + " is empty");
  std::unique_ptr<MappedImage> m = Anonymous(static_cast<uint64_t>(st.st_size), page_size);
  // A snapshot with pread, not a file mapping: a file that shrinks under a
  // mapping turns the next access into SIGBUS; here it is a short read.
  for (uint64_t off = 0; off < m->size_;) {
    ssize_t n = pread(fd.get(), m->base_ + off, std::min<uint64_t>(m->size_ - off, 8u << 20), static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) ThrowErrno(ErrorKind::kLocalIo, errno, "read " + path);
    if (n == 0) {
      throw Error(ErrorKind::kLocalIo, EIO,
                  "input " + path + " changed size during the migration (shrank to " + std::to_string(off) +
                      " of " + std::to_string(m->size_) + " bytes while it was read)");
    }
    off += static_cast<uint64_t>(n);
  }
  // A write that landed while we read leaves a snapshot that is neither
  // the old nor the new file: refuse it now, before any connection.
  struct stat after{};
  if (fstat(fd.get(), &after) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "stat " + path);
  if (const std::string change = ChangeOf(st, after); !change.empty()) {
    throw Error(ErrorKind::kLocalIo, EIO,
                "input " + path + " changed while it was read (" + change +
                    "): the copy read is not any one version of the file; migrate a file nothing writes to "
                    "(stop the writer, or copy or snapshot it first)");
  }
  m->path_ = path;
  m->file_ = std::move(fd);
  m->file_stat_ = st;
  return m;
}

void MappedImage::Validate() const {
  if (!file_) return;
  struct stat now{};
  if (fstat(file_.get(), &now) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "stat " + path_);
  // file_stat_ is from before the read: this also catches a write during
  // the read that the check right after it missed.
  if (const std::string change = ChangeOf(file_stat_, now); !change.empty()) {
    throw Error(ErrorKind::kLocalIo, EIO,
                "input " + path_ + " changed during the migration (" + change + "); the image sent is the file "
                    "as it was when the migration started, so it is not confirmed");
  }
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


#include "transport/image_store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#include "base/path.h"

namespace ktm {
namespace {

// The mkostemp template of the temporary file beside `output`,
// "NAME.partial.XXXXXX", with NAME cut short when the whole would pass the
// directory's longest file name (255 bytes on Linux filesystems): every
// legal output name works (a 241-255 byte one was refused for the suffix).
// Throws Error(kLocalIo) saying so for a name that is itself too long.
std::string TempTemplateFor(const std::string& output) {
  static const std::string kSuffix = ".partial.XXXXXX";
  const size_t slash = output.find_last_of('/');
  const size_t base = slash == std::string::npos ? 0 : slash + 1;
  std::string name = output.substr(base);
  long max = pathconf(DirectoryOf(output).c_str(), _PC_NAME_MAX);
  if (max <= 0) max = NAME_MAX;
  const size_t name_max = static_cast<size_t>(max);
  if (name.size() > name_max) {
    throw Error(ErrorKind::kLocalIo, ENAMETOOLONG,
                "output file name is " + std::to_string(name.size()) + " bytes, this filesystem allows at most " +
                    std::to_string(name_max) + " (File name too long)");
  }
  if (name.size() + kSuffix.size() > name_max) name.resize(name_max - kSuffix.size());
  return output.substr(0, base) + name + kSuffix;
}

// Bytes an unprivileged writer may still use on the filesystem of `output`.
uint64_t FreeBytes(const std::string& output) {
  struct statvfs v{};
  if (statvfs(DirectoryOf(output).c_str(), &v) != 0) return 0;
  return static_cast<uint64_t>(v.f_bavail) * v.f_frsize;
}

std::string Mib(uint64_t bytes) { return std::to_string(bytes >> 20) + " MiB"; }

}  // namespace

void CheckImageFits(const DestinationOptions& opts, uint64_t size, uint64_t padded) {
  if (opts.max_size && size > opts.max_size) {
    throw Error(ErrorKind::kLocalIo, EFBIG,
                "the source's image (" + std::to_string(size) + " bytes) exceeds the destination's size limit (" +
                    std::to_string(opts.max_size) + " bytes)");
  }
  const std::string& output = opts.output;
  if (output.empty()) {
    if (opts.memory && opts.memory_size < padded) {
      throw Error(ErrorKind::kLocalIo, ENOSPC,
                  "not enough space for the image: needs " + std::to_string(padded) +
                      " bytes, the destination's buffer has " + std::to_string(opts.memory_size));
    }
    return;
  }
  const uint64_t free = FreeBytes(output);
  if (padded > free) {
    throw Error(ErrorKind::kLocalIo, ENOSPC,
                "not enough space for the image: needs " + Mib(padded) + ", " + Mib(free) + " free on " +
                    DirectoryOf(output));
  }
}

TempImage::TempImage(const std::string& output, uint64_t size, uint64_t padded,
                     const std::function<void(const std::string&)>& hook, uint8_t* memory)
    : size_(size), padded_(padded), hook_(hook) {
  if (output.empty() && memory) {
    base_ = memory;
    borrowed_ = true;
    return;
  }
  if (output.empty()) {
    void* p = mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot allocate " + std::to_string(padded) + " bytes for the image");
    base_ = static_cast<uint8_t*>(p);
    return;
  }
  // Opened first: the commit cannot be durable without it.
  dir_fd_ = OpenDirectoryForSync(DirectoryOf(output));
  path_ = TempTemplateFor(output);
  int fd = mkostemp(path_.data(), O_CLOEXEC);
  if (fd < 0) {
    ThrowErrno(ErrorKind::kLocalIo, errno, "cannot create a temporary file beside " + output +
                          " (is the directory writable?)");
  }
  fd_.reset(fd);
  if (hook_) hook_(path_);
  // Reserve every block now: the image then cannot run out of space
  // halfway through, and a full disk is one clear error up front.
  if (int rc = posix_fallocate(fd, 0, static_cast<off_t>(padded)); rc != 0) {
    Discard();
    if (rc == ENOSPC) {
      throw Error(ErrorKind::kLocalIo, ENOSPC,
                  "not enough space for the image beside " + output + ": needs " + std::to_string(padded) +
                      " bytes, " + std::to_string(FreeBytes(output)) + " free");
    }
    ThrowErrno(ErrorKind::kLocalIo, rc, "cannot reserve " + std::to_string(padded) + " bytes for " + path_);
  }
  // Pages are written with pwrite from each receiver's buffer, not through
  // a shared mapping: a mapping costs a page fault per page on first write
  // and another after each writeback, and msync at the end.
}

void TempImage::Commit(const std::string& output) {
  if (output.empty()) return;  // in memory: verified is all there is
  if (ftruncate(fd_.get(), static_cast<off_t>(size_)) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "truncate " + path_);
  if (fchmod(fd_.get(), 0644) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot set mode 0644 on " + path_);
  if (fsync(fd_.get()) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "fsync " + path_);
  if (rename(path_.c_str(), output.c_str()) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "rename to " + output);
  // The name now holds the verified image and whatever was there before
  // is gone: never unlink it, even if the directory cannot be synced.
  path_ = output;
  committed_ = true;
  if (hook_) hook_("");
  if (fsync(dir_fd_.get()) != 0) {
    ThrowErrno(ErrorKind::kLocalIo, errno,
               "fsync of directory " + DirectoryOf(output) + " after renaming the image to " + output +
                   ": the verified image is there, but its name may not survive a crash (the migration is "
                   "reported failed; sync the directory or migrate again)");
  }
}

void TempImage::Discard() {
  if (base_ && !borrowed_) munmap(base_, padded_);
  base_ = nullptr;
  if (!committed_ && !path_.empty() && fd_) {
    unlink(path_.c_str());
    if (hook_) hook_("");
  }
  fd_.reset();
}

Writeback::Writeback(int fd, const std::string& path, uint64_t window, std::chrono::milliseconds stall_timeout,
                     SyncFn sync)
    : fd_(fd),
      path_(path),
      window_(window),
      stall_timeout_(stall_timeout),
      sync_(sync ? std::move(sync) : SyncFn([](int f, unsigned flags) { return sync_file_range(f, 0, 0, flags); })),
      thread_([this] { Run(); }) {}

void Writeback::Wrote(uint64_t bytes) {
  std::unique_lock<std::mutex> l(mu_);
  written_ += bytes;
  if (!window_) return;
  if (written_ - started_ >= window_) work_.notify_one();
  auto caught_up = [&] { return error_ || stopped_ || written_ - durable_ <= 2 * window_; };
  if (stall_timeout_.count() <= 0) done_.wait(l, caught_up);
  while (!caught_up()) {
    // The bound is on the disk's progress, not on the whole wait: any round
    // that reaches the disk starts it again.
    const uint64_t durable = durable_;
    if (!done_.wait_for(l, stall_timeout_, [&] { return caught_up() || durable_ != durable; })) {
      throw Error(ErrorKind::kLocalIo, ETIMEDOUT,
                  "writing the image to " + path_ + ": the disk finished no writeback for " +
                      std::to_string(stall_timeout_.count()) +
                      " ms (the destination's I/O timeout, --io-timeout); it hangs or is far slower than the network");
    }
  }
  if (error_) throw *error_;
}

void Writeback::Finish() {
  Stop();
  std::lock_guard<std::mutex> l(mu_);
  if (error_) throw *error_;
}

void Writeback::Run() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    work_.wait_for(l, std::chrono::milliseconds(250),
                   [&] { return stopped_ || (window_ && written_ - started_ >= window_); });
    if (stopped_) return;
    if (written_ == started_) continue;
    // Pages written before this point are dirty now, or already under
    // writeback from an earlier round (a page rewritten meanwhile may
    // stay dirty for the next round: "durable" is a pacing estimate; the
    // commit's fsync is what makes the file durable).
    const uint64_t target = written_;
    started_ = target;
    l.unlock();
    int rc = sync_(fd_, SYNC_FILE_RANGE_WRITE);
    if (rc == 0 && window_) rc = sync_(fd_, SYNC_FILE_RANGE_WAIT_BEFORE);
    const int err = errno;
    l.lock();
    if (rc != 0) {
      error_ = Error(ErrorKind::kLocalIo, err, "writing the image to " + path_ + ": " + std::strerror(err));
      done_.notify_all();
      return;
    }
    durable_ = target;
    done_.notify_all();
  }
}

void Writeback::Stop() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stopped_ = true;
  }
  work_.notify_all();
  done_.notify_all();
  if (thread_.joinable()) thread_.join();
}

// Writes `n` pages from `buf` to their offsets, one pwrite per contiguous run.
void WritePages(const ImageTarget& t, const uint8_t* buf, const uint64_t* offsets, uint32_t n, uint32_t ps) {
  for (uint32_t i = 0; i < n;) {
    uint32_t j = i + 1;
    while (j < n && offsets[j] == offsets[j - 1] + ps) ++j;
    const uint8_t* p = buf + size_t{i} * ps;
    size_t len = size_t{j - i} * ps;
    off_t off = static_cast<off_t>(offsets[i]);
    while (len > 0) {
      const ssize_t w = pwrite(t.fd, p, len, off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) ThrowErrno(ErrorKind::kLocalIo, w < 0 ? errno : EIO, "writing the image to " + t.path);
      p += w, len -= static_cast<size_t>(w), off += w;
    }
    i = j;
  }
  if (t.writeback) t.writeback->Wrote(uint64_t{n} * ps);
}

void CheckOutputPath(const std::string& output) {
  if (output.empty()) return;
  struct stat st{};
  if (stat(output.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
    throw Error(ErrorKind::kLocalIo, EISDIR, "output " + output + " is a directory; give a file name");
  }
  const std::string dir = DirectoryOf(output);
  if (stat(dir.c_str(), &st) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "output directory " + dir);
  if (!S_ISDIR(st.st_mode)) throw Error(ErrorKind::kLocalIo, ENOTDIR, "output directory " + dir + " is not a directory");
  OpenDirectoryForSync(dir);  // the commit needs it: find out before anyone connects
  // The very name the temporary file will have: catches a read-only or
  // full directory and a name too long before anyone connects.
  std::string probe = TempTemplateFor(output);
  const int fd = mkostemp(probe.data(), O_CLOEXEC);
  if (fd < 0) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot create the temporary file beside " + output);
  close(fd);
  unlink(probe.c_str());
}

}  // namespace ktm

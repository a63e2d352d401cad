#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <climits>
#include <condition_variable>
#include <cstring>
#include <list>
#include <mutex>
#include <optional>
#include <thread>

#include "base/error.h"
#include "base/fd_wait.h"
#include "base/path.h"
#include "base/unique_fd.h"
#include "transport/admission.h"
#include "transport/busy_responder.h"
#include "transport/first_failure.h"
#include "transport/migration.h"
#include "transport/phase_clock.h"
#include "util/image_digest.h"

namespace ktm {
namespace {

using Clock = std::chrono::steady_clock;

// The iteration barrier: every channel's receiver waits here after SYNC(i)
// until all channels have sent SYNC(i). Abortable, so one failing channel
// releases the others.
class IterationBarrier {
 public:
  explicit IterationBarrier(size_t n) : n_(n) {}

  // Returns false if the migration was aborted. Throws if the channels
  // disagree about whether this iteration is the final one.
  bool ArriveAndWait(bool final) {
    std::unique_lock<std::mutex> l(mu_);
    if (aborted_) return false;
    const uint64_t gen = generation_;
    if (arrived_ == 0) final_ = final;
    if (final != final_) throw Error(ErrorKind::kIntegrity, EBADMSG, "invalid packet: channels disagree about the final iteration");
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return true;
    }
    cv_.wait(l, [&] { return generation_ != gen || aborted_; });
    return !aborted_ || generation_ != gen;
  }

  void Abort() {
    std::lock_guard<std::mutex> l(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const size_t n_;
  size_t arrived_ = 0;
  uint64_t generation_ = 0;
  bool final_ = false;
  bool aborted_ = false;
};

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

// Refuses an image that cannot be stored before any page is accepted: over
// the size limit, larger than the caller's buffer, or than the free space.
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

// The image being received: a temporary file beside the target, written
// with pwrite (or, with no output file, memory: the caller's buffer or an
// anonymous mapping). Removed on destruction unless committed.
class TempImage {
 public:
  // `memory`: the caller's buffer for an in-memory image (CheckImageFits has
  // made sure it holds `padded` bytes); nullptr to allocate one.
  TempImage(const std::string& output, uint64_t size, uint64_t padded,
            const std::function<void(const std::string&)>& hook, uint8_t* memory = nullptr)
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
    // a shared mapping: a mapping costs a page fault per 4 KiB page on
    // first write and another after each writeback (measured: most of the
    // destination's system time), and msync at the end.
  }
  ~TempImage() { Discard(); }

  uint8_t* data() { return base_; }     // in memory; nullptr for a file
  int fd() const { return fd_.get(); }  // the file; -1 in memory
  const std::string& path() const { return path_; }

  // Makes the file durable under its final name: every step is checked,
  // and the image counts as committed only once the directory entry is
  // synced too (until then a crash may lose the new name). Throws
  // Error(kLocalIo) otherwise. Before the rename, the destructor then
  // removes the temporary file, so a failed commit leaves nothing that
  // looks committed; after it (the directory fsync failed) the output name
  // already holds the verified image and is kept, the failure reported.
  void Commit(const std::string& output) {
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

 private:
  void Discard() {
    if (base_ && !borrowed_) munmap(base_, padded_);
    base_ = nullptr;
    if (!committed_ && !path_.empty() && fd_) {
      unlink(path_.c_str());
      if (hook_) hook_("");
    }
    fd_.reset();
  }
  std::string path_;
  UniqueFd fd_;
  UniqueFd dir_fd_;  // the output's directory, synced by Commit()
  uint8_t* base_ = nullptr;
  uint64_t size_, padded_;  // padded_: the in-memory mapping's length
  bool committed_ = false;
  bool borrowed_ = false;  // the caller's memory: never unmapped here
  std::function<void(const std::string&)> hook_;
};

struct Receiver {
  int id = 0;
  Channel* ch = nullptr;
  std::string peer;
  uint64_t pages = 0, zero_pages = 0, data_bytes = 0;
  uint32_t iterations = 0;
  std::optional<ImageHash> end_digest;
};

// Channel reads of one receiver: every failure names the channel, and a
// peer that disappears is named as such.
class ChannelReader {
 public:
  ChannelReader(Channel& ch, int id, const std::string& peer)
      : ch_(ch), who_("channel " + std::to_string(id) + " (from " + peer + "): ") {}
  const std::string& who() const { return who_; }
  // What the channel was doing, for timeouts ("receiving iteration 2").
  void set_phase(std::string phase) { phase_ = std::move(phase); }

  bool Read(void* buf, size_t len) {
    try {
      return ch_.read_all(buf, len);
    } catch (const Error& e) {
      throw Tagged(e);
    }
  }
  bool ReadV(std::span<const iovec> iov) {
    try {
      return ch_.readv_all(iov);
    } catch (const Error& e) {
      throw Tagged(e);
    }
  }

 private:
  Error Tagged(const Error& e) const {
    if (e.kind() == ErrorKind::kTimeout) return e.WithContext(who_ + phase_ + ": ");
    if (e.kind() == ErrorKind::kPeer) {
      return Error(e.kind(), e.code(),
                   who_ + "the source vanished mid-migration (" + e.what() +
                       "); the image is incomplete and was discarded");
    }
    return e.WithContext(who_);
  }
  Channel& ch_;
  std::string who_;
  std::string phase_ = "receiving iteration 0";
};

// Writeback of the file image while it is received, on its own thread:
// it starts writeback of whatever is dirty (SYNC_FILE_RANGE_WRITE) once a
// window's worth has been written, or every 250 ms, and waits for it to
// reach the disk (SYNC_FILE_RANGE_WAIT_BEFORE) before the next round. A
// receiver that gets two windows ahead of the disk waits in Wrote(): it
// stops reading, and TCP carries the pace back to the source. So what is
// not yet on disk (dirty or under writeback) stays near two windows, and
// the commit's fsync costs about the same at any image size. Without the
// bound a disk slower than the network let gigabytes pile up in the page
// cache, for the final fsync to wait out during the downtime.
class Writeback {
 public:
  // `window` 0: no bound; writeback is only started every 250 ms, never
  // waited for.
  Writeback(int fd, const std::string& path, uint64_t window)
      : fd_(fd), path_(path), window_(window), thread_([this] { Run(); }) {}
  ~Writeback() { Stop(); }

  // After `bytes` more were written to the file: blocks while more than two
  // windows are not yet on disk. Thread safe. Throws the writeback's
  // Error(kLocalIo) once it failed.
  void Wrote(uint64_t bytes) {
    std::unique_lock<std::mutex> l(mu_);
    written_ += bytes;
    if (!window_) return;
    if (written_ - started_ >= window_) work_.notify_one();
    done_.wait(l, [&] { return error_ || stopped_ || written_ - durable_ <= 2 * window_; });
    if (error_) throw *error_;
  }

  // Stops the thread; throws its error if the writeback failed. Must be
  // called before the commit: sync_file_range's wait reports a write error
  // to this file description once, and the commit's fsync would then not
  // see it again.
  void Finish() {
    Stop();
    std::lock_guard<std::mutex> l(mu_);
    if (error_) throw *error_;
  }

 private:
  void Run() {
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
      int rc = sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WRITE);
      if (rc == 0 && window_) rc = sync_file_range(fd_, 0, 0, SYNC_FILE_RANGE_WAIT_BEFORE);
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

  void Stop() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stopped_ = true;
    }
    work_.notify_all();
    done_.notify_all();
    if (thread_.joinable()) thread_.join();
  }

  const int fd_;
  const std::string path_;
  const uint64_t window_;
  std::mutex mu_;
  std::condition_variable work_;  // the thread: a window is full, or stop
  std::condition_variable done_;  // the receivers: a round reached the disk
  // Bytes written by the receivers; of them, the ones whose writeback was
  // started, and those known on disk.
  uint64_t written_ = 0, started_ = 0, durable_ = 0;
  bool stopped_ = false;
  std::optional<Error> error_;
  std::thread thread_;  // last: starts once the members it uses exist
};

// Where received pages go: straight into memory (readv into the image), or
// into the file through a small per-channel buffer (read, hash, pwrite).
// Every page the source sends, data or zero, is written to the target in
// every iteration, and its digest is taken from the bytes written: so a
// verified image is what the target holds, whatever it held before (the
// caller's reused buffer, a page's contents from an earlier iteration).
struct ImageTarget {
  uint8_t* memory = nullptr;
  int fd = -1;
  std::string path;  // for errors
  Writeback* writeback = nullptr;  // the file's; told of every write
};

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

// Reads one channel until its end (EOF after the final SYNC, or END on
// channel 0), applying pages to `target` with iteration barriers and
// keeping each page's digest.
void ReceiveChannel(Receiver& r, const wire::Geometry& g, const ImageTarget& target, PageDigests& digests,
                    IterationBarrier& barrier, Progress* progress) {
  uint8_t* const image = target.memory;
  // File target: pages land here first (256 KiB: a source packet, in L2).
  std::vector<uint8_t> bounce, zeros;
  const uint32_t bounce_pages = std::max<uint32_t>(1, (256u << 10) / g.page_size);
  if (!image) {
    bounce.resize(size_t{bounce_pages} * g.page_size);
    zeros.assign(bounce.size(), 0);
  }
  ChannelReader ch(*r.ch, r.id, r.peer);
  std::vector<uint64_t> offsets(wire::kMaxPagesPerPacket);
  std::vector<iovec> iov;
  iov.reserve(wire::kMaxPagesPerPacket);
  uint64_t expect_packet = 0;
  uint32_t iteration = 0;
  bool final_done = false;
  const std::string& who = ch.who();
  for (;;) {
    uint8_t hdr[wire::kHeaderSize];
    if (!ch.Read(hdr, sizeof(hdr))) {
      if (final_done && r.id != 0) return;
      throw Error(ErrorKind::kPeer, EPIPE, who + "the source closed the stream before the final barrier (source killed?); "
                               "the image is incomplete and was discarded");
    }
    wire::PacketHeader h;
    try {
      h = wire::DecodeHeader(hdr, g);
    } catch (const Error& e) {
      throw e.WithContext(who);
    }
    if (h.packet_num != expect_packet) {
      throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: number " + std::to_string(h.packet_num) + ", expected " +
                               std::to_string(expect_packet));
    }
    ++expect_packet;
    switch (h.type) {
      case wire::kPages:
      case wire::kZero: {
        if (final_done) throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: pages after the final barrier");
        if (h.iteration != iteration) {
          throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: pages of iteration " + std::to_string(h.iteration) +
                                   " while receiving iteration " + std::to_string(iteration));
        }
        if (!ch.Read(offsets.data(), h.page_count * sizeof(uint64_t))) {
          throw Error(ErrorKind::kPeer, EPIPE, who + "stream ended inside a packet");
        }
        try {
          wire::ValidateOffsets(hdr, h, offsets.data(), g);
        } catch (const Error& e) {
          throw e.WithContext(who);
        }
        if (h.type == wire::kZero) {
          if (!image) {
            // Written even into the fresh file: left as the reserved
            // (unwritten) blocks, zero pages scattered among data pages
            // split the file into hundreds of thousands of extents, which
            // made the fsync slower and deleting a 1 GiB image take 7 s
            // here; written, the file stays a handful of extents.
            for (uint32_t i = 0; i < h.page_count; i += bounce_pages) {
              WritePages(target, zeros.data(), &offsets[i], std::min(bounce_pages, h.page_count - i), g.page_size);
            }
          } else {
            // Cleared in every iteration, even the first: the memory may be
            // the caller's, holding older bytes, and the digest below
            // vouches for a zero page only if the image really holds one.
            for (uint32_t i = 0; i < h.page_count; ++i) std::memset(image + offsets[i], 0, g.page_size);
          }
          for (uint32_t i = 0; i < h.page_count; ++i) digests.SetZero(offsets[i] / g.page_size);
          r.zero_pages += h.page_count;
        } else if (!image) {
          for (uint32_t i = 0; i < h.page_count; i += bounce_pages) {
            const uint32_t n = std::min(bounce_pages, h.page_count - i);
            if (!ch.Read(bounce.data(), size_t{n} * g.page_size)) {
              throw Error(ErrorKind::kPeer, EPIPE, who + "stream ended inside a packet");
            }
            for (uint32_t k = 0; k < n; ++k) {
              digests.Update(offsets[i + k] / g.page_size, bounce.data() + size_t{k} * g.page_size);
            }
            WritePages(target, bounce.data(), &offsets[i], n, g.page_size);
          }
          r.data_bytes += uint64_t{h.page_count} * g.page_size;
          if (progress) progress->bytes += uint64_t{h.page_count} * g.page_size;
        } else {
          // Receive straight into the image in memory.
          iov.clear();
          for (uint32_t i = 0; i < h.page_count; ++i) {
            uint8_t* p = image + offsets[i];
            if (!iov.empty() && static_cast<uint8_t*>(iov.back().iov_base) + iov.back().iov_len == p) {
              iov.back().iov_len += g.page_size;
            } else {
              iov.push_back({p, g.page_size});
            }
          }
          if (!ch.ReadV(iov)) throw Error(ErrorKind::kPeer, EPIPE, who + "stream ended inside a packet");
          // Hash what arrived while it is still in cache: the image digest
          // at the end then only hashes the page digests.
          for (uint32_t i = 0; i < h.page_count; ++i) digests.Update(offsets[i] / g.page_size, image + offsets[i]);
          r.data_bytes += uint64_t{h.page_count} * g.page_size;
          if (progress) progress->bytes += uint64_t{h.page_count} * g.page_size;
        }
        r.pages += h.page_count;
        if (progress) progress->pages += h.page_count;
        break;
      }
      case wire::kSync: {
        if (final_done || h.iteration != iteration) {
          throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: duplicate or out-of-order SYNC for iteration " +
                                   std::to_string(h.iteration) + " (expected " + std::to_string(iteration) + ")");
        }
        const bool final = h.flags & wire::kFlagFinal;
        if (!barrier.ArriveAndWait(final)) return;  // another channel failed
        r.iterations = ++iteration;
        ch.set_phase(final ? "waiting for the end of the stream" : "receiving iteration " + std::to_string(iteration));
        if (progress && r.id == 0) progress->iteration = iteration;
        final_done = final;
        break;
      }
      case wire::kEnd: {
        if (r.id != 0 || !final_done) {
          throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: END before the final barrier or on channel " +
                                   std::to_string(r.id));
        }
        ImageHash d;
        if (!ch.Read(d.data(), d.size())) throw Error(ErrorKind::kPeer, EPIPE, who + "stream ended inside END");
        r.end_digest = d;
        return;
      }
    }
  }
}

}  // namespace

namespace {

void SendU32Pair(Channel& ch, uint32_t magic, uint32_t status) {
  uint8_t buf[wire::kAckSize];
  wire::EncodeU32Pair(magic, status, buf);
  ch.write_all(buf, sizeof(buf));
}

// Best effort: the peer may already be gone, and the error that matters is
// the one being reported.
void TrySendU32Pair(Channel& ch, uint32_t magic, uint32_t status) {
  try {
    SendU32Pair(ch, magic, status);
  } catch (const Error&) {
  }
}

// Answers hello `h` (wire::EncodeHelloAnswer). A refusal is best effort,
// like TrySendU32Pair; an acceptance that cannot be sent throws.
void AnswerHello(Channel& ch, const wire::Hello& h, const wire::Offer& offer, uint32_t status) {
  uint8_t ack[wire::kHelloAckSize];
  const size_t n = wire::EncodeHelloAnswer(h, offer, status, ack);
  try {
    ch.write_all(ack, n);
  } catch (const Error&) {
    if (status == wire::kOk) throw;
  }
}

struct AcceptedSession {
  wire::Hello first;
  std::vector<OpenedChannel> by_id;  // indexed by channel id
};

// Phase 1: accept until every channel of one session has introduced itself.
// Connections progress concurrently (handshake and hello each on their own
// thread, each with its own deadline), so strays cannot stall the real
// source. Anything else (failed handshake, bad hello, foreign session,
// duplicate channel id) is a stray: answered if possible, logged, and
// dropped; no page is read from it.
AcceptedSession AcceptSession(Listener& listener, const DestinationOptions& opts, Clock::time_point deadline) {
  auto log = [&](const std::string& s) {
    if (opts.log) opts.log(s);
  };
  AcceptedSession session;
  std::optional<wire::Hello> first;
  size_t accepted = 0;
  AdmissionOptions ao;
  ao.security = opts.security;
  ao.intro_size = wire::kHelloSize;
  ao.intro_name = "channel hello";
  ao.timeout = opts.hello_timeout;
  ao.max_pending = opts.max_pending;
  ao.log = opts.log;
  Admission pending(listener, std::move(ao));
  const wire::Offer offer = wire::LocalOffer(opts.capabilities_withheld, opts.capabilities_required);
  // Validates one finished connection: it joins the session or is answered
  // with a status and dropped.
  auto settle = [&](Admitted& p) {
    if (p.oc.channel) p.oc.channel->set_io_timeout(opts.io_timeout);
    wire::Hello h;
    if (!p.error) {
      try {
        h = wire::DecodeHello(p.intro.data());
      } catch (const Error& e) {
        p.error = e;
      }
    }
    if (p.error) {
      log("rejected connection from " + p.peer + ": " + p.error->what());
      if (p.oc.channel) {
        const uint32_t st = p.error->code() == EPROTO                      ? wire::kRejectedVersion
                            : p.error->kind() == ErrorKind::kIntegrity ? wire::kInvalidHello
                                                                       : wire::kFailed;
        TrySendU32Pair(*p.oc.channel, wire::kAckMagic, st);
      }
      return;
    }
    const wire::Agreement agreed = wire::Negotiate(offer, wire::Side::kDestination, h.offer());
    uint32_t status = agreed.status;
    if (first && status == wire::kOk) {
      if (h.session != first->session) status = wire::kRejectedSession;
      else if (h.channel_count != first->channel_count) status = wire::kRejectedChannel;
      else if (h.image_size != first->image_size || h.page_size != first->page_size || h.digest != first->digest ||
               h.offered != first->offered || h.required != first->required) {
        status = wire::kRejectedGeometry;
      }
      else if (session.by_id[h.channel_id].channel) status = wire::kRejectedChannel;
    }
    if (status != wire::kOk) {
      log("rejected channel " + std::to_string(h.channel_id) + " from " + p.peer + " (session " +
          wire::UuidString(h.session) + "): " + (agreed.status ? agreed.why : wire::StatusText(status)));
      return AnswerHello(*p.oc.channel, h, offer, status);
    }
    if (!first) {
      // The first valid hello fixes the session: refuse an image that
      // cannot be stored before a single page moves.
      try {
        const wire::Geometry g{h.image_size, h.page_size};
        CheckImageFits(opts, h.image_size, g.padded_size());
      } catch (const Error&) {
        AnswerHello(*p.oc.channel, h, offer, wire::kNoSpace);
        throw;
      }
      first = h;
      session.by_id.resize(h.channel_count);
    }
    AnswerHello(*p.oc.channel, h, offer, wire::kOk);
    session.by_id[h.channel_id] = std::move(p.oc);
    ++accepted;
  };

  while (!first || accepted < first->channel_count) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      throw Error(ErrorKind::kTimeout, ETIMEDOUT,
                  first ? "only " + std::to_string(accepted) + " of " + std::to_string(first->channel_count) +
                              " channels arrived before the accept timeout"
                        : "no migration arrived before the accept timeout");
    }
    pending.Poll(left);
    for (auto& p : pending.TakeFinished()) {
      settle(p);
      if (first && accepted == first->channel_count) break;
    }
  }
  for (const std::string& peer : pending.PendingPeers()) {
    log("closed connection from " + peer + ": still pending authentication when the migration's channels were "
        "complete");
  }
  session.first = *first;
  return session;  // ~Admission cuts the rest short and joins them
}

// Phase 2: one receiver thread per channel until the final barrier (and END
// on channel 0). The first failure aborts every receiver and is thrown.
std::vector<Receiver> ReceiveImage(AcceptedSession& session, const wire::Geometry& g, const ImageTarget& image,
                                   PageDigests& digests, Progress* progress) {
  const size_t n = session.by_id.size();
  std::vector<Receiver> rx(n);
  IterationBarrier barrier(n);
  FirstFailure failure;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    rx[i].id = static_cast<int>(i);
    rx[i].ch = session.by_id[i].channel.get();
    rx[i].peer = session.by_id[i].peer;
    threads.emplace_back([&, i] {
      try {
        ReceiveChannel(rx[i], g, image, digests, barrier, progress);
      } catch (const std::exception& e) {
        failure.Record(e, [&] {
          // Tell the source why before anything else: once the other
          // receivers are woken below their TLS sessions are dead and could
          // carry nothing. On every channel: the failing one may not carry
          // it (a TLS session is dead after a forged record); the source
          // reads whichever still can, so both ends exit with the same code.
          const auto* ke = dynamic_cast<const Error*>(&e);
          const ErrorKind kind = ke ? ke->kind() : ErrorKind::kInternal;
          const uint32_t st = kind == ErrorKind::kIntegrity ? wire::kRefusedData
                              : kind == ErrorKind::kLocalIo ? wire::kCommitFailed
                              : kind == ErrorKind::kTimeout ? wire::kTimedOut
                                                            : wire::kFailed;
          if (st != wire::kFailed) {
            for (auto& c : session.by_id) TrySendU32Pair(*c.channel, wire::kDoneMagic, st);
          }
          barrier.Abort();
          // Wake the other receivers out of their reads.
          for (auto& c : session.by_id) c.channel->shutdown(ShutdownHow::kRead);  // never throws
        });
      }
    });
  }
  for (auto& t : threads) t.join();
  failure.ThrowIfFailed();  // the caller's TempImage removes the file
  if (!rx[0].end_digest) {
    throw Error(ErrorKind::kPeer, EPIPE, "the source never sent END; the image is incomplete and was discarded");
  }
  return rx;
}

// Phase 3: the end-to-end check before the image may appear under its final
// name, the commit, and DONE to the source.
std::string VerifyAndCommit(AcceptedSession& session, TempImage& image, const PageDigests& digests,
                            const ImageHash& expected, const std::string& output, PhaseClock& phases) {
  Channel& ch0 = *session.by_id[0].channel;
  phases.Begin("verify");
  const ImageHash got = digests.Final();
  const std::string digest = DigestHex(digests.algorithm(), got);
  if (got != expected) {
    TrySendU32Pair(ch0, wire::kDoneMagic, wire::kDigestMismatch);
    throw Error(ErrorKind::kIntegrity, EBADMSG,
                "image digest mismatch: received " + digest + ", source had " +
                    DigestHex(digests.algorithm(), expected) + "; the image was discarded");
  }
  phases.Begin("commit");
  try {
    image.Commit(output);
  } catch (const Error&) {
    TrySendU32Pair(ch0, wire::kDoneMagic, wire::kCommitFailed);
    throw;
  }
  SendU32Pair(ch0, wire::kDoneMagic, wire::kOk);
  phases.End();
  // The source answers with close_notify; wait for it so its last read
  // never races our close.
  uint8_t tail;
  try {
    ch0.read_all(&tail, 1);
  } catch (const Error&) {
  }
  return digest;
}

// Phase 4: the report.
MigrationReport BuildReport(const AcceptedSession& session, const std::vector<Receiver>& rx) {
  MigrationReport rep;
  rep.session = wire::UuidString(session.first.session);
  rep.image_size = session.first.image_size;
  rep.page_size = session.first.page_size;
  for (size_t i = 0; i < rx.size(); ++i) {
    rep.pages += rx[i].pages;
    rep.zero_pages += rx[i].zero_pages;
    rep.data_bytes += rx[i].data_bytes;
    rep.iterations = std::max(rep.iterations, rx[i].iterations);
    ChannelReport cr;
    cr.path = session.by_id[i].path;
    cr.ktls = session.by_id[i].ktls;
    cr.zero_copy = session.by_id[i].zero_copy;
    cr.stats = session.by_id[i].channel->stats();
    rep.channels.push_back(cr);
  }
  return rep;
}

}  // namespace

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

static BusyResponder::Options BusyOptions(const DestinationOptions& opts) {
  BusyResponder::Options b;
  b.security = opts.security;
  b.hello_timeout = opts.hello_timeout;
  b.max_pending = opts.max_pending;
  b.log = opts.log;
  return b;
}

MigrationReport RunDestination(Listener& listener, const DestinationOptions& opts) {
  CheckOutputPath(opts.output);
  const auto t0 = Clock::now();
  PhaseClock phases;
  phases.Begin("setup");
  AcceptedSession session = AcceptSession(listener, opts, t0 + opts.accept_timeout);
  // From now until we return, later sources hear "busy" at once.
  // Optional: a destination short of descriptors or threads still runs the
  // migration it has accepted; later sources then wait in the backlog.
  std::optional<BusyResponder> busy;
  try {
    busy.emplace(listener, BusyOptions(opts), wire::UuidString(session.first.session));
  } catch (const std::exception& e) {
    if (opts.log) opts.log(std::string("later sources will not be told that a migration is running: ") + e.what());
  }
  const wire::Geometry g{session.first.image_size, session.first.page_size};
  DigestAlgorithm alg = DigestAlgorithm::kXxh3;
  DigestAlgorithmFromWire(session.first.digest, &alg);  // validated by DecodeHello
  if (opts.progress) opts.progress->total_bytes = g.image_size;
  TempImage image(opts.output, g.image_size, g.padded_size(), opts.temp_file_hook, opts.memory);
  PageDigests digests(alg, g.image_size, g.page_size);
  phases.Begin("transfer");
  std::vector<Receiver> rx;
  {
    std::optional<Writeback> writeback;
    if (image.fd() >= 0) writeback.emplace(image.fd(), image.path(), opts.writeback_window);
    rx = ReceiveImage(session, g,
                      ImageTarget{image.data(), image.fd(), image.path(), writeback ? &*writeback : nullptr}, digests,
                      opts.progress);
    if (writeback) {
      try {
        writeback->Finish();
      } catch (const Error&) {
        // The source waits for DONE on channel 0: say why there is none.
        TrySendU32Pair(*session.by_id[0].channel, wire::kDoneMagic, wire::kCommitFailed);
        throw;
      }
    }
  }
  const std::string digest = VerifyAndCommit(session, image, digests, *rx[0].end_digest, opts.output, phases);
  MigrationReport rep = BuildReport(session, rx);
  rep.digest = digest;
  rep.digest_algorithm = alg;
  rep.phases = phases.Take();
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

}  // namespace ktm

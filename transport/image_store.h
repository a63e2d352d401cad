// Storage of the image a destination receives: the checks before any page
// is accepted, the temporary file (or memory) the pages are written to,
// writeback pacing while they arrive, and the durable commit under the
// final name. Private to transport/.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "base/error.h"
#include "base/unique_fd.h"
#include "transport/migration.h"

namespace ktm {

// Refuses an image that cannot be stored before any page is accepted: over
// the size limit, larger than the caller's buffer, or than the free space.
// Throws Error(kLocalIo) naming the limit.
void CheckImageFits(const DestinationOptions& opts, uint64_t size, uint64_t padded);

// The image being received: a temporary file beside the target, written
// with pwrite (or, with no output file, memory: the caller's buffer or an
// anonymous mapping). Removed on destruction unless committed.
class TempImage {
 public:
  // `memory`: the caller's buffer for an in-memory image (CheckImageFits has
  // made sure it holds `padded` bytes); nullptr to allocate one. `hook` is
  // told the temporary file's path once created, and "" once it is gone or
  // committed. Throws Error(kLocalIo).
  TempImage(const std::string& output, uint64_t size, uint64_t padded,
            const std::function<void(const std::string&)>& hook, uint8_t* memory = nullptr);
  ~TempImage() { Discard(); }
  TempImage(const TempImage&) = delete;
  TempImage& operator=(const TempImage&) = delete;

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
  void Commit(const std::string& output);

 private:
  void Discard();
  std::string path_;
  UniqueFd fd_;
  UniqueFd dir_fd_;  // the output's directory, synced by Commit()
  uint8_t* base_ = nullptr;
  uint64_t size_, padded_;  // padded_: the in-memory mapping's length
  bool committed_ = false;
  bool borrowed_ = false;  // the caller's memory: never unmapped here
  std::function<void(const std::string&)> hook_;
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
  // How a round is written out: sync_file_range(2) by default; a test's
  // stand-in may stall.
  using SyncFn = std::function<int(int fd, unsigned flags)>;

  // `window` 0: no bound; writeback is only started every 250 ms, never
  // waited for. `stall_timeout`: how long Wrote() waits without the disk
  // finishing any round before it gives up (0 or negative: forever, as for
  // the channels' I/O timeout).
  Writeback(int fd, const std::string& path, uint64_t window,
            std::chrono::milliseconds stall_timeout = std::chrono::milliseconds(-1), SyncFn sync = nullptr);
  ~Writeback() { Stop(); }
  Writeback(const Writeback&) = delete;
  Writeback& operator=(const Writeback&) = delete;

  // After `bytes` more were written to the file: blocks while more than two
  // windows are not yet on disk. Thread safe. Throws the writeback's
  // Error(kLocalIo) once it failed, and Error(kLocalIo, ETIMEDOUT) when no
  // round reached the disk for `stall_timeout` (a disk that hangs, or is
  // far too slow for the window, must not hold the migration forever).
  void Wrote(uint64_t bytes);

  // Stops the thread; throws its error if the writeback failed. Must be
  // called before the commit: sync_file_range's wait reports a write error
  // to this file description once, and the commit's fsync would then not
  // see it again.
  void Finish();

 private:
  void Run();
  void Stop();

  const int fd_;
  const std::string path_;
  const uint64_t window_;
  const std::chrono::milliseconds stall_timeout_;
  const SyncFn sync_;
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

// Writes `n` pages from `buf` to their offsets in the file target, one
// pwrite per contiguous run. Throws Error(kLocalIo).
void WritePages(const ImageTarget& t, const uint8_t* buf, const uint64_t* offsets, uint32_t n, uint32_t ps);

}  // namespace ktm

// Where the source's pages come from.
//
// PageSource is the library API a migration tool implements: it exposes the
// image memory and, between iterations, the pages that changed. The
// transport reads pages straight from data() (no copy) and may keep them
// pinned for zero copy until the channel releases them; pages that change
// meanwhile are simply reported dirty again and re-sent in a later iteration.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/unique_fd.h"

namespace ktm {

class PageSource {
 public:
  virtual ~PageSource() = default;
  virtual const uint8_t* data() const = 0;  // page aligned; size() rounded up to pages is readable
  virtual uint64_t size() const = 0;        // image bytes
  virtual uint32_t page_size() const = 0;
  uint64_t page_count() const { return (size() + page_size() - 1) / page_size(); }

  // Appends the indices (ascending) of the pages changed since the previous
  // call; the first call reports every page. Called between iterations.
  virtual void CollectDirty(std::vector<uint64_t>& pages) = 0;

  // Called before the final pass: after it returns no page may change.
  virtual void Freeze() {}

  // Whether pages may change while the migration runs (precopy iterates
  // only then; a static image goes in one pass).
  virtual bool live() const { return false; }

  // Called after the final pass, before the image's digest is sent: throws
  // Error if the source can no longer vouch for the image it sent (e.g. the
  // file it was read from changed size meanwhile).
  virtual void Validate() const {}
};

// An immutable image: a file mapped read-only, or anonymous memory filled by
// the caller. Reports every page once.
class MappedImage : public PageSource {
 public:
  // Reads a regular file into anonymous memory (a snapshot: the file may
  // change or shrink afterwards without any fault on our side). Throws
  // Error(kLocalIo) naming the file when it is missing, not a regular file,
  // empty, or changes while it is read (size, mtime or ctime differ after
  // the read from before it: the copy would be no one version of the file).
  static std::unique_ptr<MappedImage> FromFile(const std::string& path, uint32_t page_size = 4096);
  // Anonymous memory of `size` bytes (rounded up to pages), zero-filled.
  static std::unique_ptr<MappedImage> Anonymous(uint64_t size, uint32_t page_size = 4096);
  ~MappedImage() override;

  const uint8_t* data() const override { return base_; }
  uint8_t* mutable_data() { return base_; }
  uint64_t size() const override { return size_; }
  uint32_t page_size() const override { return page_size_; }
  void CollectDirty(std::vector<uint64_t>& pages) override;
  // For a snapshot of a file: throws Error(kLocalIo) naming the file when it
  // no longer has the size, mtime and ctime it had before it was read (any
  // write since, even in place at the same size).
  void Validate() const override;

  // Fills like a guest's memory: `zero_percent` of pages all-zero, the rest
  // pseudo-random (deterministic in `seed`).
  void FillMixed(unsigned zero_percent, uint64_t seed);

 private:
  MappedImage() = default;
  uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint64_t map_len_ = 0;
  uint32_t page_size_ = 4096;
  bool reported_ = false;
  // Set for FromFile: the file, kept open, and what it looked like when read.
  std::string path_;
  UniqueFd file_;
  struct stat file_stat_{};
};

// A live image: a writer thread keeps modifying random pages at a chosen
// rate and marks them dirty *after* writing (a page written after its bit
// was collected is marked again, so no update is lost). Freeze() stops the
// writer.
class LiveImage : public PageSource {
 public:
  // `dirty_bytes_per_sec`: how fast the writer dirties memory.
  LiveImage(std::unique_ptr<MappedImage> image, uint64_t dirty_bytes_per_sec, uint64_t seed = 1);
  ~LiveImage() override;

  const uint8_t* data() const override { return image_->data(); }
  uint64_t size() const override { return image_->size(); }
  uint32_t page_size() const override { return image_->page_size(); }
  void CollectDirty(std::vector<uint64_t>& pages) override;
  void Freeze() override;
  bool live() const override { return true; }
  void Validate() const override { image_->Validate(); }
  uint64_t pages_written() const { return pages_written_.load(); }

 private:
  void WriterLoop(uint64_t seed);
  std::unique_ptr<MappedImage> image_;
  uint64_t rate_;
  std::vector<std::atomic<uint64_t>> dirty_;  // one bit per page
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> pages_written_{0};
  bool first_ = true;
  std::thread writer_;
};

// True if the page is all zero bytes.
bool IsZeroPage(const uint8_t* p, size_t len);

}  // namespace ktm

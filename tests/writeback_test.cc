// Writeback pacing (transport/image_store.h): a receiver waiting for the
// disk gives up with a clear error once no writeback round has finished for
// the stall timeout, instead of holding the migration forever.
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>

#include <gtest/gtest.h>

#include "base/error.h"
#include "base/unique_fd.h"
#include "transport/image_store.h"

namespace ktm {
namespace {

using std::chrono::milliseconds;

// A temporary file for the writeback to point at, removed at the end.
struct TempFile {
  TempFile() {
    std::string tmpl = ::testing::TempDir() + "writeback_test.XXXXXX";
    fd.reset(mkostemp(tmpl.data(), O_CLOEXEC));
    path = tmpl;
  }
  ~TempFile() { unlink(path.c_str()); }
  UniqueFd fd;
  std::string path;
};

// A disk whose writeback never finishes until released: the stand-in for
// sync_file_range blocks in its wait (SYNC_FILE_RANGE_WAIT_BEFORE).
class StuckDisk {
 public:
  Writeback::SyncFn Fn() {
    return [this](int, unsigned flags) {
      if (!(flags & SYNC_FILE_RANGE_WAIT_BEFORE)) return 0;
      std::unique_lock<std::mutex> l(mu_);
      cv_.wait(l, [&] { return released_; });
      return 0;
    };
  }
  void Release() {
    std::lock_guard<std::mutex> l(mu_);
    released_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool released_ = false;
};

TEST(WritebackTest, StalledDiskEndsTheWaitWithLocalIoError) {
  TempFile f;
  ASSERT_TRUE(f.fd);
  StuckDisk disk;
  constexpr uint64_t kWindow = 4096;
  {
    Writeback wb(f.fd.get(), f.path, kWindow, milliseconds(200), disk.Fn());
    try {
      wb.Wrote(3 * kWindow);  // more than two windows ahead of the disk
      ADD_FAILURE() << "Wrote() returned although the disk finished nothing";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kLocalIo);
      EXPECT_EQ(e.code(), ETIMEDOUT);
      EXPECT_NE(std::string(e.what()).find(f.path), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("finished no writeback for 200 ms"), std::string::npos) << e.what();
    }
    disk.Release();  // ~Writeback joins its thread, still inside the stuck round
  }
}

TEST(WritebackTest, DiskThatKeepsUpNeverTimesOut) {
  TempFile f;
  ASSERT_TRUE(f.fd);
  constexpr uint64_t kWindow = 4096;
  Writeback wb(f.fd.get(), f.path, kWindow, milliseconds(10000));
  for (int i = 0; i < 8; ++i) {
    ASSERT_EQ(pwrite(f.fd.get(), std::string(kWindow, 'x').data(), kWindow, i * kWindow), ssize_t(kWindow));
    EXPECT_NO_THROW(wb.Wrote(kWindow));
  }
  EXPECT_NO_THROW(wb.Finish());
}

}  // namespace
}  // namespace ktm

// The benchmark's QEMU-style anchor: a Channel decorator that writes every
// 4 KiB page as its own write on the channel below, so a userspace TLS
// channel below emits one record (and one send) per page, the way QEMU's
// TLS migration channel does today. Benchmark-only; never on the production
// path. Blocking channels only.
#pragma once

#include <algorithm>
#include <cerrno>
#include <memory>

#include "base/error.h"

#include "channel/channel.h"

namespace ktm::cli {

class PerPageChannel final : public Channel {
 public:
  static constexpr size_t kPage = 4096;
  explicit PerPageChannel(std::unique_ptr<Channel> inner) : inner_(std::move(inner)) {}

  unsigned features() const override { return inner_->features() & ~unsigned{kFeatureZeroCopyWrite}; }
  std::string describe() const override {
    return inner_->describe() + "; QEMU-style anchor: one record per 4 KiB page";
  }
  ChannelStats stats() const override { return inner_->stats(); }
  WriteResult writev(std::span<const iovec> iov, unsigned /*flags*/) override {
    size_t done = 0;
    for (const auto& v : iov) {
      const auto* p = static_cast<const uint8_t*>(v.iov_base);
      for (size_t off = 0; off < v.iov_len;) {
        const size_t n = std::min(kPage, v.iov_len - off);
        inner_->write_all(p + off, n, 0);
        off += n;
        done += n;
      }
    }
    return WriteResult{done, false, {}};
  }
  ReadResult readv(std::span<const iovec> iov) override { return inner_->readv(iov); }
  FlushResult flush() override { return inner_->flush(); }
  bool wait_readable(std::chrono::milliseconds timeout) override { return inner_->wait_readable(timeout); }
  void shutdown(ShutdownHow how) override { inner_->shutdown(how); }
  void close() noexcept override { inner_->close(); }
  void set_blocking(bool blocking) override {
    if (!blocking) throw Error(ErrorKind::kUsage, EINVAL, "the QEMU-style anchor runs blocking only");
  }
  bool blocking() const override { return true; }
  void set_io_timeouts(std::chrono::milliseconds read, std::chrono::milliseconds write) override {
    Channel::set_io_timeouts(read, write);
    inner_->set_io_timeouts(read, write);
  }

 protected:
  // Blocking below: the *_all helpers never see would_block from here.
  void wait_io(bool for_write) override {
    if (!for_write) inner_->wait_readable(std::chrono::milliseconds(-1));
  }

 private:
  std::unique_ptr<Channel> inner_;
};

}  // namespace ktm::cli

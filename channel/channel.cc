#include "channel/channel.h"

#include <algorithm>
#include <vector>

#include "base/error.h"

namespace ktm {
namespace {

// A mutable copy of the caller's iovec array, on the stack for the sizes the
// transport uses (header + up to 64 page runs), so the *_all helpers do not
// allocate per call.
class IovCopy {
 public:
  explicit IovCopy(std::span<const iovec> iov) : n_(iov.size()) {
    if (n_ > kInline) heap_.assign(iov.begin(), iov.end());
    else std::copy(iov.begin(), iov.end(), inline_);
  }
  iovec* data() { return n_ > kInline ? heap_.data() : inline_; }
  size_t size() const { return n_; }

 private:
  static constexpr size_t kInline = 80;
  size_t n_;
  iovec inline_[kInline];
  std::vector<iovec> heap_;
};

// Advances a (copied) iovec array past `n` consumed bytes.
void Advance(IovCopy& c, size_t& idx, size_t n) {
  iovec* v = c.data();
  while (n > 0 && idx < c.size()) {
    size_t take = std::min(n, v[idx].iov_len);
    v[idx].iov_base = static_cast<char*>(v[idx].iov_base) + take;
    v[idx].iov_len -= take;
    n -= take;
    if (v[idx].iov_len == 0) ++idx;
  }
  while (idx < c.size() && v[idx].iov_len == 0) ++idx;
}

size_t Total(std::span<const iovec> iov) {
  size_t t = 0;
  for (const auto& v : iov) t += v.iov_len;
  return t;
}

}  // namespace

ZeroCopyIds Channel::writev_all(std::span<const iovec> iov, unsigned flags) {
  IovCopy rest(iov);
  size_t idx = 0;
  Advance(rest, idx, 0);
  ZeroCopyIds all;
  bool have = false;
  while (idx < rest.size()) {
    WriteResult r = writev(std::span<const iovec>(rest.data() + idx, rest.size() - idx), flags);
    if (r.would_block) {
      wait_io(/*for_write=*/true);
      continue;
    }
    if (!r.zc.empty()) {
      if (!have) all.first = r.zc.first;
      all.end = r.zc.end;
      have = true;
    }
    Advance(rest, idx, r.bytes);
  }
  return all;
}

ZeroCopyIds Channel::write_all(const void* buf, size_t len, unsigned flags) {
  iovec v{const_cast<void*>(buf), len};
  return writev_all(std::span<const iovec>(&v, 1), flags);
}

bool Channel::readv_all(std::span<const iovec> iov) {
  const size_t want = Total(iov);
  IovCopy rest(iov);
  size_t idx = 0;
  Advance(rest, idx, 0);
  size_t got = 0;
  while (idx < rest.size()) {
    ReadResult r = readv(std::span<const iovec>(rest.data() + idx, rest.size() - idx));
    if (r.would_block) {
      wait_io(/*for_write=*/false);
      continue;
    }
    if (r.eof()) {
      if (got == 0) return false;
      throw Error(ErrorKind::kPeer, EPIPE, "stream truncated: peer closed after " + std::to_string(got) + " of " +
                  std::to_string(want) + " bytes of a message");
    }
    got += r.bytes;
    Advance(rest, idx, r.bytes);
  }
  return true;
}

bool Channel::read_all(void* buf, size_t len) {
  iovec v{buf, len};
  return readv_all(std::span<const iovec>(&v, 1));
}

}  // namespace ktm

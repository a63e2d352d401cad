#include "util/stream_digest.h"

#include <xxhash.h>

#include <cerrno>
#include <cstdio>

#include "base/error.h"

namespace ktm {

struct StreamDigest::State {
  XXH3_state_t* s = nullptr;
  ~State() { XXH3_freeState(s); }
};

StreamDigest::StreamDigest() : st_(std::make_unique<State>()) {
  st_->s = XXH3_createState();
  if (!st_->s) throw Error(ErrorKind::kInternal, ENOMEM, "XXH3_createState");
  XXH3_128bits_reset(st_->s);
}

StreamDigest::~StreamDigest() = default;

void StreamDigest::Update(const void* data, size_t len) {
  XXH3_128bits_update(st_->s, data, len);
  bytes_ += len;
}

std::string StreamDigest::Hex() const {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st_->s));
  return Format(c.digest);
}

std::string StreamDigest::Format(const unsigned char (&canonical)[16]) {
  std::string out = "xxh3:";
  char b[3];
  for (unsigned char x : canonical) {
    std::snprintf(b, sizeof(b), "%02x", x);
    out += b;
  }
  return out;
}

}  // namespace ktm

#include "util/stream_digest.h"

#include <xxhash.h>

#include <cerrno>
#include <cstring>

#include "base/error.h"
#include "util/image_digest.h"

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
}

std::string StreamDigest::Hex() const {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st_->s));
  return Format(c.digest);
}

std::string StreamDigest::Format(const unsigned char (&canonical)[16]) {
  ImageHash h{};  // the image digest's layout: XXH3-128 in the first 16 bytes
  std::memcpy(h.data(), canonical, sizeof(canonical));
  return "xxh3:" + DigestHex(DigestAlgorithm::kXxh3, h);
}

}  // namespace ktm

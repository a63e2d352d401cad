#include "util/image_digest.h"

#include <xxhash.h>

#include <cstring>

#include "base/error.h"
#include "util/sha256.h"

namespace ktm {

std::string_view DigestName(DigestAlgorithm a) { return a == DigestAlgorithm::kSha256 ? "sha256" : "xxh3"; }

DigestAlgorithm ParseDigestAlgorithm(std::string_view s) {
  if (s == "xxh3") return DigestAlgorithm::kXxh3;
  if (s == "sha256") return DigestAlgorithm::kSha256;
  throw Error(ErrorKind::kUsage, EINVAL, "unknown digest '" + std::string(s) + "': use xxh3 or sha256");
}

bool DigestAlgorithmFromWire(uint16_t v, DigestAlgorithm* out) {
  if (v != static_cast<uint16_t>(DigestAlgorithm::kXxh3) && v != static_cast<uint16_t>(DigestAlgorithm::kSha256)) {
    return false;
  }
  *out = static_cast<DigestAlgorithm>(v);
  return true;
}

std::string DigestHex(DigestAlgorithm a, const ImageHash& h) {
  static const char kHex[] = "0123456789abcdef";
  const size_t n = a == DigestAlgorithm::kSha256 ? 32 : 16;
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s += kHex[h[i] >> 4];
    s += kHex[h[i] & 15];
  }
  return s;
}

namespace {

size_t DigestLen(DigestAlgorithm a) { return a == DigestAlgorithm::kSha256 ? 32 : 16; }

void Hash(DigestAlgorithm a, const uint8_t* data, size_t len, uint8_t* out) {
  if (a == DigestAlgorithm::kSha256) {
    const Sha256::Digest d = Sha256::Of(data, len);
    std::memcpy(out, d.data(), d.size());
    return;
  }
  // Canonical (big-endian) form: the same bytes on every machine.
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(data, len));
  std::memcpy(out, c.digest, sizeof(c.digest));
}

}  // namespace

PageDigests::PageDigests(DigestAlgorithm a, uint64_t image_size, uint32_t page_size)
    : alg_(a), size_(image_size), page_size_(page_size), dlen_(DigestLen(a)) {
  const uint64_t pages = (image_size + page_size - 1) / page_size;
  digests_.resize(pages * dlen_);
  const std::vector<uint8_t> zeros(page_size, 0);
  zero_full_.resize(dlen_);
  zero_last_.resize(dlen_);
  HashInto(zeros.data(), page_size, zero_full_.data());
  HashInto(zeros.data(), pages ? PageLen(pages - 1) : 0, zero_last_.data());
}

size_t PageDigests::PageLen(uint64_t index) const {
  const uint64_t off = index * page_size_;
  return static_cast<size_t>(std::min<uint64_t>(page_size_, size_ - off));
}

void PageDigests::HashInto(const uint8_t* data, size_t len, uint8_t* out) const { Hash(alg_, data, len, out); }

void PageDigests::Update(uint64_t index, const uint8_t* page) {
  HashInto(page, PageLen(index), digests_.data() + index * dlen_);
}

void PageDigests::SetZero(uint64_t index) {
  const bool last = (index + 1) * dlen_ == digests_.size();
  std::memcpy(digests_.data() + index * dlen_, last ? zero_last_.data() : zero_full_.data(), dlen_);
}

ImageHash PageDigests::Final() const {
  // Top level: the page digests, the size and the algorithm, hashed with the
  // algorithm itself (a few MiB even for a large image).
  std::vector<uint8_t> tail(9);
  for (int i = 0; i < 8; ++i) tail[i] = static_cast<uint8_t>(size_ >> (8 * i));
  tail[8] = static_cast<uint8_t>(alg_);
  ImageHash out{};
  if (alg_ == DigestAlgorithm::kSha256) {
    Sha256 top;
    top.Update(digests_.data(), digests_.size());
    top.Update(tail.data(), tail.size());
    const Sha256::Digest d = top.Final();
    std::memcpy(out.data(), d.data(), d.size());
    return out;
  }
  XXH3_state_t* st = XXH3_createState();
  if (!st) throw Error(ErrorKind::kInternal, ENOMEM, "XXH3_createState");
  XXH3_128bits_reset(st);
  XXH3_128bits_update(st, digests_.data(), digests_.size());
  XXH3_128bits_update(st, tail.data(), tail.size());
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
  XXH3_freeState(st);
  std::memcpy(out.data(), c.digest, sizeof(c.digest));
  return out;
}

ImageHash ImageDigestOf(DigestAlgorithm a, const uint8_t* data, uint64_t size, uint32_t page_size) {
  PageDigests d(a, size, page_size);
  const uint64_t pages = (size + page_size - 1) / page_size;
  for (uint64_t i = 0; i < pages; ++i) d.Update(i, data + i * page_size);
  return d.Final();
}

}  // namespace ktm

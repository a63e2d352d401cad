// The migration's end-to-end image digest, kept incrementally page by page.
//
// Why per page: a live migration resends only the pages that changed, and
// the digest at switch-over must cover the frozen image. Hashing the whole
// image then would make the downtime grow with the image size (SHA-256 of
// 4 GiB is seconds here). Instead each side hashes every page when it sends
// or receives it (the page is in cache then) and keeps one small digest per
// page; at switch-over only the page digests are hashed (16 or 32 bytes per
// page), which takes milliseconds even for gigabytes.
//
// Correctness on the source: a page hashed while it was being sent and
// written to afterwards is reported dirty again (PageSource contract), so it
// is resent and rehashed in a later iteration; after Freeze() nothing
// changes, so the final digests describe the frozen image.
//
// Image digest = H(page digest 0 || ... || page digest n-1 || u64 LE image
// size || u8 algorithm), H being the algorithm's own hash; the last page is
// hashed over its bytes inside the image only.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace ktm {

enum class DigestAlgorithm : uint8_t {
  kXxh3 = 1,    // XXH3-128 (libxxhash): integrity against bugs and corruption;
                // TLS's AEAD already authenticates every byte on the wire
  kSha256 = 2,  // SHA-256 (OpenSSL): a cryptographic digest of the image
};

// "xxh3" / "sha256".
std::string_view DigestName(DigestAlgorithm a);
// Throws Error(kUsage) naming the accepted values.
DigestAlgorithm ParseDigestAlgorithm(std::string_view s);
// From the wire; false if unknown.
bool DigestAlgorithmFromWire(uint16_t v, DigestAlgorithm* out);

// 32 bytes: SHA-256, or XXH3-128 followed by 16 zero bytes.
using ImageHash = std::array<uint8_t, 32>;
// Hex of the algorithm's significant bytes (32 hex digits for xxh3, 64 for sha256).
std::string DigestHex(DigestAlgorithm a, const ImageHash& h);

// Per-page digests of one image.
//
// Thread safety: Update/SetZero on distinct pages may run concurrently; the
// caller orders updates of the same page (the transport's iteration barrier
// does). Final() must not run concurrently with updates.
class PageDigests {
 public:
  PageDigests(DigestAlgorithm a, uint64_t image_size, uint32_t page_size);

  DigestAlgorithm algorithm() const { return alg_; }
  // Hashes page `index` (its bytes inside the image) from `page`.
  void Update(uint64_t index, const uint8_t* page);
  // Page `index` is all zero (sent as an offset only).
  void SetZero(uint64_t index);
  ImageHash Final() const;

 private:
  void HashInto(const uint8_t* data, size_t len, uint8_t* out) const;
  size_t PageLen(uint64_t index) const;

  DigestAlgorithm alg_;
  uint64_t size_;
  uint32_t page_size_;
  size_t dlen_;                     // bytes per page digest: 16 or 32
  std::vector<uint8_t> digests_;    // page_count * dlen_
  std::vector<uint8_t> zero_full_;  // the digest of a zero page, and of a zero last page
  std::vector<uint8_t> zero_last_;
};

// The same digest computed over a whole image in memory (a file's contents,
// a test's buffer): what PageDigests::Final() gives once every page is in.
ImageHash ImageDigestOf(DigestAlgorithm a, const uint8_t* data, uint64_t size, uint32_t page_size);

}  // namespace ktm

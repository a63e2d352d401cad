// The incremental per-page image digest (util/image_digest.h): what both
// ends build page by page while pages move must equal the digest of the
// finished image, whatever the order of the updates.
#include "util/image_digest.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "base/error.h"

namespace ktm {
namespace {

std::vector<uint8_t> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

class Digest : public ::testing::TestWithParam<DigestAlgorithm> {};

TEST_P(Digest, PageByPageInAnyOrderEqualsTheWholeImage) {
  const DigestAlgorithm alg = GetParam();
  constexpr uint32_t kPage = 4096;
  constexpr size_t kSize = 64 * kPage + 1000;  // a partial last page
  std::vector<uint8_t> img = Random(65 * kPage, 7);
  std::fill(img.begin() + 3 * kPage, img.begin() + 4 * kPage, 0);  // one zero page
  const ImageHash whole = ImageDigestOf(alg, img.data(), kSize, kPage);

  PageDigests d(alg, kSize, kPage);
  std::vector<uint64_t> order(65);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(3));
  // A first pass with stale contents, then the real one (a live migration
  // resends pages): only the last update of each page counts.
  std::vector<uint8_t> stale = Random(kPage, 9);
  for (uint64_t p : order) d.Update(p, stale.data());
  for (uint64_t p : order) {
    if (p == 3) d.SetZero(p);  // the zero page travels as an offset only
    else d.Update(p, img.data() + p * kPage);
  }
  EXPECT_EQ(d.Final(), whole);
  EXPECT_EQ(DigestHex(alg, d.Final()).size(), alg == DigestAlgorithm::kSha256 ? 64u : 32u);
}

TEST_P(Digest, BytesBeyondTheImageDoNotCountAndEveryByteInsideDoes) {
  const DigestAlgorithm alg = GetParam();
  constexpr uint32_t kPage = 4096;
  constexpr size_t kSize = 3 * kPage + 10;
  std::vector<uint8_t> img = Random(4 * kPage, 11);
  const ImageHash base = ImageDigestOf(alg, img.data(), kSize, kPage);
  img[kSize] ^= 1;  // padding of the last page
  EXPECT_EQ(ImageDigestOf(alg, img.data(), kSize, kPage), base);
  for (size_t at : {size_t{0}, size_t{kPage}, kSize - 1}) {
    img[at] ^= 0x80;
    EXPECT_NE(ImageDigestOf(alg, img.data(), kSize, kPage), base) << "byte " << at;
    img[at] ^= 0x80;
  }
  // The size is part of the digest: the same bytes as a shorter image differ.
  EXPECT_NE(ImageDigestOf(alg, img.data(), kSize - 1, kPage), base);
}

TEST_P(Digest, ZeroPagesAsOffsetsEqualZeroPagesAsData) {
  const DigestAlgorithm alg = GetParam();
  constexpr uint32_t kPage = 4096;
  constexpr size_t kSize = 2 * kPage + 100;  // the last page is partial
  std::vector<uint8_t> zeros(3 * kPage, 0);
  PageDigests d(alg, kSize, kPage);
  for (uint64_t p = 0; p < 3; ++p) d.SetZero(p);
  EXPECT_EQ(d.Final(), ImageDigestOf(alg, zeros.data(), kSize, kPage));
}

INSTANTIATE_TEST_SUITE_P(Algorithms, Digest, ::testing::Values(DigestAlgorithm::kXxh3, DigestAlgorithm::kSha256),
                         [](const auto& info) { return std::string(DigestName(info.param)); });

TEST(DigestNames, ParseAndReject) {
  EXPECT_EQ(ParseDigestAlgorithm("xxh3"), DigestAlgorithm::kXxh3);
  EXPECT_EQ(ParseDigestAlgorithm("sha256"), DigestAlgorithm::kSha256);
  try {
    ParseDigestAlgorithm("md5");
    FAIL() << "md5 accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kUsage);
    EXPECT_NE(std::string(e.what()).find("xxh3 or sha256"), std::string::npos) << e.what();
  }
  // The two algorithms never agree on the same image.
  std::vector<uint8_t> img = Random(8192, 1);
  EXPECT_NE(ImageDigestOf(DigestAlgorithm::kXxh3, img.data(), img.size(), 4096),
            ImageDigestOf(DigestAlgorithm::kSha256, img.data(), img.size(), 4096));
}

}  // namespace
}  // namespace ktm

// Incremental SHA-256 (OpenSSL EVP). Used to prove that what arrived is what
// was sent in tests and tools, and as the migration's image digest when the
// caller picks SHA-256 (the default is XXH3-128: util/image_digest.h).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

typedef struct evp_md_ctx_st EVP_MD_CTX;

namespace ktm {

class Sha256 {
 public:
  using Digest = std::array<uint8_t, 32>;
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t len);
  Digest Final();  // the object may not be updated after this

  static Digest Of(const void* data, size_t len);
  static std::string Hex(const Digest& d);

 private:
  EVP_MD_CTX* ctx_;
};

// The former whole-image digest, which the switch-over used to compute on
// both ends before per-page digests (util/image_digest.h) replaced it; kept
// so the bench and tools/digest_speed can show what that cost. SHA-256 over
// the SHA-256 of each 4 MiB chunk (in order) followed by the image length
// (u64 little-endian); the chunks are hashed on `threads` threads (0: one
// per CPU).
inline constexpr size_t kImageDigestChunk = 4u << 20;
Sha256::Digest ImageDigest(const uint8_t* data, size_t len, unsigned threads = 0);

}  // namespace ktm

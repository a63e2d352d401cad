// Incremental SHA-256 (OpenSSL EVP). Used to prove that what arrived is what
// was sent, in tests and in the migration's end-to-end check.
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

// The migration's image digest: SHA-256 over the SHA-256 of each 4 MiB
// chunk (in order) followed by the image length (u64 little-endian). The
// chunks are hashed on `threads` threads (0: one per CPU), which is why it
// is a tree and not one SHA-256 over the whole image: on the 2-CPU build
// machines this halves the time both ends spend on the end-to-end check.
inline constexpr size_t kImageDigestChunk = 4u << 20;
Sha256::Digest ImageDigest(const uint8_t* data, size_t len, unsigned threads = 0);

}  // namespace ktm

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

}  // namespace ktm

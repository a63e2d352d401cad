#include "util/sha256.h"

#include <openssl/evp.h>

#include "channel/error.h"

namespace ktm {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx_);
    throw Error(ENOMEM, "OpenSSL could not set up SHA-256");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_); }

void Sha256::Update(const void* data, size_t len) { EVP_DigestUpdate(ctx_, data, len); }

Sha256::Digest Sha256::Final() {
  Digest d{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx_, d.data(), &n);
  return d;
}

Sha256::Digest Sha256::Of(const void* data, size_t len) {
  Sha256 h;
  h.Update(data, len);
  return h.Final();
}

std::string Sha256::Hex(const Digest& d) {
  static const char* kHex = "0123456789abcdef";
  std::string s;
  for (uint8_t b : d) {
    s += kHex[b >> 4];
    s += kHex[b & 15];
  }
  return s;
}

}  // namespace ktm

#include "util/sha256.h"

#include <openssl/evp.h>

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "base/error.h"

namespace ktm {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  if (!ctx_ || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1) {
    EVP_MD_CTX_free(ctx_);
    throw Error(ErrorKind::kInternal, ENOMEM, "OpenSSL could not set up SHA-256");
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

Sha256::Digest ImageDigest(const uint8_t* data, size_t len, unsigned threads) {
  const size_t chunks = (len + kImageDigestChunk - 1) / kImageDigestChunk;
  std::vector<Sha256::Digest> parts(chunks);
  if (threads == 0) threads = std::max(1u, std::thread::hardware_concurrency());
  threads = static_cast<unsigned>(std::min<size_t>(threads, std::max<size_t>(chunks, 1)));
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t c; (c = next.fetch_add(1)) < chunks;) {
      const size_t off = c * kImageDigestChunk;
      parts[c] = Sha256::Of(data + off, std::min(kImageDigestChunk, len - off));
    }
  };
  std::vector<std::thread> pool;
  for (unsigned t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  Sha256 top;
  for (const auto& d : parts) top.Update(d.data(), d.size());
  uint8_t le[8];
  for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(static_cast<uint64_t>(len) >> (8 * i));
  top.Update(le, sizeof(le));
  return top.Final();
}

}  // namespace ktm

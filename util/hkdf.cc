#include "util/hkdf.h"

#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <strings.h>

#include <cstring>
#include <memory>
#include <string>

#include "base/error.h"

namespace ktm {
namespace {

struct KdfDeleter {
  void operator()(EVP_KDF* k) const { EVP_KDF_free(k); }
  void operator()(EVP_KDF_CTX* c) const { EVP_KDF_CTX_free(c); }
};

// struct { uint16 length; opaque label<7..255>; opaque context<0..255>; }
// Longest: 2 + 1 + 255 + 1 + 255.
struct HkdfLabel {
  uint8_t bytes[514];
  size_t size = 0;
};

HkdfLabel EncodeLabel(size_t out_len, std::string_view label, std::span<const uint8_t> context) {
  static constexpr std::string_view kPrefix = "tls13 ";
  if (out_len > 0xffff || kPrefix.size() + label.size() > 255 || context.size() > 255) {
    throw Error(ErrorKind::kInternal, EINVAL, "HKDF-Expand-Label: label, context or length out of range");
  }
  HkdfLabel l;
  auto put = [&l](const void* p, size_t n) {
    std::memcpy(l.bytes + l.size, p, n);
    l.size += n;
  };
  const uint8_t len[2] = {static_cast<uint8_t>(out_len >> 8), static_cast<uint8_t>(out_len)};
  put(len, 2);
  const uint8_t label_len = static_cast<uint8_t>(kPrefix.size() + label.size());
  put(&label_len, 1);
  put(kPrefix.data(), kPrefix.size());
  put(label.data(), label.size());
  const uint8_t ctx_len = static_cast<uint8_t>(context.size());
  put(&ctx_len, 1);
  if (!context.empty()) put(context.data(), context.size());
  return l;
}

}  // namespace

size_t HashSize(HkdfHash h) { return h == HkdfHash::kSha384 ? 48 : 32; }

void HkdfExpandLabel(HkdfHash h, std::span<const uint8_t> secret, std::string_view label,
                     std::span<const uint8_t> context, std::span<uint8_t> out) {
  HkdfLabel info = EncodeLabel(out.size(), label, context);
  std::unique_ptr<EVP_KDF, KdfDeleter> kdf(EVP_KDF_fetch(nullptr, "HKDF", nullptr));
  if (!kdf) throw Error(ErrorKind::kInternal, ENOSYS, "libcrypto has no HKDF");
  std::unique_ptr<EVP_KDF_CTX, KdfDeleter> ctx(EVP_KDF_CTX_new(kdf.get()));
  if (!ctx) throw Error(ErrorKind::kInternal, ENOMEM, "HKDF context");
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  char digest[8];
  std::strcpy(digest, h == HkdfHash::kSha384 ? "SHA384" : "SHA256");
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
      // Expand-only: the "key" is the pseudorandom key, here the secret.
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret.data()), secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, info.bytes, info.size),
      OSSL_PARAM_construct_end(),
  };
  const int rc = EVP_KDF_derive(ctx.get(), out.data(), out.size(), params);
  explicit_bzero(info.bytes, sizeof(info.bytes));
  if (rc != 1) throw Error(ErrorKind::kInternal, EIO, "HKDF-Expand-Label failed in libcrypto");
}

}  // namespace ktm

// HKDF-Expand-Label (RFC 8446 7.1), the TLS 1.3 key schedule step that
// turns a traffic secret into its key, IV and successor ("traffic upd").
//
// Backend-neutral (OpenSSL's libcrypto KDF, like the EVP digest beside it):
// the kTLS layer re-keys sessions of any TLS backend with it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

namespace ktm {

enum class HkdfHash { kSha256, kSha384 };

// Output size of the hash (32, 48): the size of a traffic secret.
size_t HashSize(HkdfHash h);

// Writes HKDF-Expand(secret, HkdfLabel{out.size(), "tls13 " + label,
// context}) into `out`. Throws Error(kInternal) if libcrypto refuses (it
// does not for valid sizes: out.size() <= 255 * HashSize(h)). Does not keep
// any copy of the secret.
void HkdfExpandLabel(HkdfHash h, std::span<const uint8_t> secret, std::string_view label,
                     std::span<const uint8_t> context, std::span<uint8_t> out);

}  // namespace ktm

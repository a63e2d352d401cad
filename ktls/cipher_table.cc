#include "ktls/cipher_table.h"

#include <linux/tls.h>
#include <string.h>

#include <cstddef>
#include <cstring>

namespace ktm {
namespace {

#define KTM_CIPHER_ROW(tls_cipher, name, type, info, installable, why)                                \
  KernelCipher {                                                                                   \
    tls_cipher, name, type, sizeof(info), offsetof(info, iv), sizeof(info{}.iv), offsetof(info, key), \
        sizeof(info{}.key), offsetof(info, salt), sizeof(info{}.salt), offsetof(info, rec_seq),       \
        sizeof(info{}.rec_seq), installable, why                                                    \
  }

const KernelCipher kTable[] = {
    KTM_CIPHER_ROW(TlsCipher::kAes128Gcm, "AES-128-GCM", TLS_CIPHER_AES_GCM_128, tls12_crypto_info_aes_gcm_128,
                   true, ""),
    KTM_CIPHER_ROW(TlsCipher::kAes256Gcm, "AES-256-GCM", TLS_CIPHER_AES_GCM_256, tls12_crypto_info_aes_gcm_256,
                   true, ""),
    KTM_CIPHER_ROW(TlsCipher::kChacha20Poly1305, "CHACHA20-POLY1305", TLS_CIPHER_CHACHA20_POLY1305,
                   tls12_crypto_info_chacha20_poly1305, true, ""),
    KTM_CIPHER_ROW(TlsCipher::kAes128Ccm, "AES-128-CCM", TLS_CIPHER_AES_CCM_128, tls12_crypto_info_aes_ccm_128,
                   false, "key install for CCM is not implemented (not proven in the kTLS VM)"),
    KTM_CIPHER_ROW(TlsCipher::kOther, "SM4-GCM", TLS_CIPHER_SM4_GCM, tls12_crypto_info_sm4_gcm, false,
                   "no TLS backend here negotiates SM4"),
    KTM_CIPHER_ROW(TlsCipher::kOther, "SM4-CCM", TLS_CIPHER_SM4_CCM, tls12_crypto_info_sm4_ccm, false,
                   "no TLS backend here negotiates SM4"),
};

#undef KTM_CIPHER_ROW

static_assert(sizeof(tls12_crypto_info_aes_gcm_256) <= CryptoInfo::kMaxSize &&
                  sizeof(tls12_crypto_info_chacha20_poly1305) <= CryptoInfo::kMaxSize,
              "CryptoInfo too small for the kernel's crypto_info");

}  // namespace

std::span<const KernelCipher> KernelCipherTable() { return kTable; }

const KernelCipher* FindKernelCipher(TlsCipher c) {
  if (c == TlsCipher::kOther) return nullptr;
  for (const auto& row : kTable) {
    if (row.cipher == c) return &row;
  }
  return nullptr;
}

std::optional<std::string> KtlsCipherUnsupported(TlsVersion v, TlsCipher c) {
  if (v != TlsVersion::kTls12 && v != TlsVersion::kTls13) {
    return std::string("kernel TLS takes TLS 1.2 and 1.3 only, not ") + ToString(v);
  }
  const KernelCipher* row = FindKernelCipher(c);
  if (!row || !row->installable) {
    std::string can;
    for (const auto& r : kTable) {
      if (r.installable) can += (can.empty() ? "" : ", ") + std::string(r.name);
    }
    return std::string("cipher ") + ToString(c) + " cannot be moved into the kernel" +
           (row ? std::string(" (") + row->why_not + ")" : std::string()) + " (" + can + " can)";
  }
  return std::nullopt;
}

size_t FillCryptoInfo(const KernelCipher& row, TlsVersion v, const TrafficKeys& k, uint8_t* out, size_t out_len,
                      std::string& why) {
  const bool tls13 = v == TlsVersion::kTls13;
  // The TLS nonce is salt || iv (12 bytes). TLS 1.3 (and ChaCha20 in 1.2)
  // derive the whole static IV from the handshake; TLS 1.2 AES-GCM/CCM
  // derive only the 4-byte salt, and the explicit 8-byte part on the wire
  // is the record sequence number (what GnuTLS sends).
  const std::span<const uint8_t> key = k.key(), iv = k.iv();
  const bool full_iv = iv.size() == row.salt_size + row.iv_size;
  const bool implicit_salt_only = !tls13 && iv.size() == row.salt_size && row.iv_size == k.rec_seq.size();
  if (out_len < row.info_size || key.size() != row.key_size || row.rec_seq_size != k.rec_seq.size() ||
      !(full_iv || implicit_salt_only)) {
    why = std::string("unexpected key/IV sizes for ") + row.name + " from the TLS library (key " +
          std::to_string(key.size()) + ", iv " + std::to_string(iv.size()) + " bytes)";
    return 0;
  }
  std::memset(out, 0, row.info_size);
  tls_crypto_info hdr{};
  hdr.version = tls13 ? TLS_1_3_VERSION : TLS_1_2_VERSION;
  hdr.cipher_type = row.kernel_type;
  std::memcpy(out, &hdr, sizeof(hdr));
  std::memcpy(out + row.key_offset, key.data(), row.key_size);
  std::memcpy(out + row.salt_offset, iv.data(), row.salt_size);
  std::memcpy(out + row.iv_offset, full_iv ? iv.data() + row.salt_size : k.rec_seq.data(), row.iv_size);
  std::memcpy(out + row.rec_seq_offset, k.rec_seq.data(), row.rec_seq_size);
  return row.info_size;
}

bool FillCryptoInfo(const KernelCipher& row, TlsVersion v, const TrafficKeys& k, CryptoInfo& out,
                    std::string& why) {
  out.set_size(FillCryptoInfo(row, v, k, out.data(), out.capacity(), why));
  return out.size() != 0;
}

void CryptoInfo::Wipe() {
  explicit_bzero(bytes_, sizeof(bytes_));
  size_ = 0;
}

}  // namespace ktm

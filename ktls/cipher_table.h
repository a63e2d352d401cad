// The kernel's TLS ciphers, one row each, the way net/tls keeps its cipher
// descriptors: sizes and offsets of every field of the cipher's
// tls12_crypto_info_* struct, the kernel's constant, and whether this
// library moves sessions with that cipher into the kernel.
//
// Used by key install (FillCryptoInfo), by the probe (ProbeKernelCipher)
// and by `tls-migrate probe`.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>

#include "tls/tls_session.h"
#include "tls/tls_types.h"

namespace ktm {

struct KernelCipher {
  TlsCipher cipher;        // kOther for kernel ciphers no TLS backend here negotiates
  const char* name;
  uint16_t kernel_type;    // TLS_CIPHER_* from <linux/tls.h>
  size_t info_size;        // sizeof(struct tls12_crypto_info_*)
  size_t iv_offset, iv_size;
  size_t key_offset, key_size;
  size_t salt_offset, salt_size;
  size_t rec_seq_offset, rec_seq_size;
  // Whether key install takes sessions with this cipher (proven in the VM).
  bool installable;
  const char* why_not;     // when !installable
};

// Every cipher the kernel's TLS layer knows (as of the uapi headers here).
std::span<const KernelCipher> KernelCipherTable();
// The row for a negotiated cipher, or nullptr.
const KernelCipher* FindKernelCipher(TlsCipher c);

// Why the kernel cannot take a session with this version/cipher, or nullopt
// if it can (TLS 1.2 and 1.3 with an installable cipher).
std::optional<std::string> KtlsCipherUnsupported(TlsVersion v, TlsCipher c);

// One direction's crypto_info as the kernel takes it (TLS_TX / TLS_RX):
// holds the keys, so it wipes itself (explicit_bzero) when it goes out of
// scope, and cannot be copied. The kernel keeps its own copy after
// setsockopt; it clears that with memzero_explicit when the socket goes.
class CryptoInfo {
 public:
  // The largest tls12_crypto_info_* (AES-256-GCM: 56 bytes), with room.
  static constexpr size_t kMaxSize = 128;
  CryptoInfo() = default;
  ~CryptoInfo() { Wipe(); }
  CryptoInfo(const CryptoInfo&) = delete;
  CryptoInfo& operator=(const CryptoInfo&) = delete;

  uint8_t* data() { return bytes_; }
  const uint8_t* data() const { return bytes_; }
  size_t capacity() const { return sizeof(bytes_); }
  // Bytes FillCryptoInfo laid out (0 before, and after Wipe()).
  size_t size() const { return size_; }
  void set_size(size_t n) { size_ = n; }
  void Wipe();

 private:
  alignas(8) uint8_t bytes_[kMaxSize] = {};
  size_t size_ = 0;
};

// Lays out one direction's keys as the kernel's crypto_info for `row`.
// Returns the size written into `out` (at least row.info_size bytes), or 0
// with `why` set when the key material has an unexpected shape.
size_t FillCryptoInfo(const KernelCipher& row, TlsVersion v, const TrafficKeys& k, uint8_t* out,
                      size_t out_len, std::string& why);
// The same into `out` (its size() set); false with `why` set.
bool FillCryptoInfo(const KernelCipher& row, TlsVersion v, const TrafficKeys& k, CryptoInfo& out,
                    std::string& why);

}  // namespace ktm

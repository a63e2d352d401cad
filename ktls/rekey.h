// TLS 1.3 key updates for sessions the kernel holds (kTLS), and the key
// lifetime limits that make them necessary.
//
// After a session has moved into the kernel no TLS library sees its
// records, so nobody re-keys it unless this layer does: a TLS 1.3 peer that
// sends KeyUpdate (RFC 8446 4.6.3) must be followed, and our own send key
// must change before the AEAD's usage limit (RFC 8446 5.5). Linux 6.14+
// takes a second TLS_TX/TLS_RX on a TLS 1.3 socket as the next key; older
// kernels refuse it (EBUSY), and then the limit is enforced by refusing to
// write past it (see KtlsChannel).
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "ktls/cipher_table.h"
#include "tls/tls_session.h"
#include "util/hkdf.h"

namespace ktm {

// What the running kernel's TLS layer can do beyond installing keys once.
// Probed on loopback sockets, once per process (the answers are cached);
// never guessed from the kernel version.
struct KtlsKernelFeatures {
  bool rekey = false;          // takes TLS 1.3 key updates (a second TLS_TX/TLS_RX)
  std::string rekey_detail;    // "yes" / "no: the kernel refused a second TLS_TX (EBUSY)"
  bool rx_no_pad = false;      // has TLS_RX_EXPECT_NO_PAD (decrypt in place)
  std::string rx_no_pad_detail;
};
// Note: the rekey probe's successful second TLS_TX adds 1 to
// /proc/net/tls_stat's TlsTxRekeyOk, once per process.
const KtlsKernelFeatures& ProbeKtlsKernelFeatures();

// RecordLimit(TlsCipher): see tls/tls_types.h (the userspace path needs it too).

// The hash of the TLS 1.3 cipher suite (SHA-384 for AES-256-GCM).
HkdfHash SuiteHash(TlsCipher c);

// One direction's TLS 1.3 key schedule after the handshake: the current
// application traffic secret, from which each key update derives the next
// one and its key and IV. Holds secrets: wiped on destruction, not copyable.
class TrafficKeySchedule {
 public:
  TrafficKeySchedule() = default;
  // `keys` as exported (TLS 1.3, with the secret). valid() is false when
  // the session has no TLS 1.3 secret to follow updates from.
  TrafficKeySchedule(const KernelCipher& row, TlsCipher cipher, const TrafficKeys& keys);
  ~TrafficKeySchedule();
  TrafficKeySchedule(const TrafficKeySchedule&) = delete;
  TrafficKeySchedule& operator=(const TrafficKeySchedule&) = delete;
  TrafficKeySchedule& operator=(TrafficKeySchedule&& other) noexcept;

  bool valid() const { return row_ != nullptr && size_ != 0; }
  // Advances to the next secret ("traffic upd") and lays out its key and
  // IV, sequence number 0, as the kernel's crypto_info for TLS 1.3. False
  // with `why` set if the layout fails.
  bool Next(CryptoInfo& out, std::string& why);

 private:
  const KernelCipher* row_ = nullptr;
  TlsCipher cipher_ = TlsCipher::kOther;
  std::array<uint8_t, TrafficKeys::kMaxSecret> secret_{};
  size_t size_ = 0;
};

// TLS handshake message KeyUpdate (type 24, one byte body), RFC 8446 4.6.3.
inline constexpr unsigned char kHandshakeKeyUpdate = 24;
inline constexpr unsigned char kKeyUpdateNotRequested = 0;
inline constexpr unsigned char kKeyUpdateRequested = 1;

}  // namespace ktm

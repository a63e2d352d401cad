#include "ktls/rekey.h"

#include <string.h>
#include <sys/socket.h>

#include <cstring>
#include <vector>

#include "base/error.h"
#include "ktls/uapi.h"
#include "channel/address.h"

namespace ktm {
namespace {

// A zero-key TLS 1.3 AES-128-GCM crypto_info: enough to ask the kernel
// whether it takes keys, never used to carry data.
std::vector<uint8_t> ZeroKeyInfo() {
  tls12_crypto_info_aes_gcm_128 info{};
  info.info.version = TLS_1_3_VERSION;
  info.info.cipher_type = TLS_CIPHER_AES_GCM_128;
  std::vector<uint8_t> out(sizeof(info));
  std::memcpy(out.data(), &info, sizeof(info));
  return out;
}

std::string Errno(const char* what, int e) { return std::string(what) + " (" + strerrorname_np(e) + ")"; }

KtlsKernelFeatures Probe() {
  KtlsKernelFeatures f;
  f.rekey_detail = f.rx_no_pad_detail = "no: kernel TLS is unavailable";
  try {
    Listener l = Listener::Listen("127.0.0.1:0");
    UniqueFd c = ConnectStream(l.address(), std::chrono::seconds(2));
    UniqueFd s = l.AcceptFd(std::chrono::seconds(2));
    if (setsockopt(c.get(), SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) return f;
    const std::vector<uint8_t> info = ZeroKeyInfo();
    if (setsockopt(c.get(), SOL_TLS, TLS_TX, info.data(), info.size()) != 0) return f;
    if (setsockopt(c.get(), SOL_TLS, TLS_TX, info.data(), info.size()) == 0) {
      f.rekey = true;
      f.rekey_detail = "yes";
    } else {
      f.rekey_detail = "no: " + Errno("the kernel refused a second TLS_TX", errno);
    }
    if (setsockopt(c.get(), SOL_TLS, TLS_RX, info.data(), info.size()) != 0) {
      f.rx_no_pad_detail = "no: " + Errno("TLS_RX refused", errno);
      return f;
    }
    const int one = 1;
    if (setsockopt(c.get(), SOL_TLS, TLS_RX_EXPECT_NO_PAD, &one, sizeof(one)) == 0) {
      f.rx_no_pad = true;
      f.rx_no_pad_detail = "yes";
    } else {
      f.rx_no_pad_detail = "no: " + Errno("TLS_RX_EXPECT_NO_PAD refused", errno);
    }
  } catch (const Error& e) {
    f.rekey_detail = f.rx_no_pad_detail = std::string("unknown: could not probe (") + e.what() + ")";
  }
  return f;
}

}  // namespace

const KtlsKernelFeatures& ProbeKtlsKernelFeatures() {
  static const KtlsKernelFeatures features = Probe();
  return features;
}

HkdfHash SuiteHash(TlsCipher c) { return c == TlsCipher::kAes256Gcm ? HkdfHash::kSha384 : HkdfHash::kSha256; }

TrafficKeySchedule::TrafficKeySchedule(const KernelCipher& row, TlsCipher cipher, const TrafficKeys& keys)
    : row_(&row), cipher_(cipher) {
  const auto s = keys.secret();
  if (s.empty() || s.size() != HashSize(SuiteHash(cipher))) return;  // size_ stays 0: not valid
  std::memcpy(secret_.data(), s.data(), s.size());
  size_ = s.size();
}

TrafficKeySchedule::~TrafficKeySchedule() { explicit_bzero(secret_.data(), secret_.size()); }

TrafficKeySchedule& TrafficKeySchedule::operator=(TrafficKeySchedule&& other) noexcept {
  if (this == &other) return *this;
  row_ = other.row_;
  cipher_ = other.cipher_;
  secret_ = other.secret_;
  size_ = other.size_;
  explicit_bzero(other.secret_.data(), other.secret_.size());
  other.size_ = 0;
  return *this;
}

bool TrafficKeySchedule::Next(CryptoInfo& out, std::string& why) {
  if (!valid()) {
    why = "no TLS 1.3 traffic secret to derive the next key from";
    return false;
  }
  const HkdfHash h = SuiteHash(cipher_);
  std::array<uint8_t, TrafficKeys::kMaxSecret> next{};
  const std::span<const uint8_t> secret(secret_.data(), size_);
  HkdfExpandLabel(h, secret, "traffic upd", {}, std::span<uint8_t>(next.data(), size_));
  std::memcpy(secret_.data(), next.data(), size_);  // `secret` now views the new one
  explicit_bzero(next.data(), next.size());

  TrafficKeys k;  // wipes itself
  std::array<uint8_t, TrafficKeys::kMaxKey> key{};
  std::array<uint8_t, TrafficKeys::kMaxIv> iv{};
  HkdfExpandLabel(h, secret, "key", {}, std::span<uint8_t>(key.data(), row_->key_size));
  HkdfExpandLabel(h, secret, "iv", {}, std::span<uint8_t>(iv.data(), TrafficKeys::kMaxIv));
  k.set_key({key.data(), row_->key_size});
  k.set_iv({iv.data(), iv.size()});
  explicit_bzero(key.data(), key.size());
  explicit_bzero(iv.data(), iv.size());
  k.rec_seq.fill(0);  // a new key starts at record 0
  return FillCryptoInfo(*row_, TlsVersion::kTls13, k, out, why);
}

}  // namespace ktm

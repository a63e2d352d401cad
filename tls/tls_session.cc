#include "tls/tls_session.h"

#include <string.h>

#include <algorithm>
#include <cerrno>

#include "base/error.h"

namespace ktm {

TrafficKeys::TrafficKeys(TrafficKeys&& other) noexcept { *this = std::move(other); }

TrafficKeys& TrafficKeys::operator=(TrafficKeys&& other) noexcept {
  if (this == &other) return *this;
  key_ = other.key_;
  iv_ = other.iv_;
  rec_seq = other.rec_seq;
  key_size_ = other.key_size_;
  iv_size_ = other.iv_size_;
  other.Wipe();
  return *this;
}

void TrafficKeys::set_key(std::span<const uint8_t> key) {
  if (key.size() > kMaxKey) {
    throw Error(ErrorKind::kInternal, EINVAL, "the TLS library exported a " + std::to_string(key.size()) +
                                                  "-byte traffic key (at most " + std::to_string(kMaxKey) + " expected)");
  }
  std::copy(key.begin(), key.end(), key_.begin());
  key_size_ = key.size();
}

void TrafficKeys::set_iv(std::span<const uint8_t> iv) {
  if (iv.size() > kMaxIv) {
    throw Error(ErrorKind::kInternal, EINVAL, "the TLS library exported a " + std::to_string(iv.size()) +
                                                  "-byte traffic IV (at most " + std::to_string(kMaxIv) + " expected)");
  }
  std::copy(iv.begin(), iv.end(), iv_.begin());
  iv_size_ = iv.size();
}

void TrafficKeys::Wipe() {
  explicit_bzero(key_.data(), key_.size());
  explicit_bzero(iv_.data(), iv_.size());
  explicit_bzero(rec_seq.data(), rec_seq.size());
  key_size_ = iv_size_ = 0;
}

std::unique_ptr<Channel> TlsSession::UserspaceChannel(std::unique_ptr<TlsSession> session, std::string why) {
  TlsSession* s = session.get();
  return s->MakeRecordChannel(std::move(session), std::move(why));
}

}  // namespace ktm

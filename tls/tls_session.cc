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
  secret_ = other.secret_;
  secret_size_ = other.secret_size_;
  rec_seq = other.rec_seq;
  key_size_ = other.key_size_;
  iv_size_ = other.iv_size_;
  other.Wipe();
  return *this;
}

namespace {
// Copies `from` into the front of `to`; returns its size. Throws when it
// does not fit.
size_t CopyKeyBytes(std::span<const uint8_t> from, std::span<uint8_t> to, const char* what) {
  if (from.size() > to.size()) {
    throw Error(ErrorKind::kInternal, EINVAL, std::string("the TLS library exported a ") +
                                                  std::to_string(from.size()) + "-byte traffic " + what +
                                                  " (at most " + std::to_string(to.size()) + " expected)");
  }
  std::copy(from.begin(), from.end(), to.begin());
  return from.size();
}
}  // namespace

void TrafficKeys::set_key(std::span<const uint8_t> key) { key_size_ = CopyKeyBytes(key, key_, "key"); }
void TrafficKeys::set_iv(std::span<const uint8_t> iv) { iv_size_ = CopyKeyBytes(iv, iv_, "IV"); }
void TrafficKeys::set_secret(std::span<const uint8_t> secret) {
  secret_size_ = CopyKeyBytes(secret, secret_, "secret");
}

void TrafficKeys::Wipe() {
  explicit_bzero(key_.data(), key_.size());
  explicit_bzero(iv_.data(), iv_.size());
  explicit_bzero(secret_.data(), secret_.size());
  explicit_bzero(rec_seq.data(), rec_seq.size());
  key_size_ = iv_size_ = secret_size_ = 0;
}

std::unique_ptr<Channel> TlsSession::UserspaceChannel(std::unique_ptr<TlsSession> session, std::string why) {
  TlsSession* s = session.get();
  return s->MakeRecordChannel(std::move(session), std::move(why));
}

}  // namespace ktm

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

void FillUserspaceRekeyStats(ChannelStats& st, const SendKeyUse& use, uint64_t sent, uint64_t received,
                             const std::string& why_not, TlsBackend library) {
  const std::string lib = LibraryName(library);
  st.rekey.applies = true;
  st.rekey.sent = sent;
  st.rekey.received = received;
  st.rekey.limit_records = use.limit_records();
  st.rekey.limit_bytes = use.limit_bytes();
  st.rekey.can_rekey = why_not.empty();
  st.rekey.detail = why_not.empty() ? lib + " follows and starts key updates in userspace" : why_not;
  st.rx_no_pad_detail = "off: a kTLS receive option; " + lib + " decrypts in userspace";
}

std::unique_ptr<Channel> TlsSession::UserspaceChannel(std::unique_ptr<TlsSession> session, std::string why) {
  TlsSession* s = session.get();
  return s->MakeRecordChannel(std::move(session), std::move(why));
}

}  // namespace ktm

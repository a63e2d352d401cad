// A TLS session over a socket fd that the TLS library owns, behind a
// backend-neutral interface.
//
// The fd is handed to the TLS library (never wrapped in push/pull
// callbacks): that is what lets the session move into the kernel afterwards
// (ktls/), and what lets a library with kTLS support engage it itself.
//
// After the handshake the session can become one of two channels:
//   - kernel TLS (ktls/): ExportKernelKeys() gives the traffic keys and
//     sequence numbers the kernel needs; the library does no more I/O;
//   - userspace records: UserspaceChannel() wraps the session in the
//     backend's record channel (the library encrypts; see its contract).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "base/unique_fd.h"
#include "channel/channel.h"
#include "tls/tls_types.h"

namespace ktm {

enum class TlsDirection { kTransmit, kReceive };

// One direction's traffic state, as TLS defines it (not as the kernel lays
// it out: the kernel cipher table in ktls/ does that).
//
// Key material: the bytes live inside the object (no heap buffer that could
// be freed, or reallocated, with the key still in it) and the destructor
// wipes them with explicit_bzero, which the compiler may not drop as a dead
// store. Not copyable, so no unwiped duplicate is made by accident; a move
// wipes the source.
class TrafficKeys {
 public:
  static constexpr size_t kMaxKey = 32;  // AES-256, ChaCha20
  static constexpr size_t kMaxIv = 12;   // the TLS 1.3 / ChaCha20 static IV
  static constexpr size_t kMaxSecret = 48;  // SHA-384 (TLS_AES_256_GCM_SHA384)

  TrafficKeys() = default;
  ~TrafficKeys() { Wipe(); }
  TrafficKeys(const TrafficKeys&) = delete;
  TrafficKeys& operator=(const TrafficKeys&) = delete;
  TrafficKeys(TrafficKeys&& other) noexcept;
  TrafficKeys& operator=(TrafficKeys&& other) noexcept;

  // Copies the bytes in. Throws Error(kInternal) above kMaxKey / kMaxIv.
  void set_key(std::span<const uint8_t> key);
  // TLS 1.3, and ChaCha20-Poly1305 in TLS 1.2: the 12-byte static IV.
  // TLS 1.2 AES-GCM/CCM: the 4-byte implicit nonce part (the salt).
  void set_iv(std::span<const uint8_t> iv);
  // TLS 1.3 only: the direction's application traffic secret, from which
  // the key and IV were derived, and from which the next ones are derived
  // after a KeyUpdate (RFC 8446 7.2). Empty for TLS 1.2, or when the
  // library did not report it.
  void set_secret(std::span<const uint8_t> secret);
  std::span<const uint8_t> key() const { return {key_.data(), key_size_}; }
  std::span<const uint8_t> iv() const { return {iv_.data(), iv_size_}; }
  std::span<const uint8_t> secret() const { return {secret_.data(), secret_size_}; }

  // Zeroes every byte of the object (keys, IV, sequence number, sizes).
  void Wipe();

  std::array<uint8_t, 8> rec_seq{};  // next record's sequence number, big-endian

 private:
  std::array<uint8_t, kMaxKey> key_{};
  std::array<uint8_t, kMaxIv> iv_{};
  std::array<uint8_t, kMaxSecret> secret_{};
  size_t key_size_ = 0;
  size_t iv_size_ = 0;
  size_t secret_size_ = 0;
};

// The key-update part of a userspace record channel's stats, the same for
// every backend: the counts, the send key's limits, and whether (or why
// not) the library may change the key. `why_not`: "" when it can.
void FillUserspaceRekeyStats(ChannelStats& st, const SendKeyUse& use, uint64_t sent, uint64_t received,
                             const std::string& why_not, TlsBackend library);

class TlsSession {
 public:
  virtual ~TlsSession() = default;
  TlsSession(const TlsSession&) = delete;
  TlsSession& operator=(const TlsSession&) = delete;

  virtual TlsVersion version() const = 0;
  virtual TlsCipher cipher() const = 0;
  // Names as the library prints them (also for versions/ciphers kOther).
  virtual std::string version_name() const = 0;
  virtual std::string cipher_name() const = 0;
  // CN of the verified peer certificate ("" if none).
  virtual std::string peer_common_name() const = 0;
  // Its subject DN in RFC 4514 form, "CN=host1,O=Example" ("" if none):
  // what TlsOptions::allowed_clients matches. Both backends print it alike.
  virtual std::string peer_subject() const = 0;
  // The library running this session.
  virtual TlsBackend backend() const = 0;

  // The socket (still owned by the session).
  virtual int fd() const = 0;
  // Takes the fd away; the session must no longer be used for I/O.
  virtual UniqueFd release_fd() = 0;

  // True when the TLS library itself moved direction `dir` into the kernel
  // (OpenSSL with SSL_OP_ENABLE_KTLS: TLS 1.2 both ways; 3.0 sends TLS 1.3
  // records in the kernel but receives them itself). A direction the
  // library did not take may still be installed by us (ktls/InstallKtls).
  virtual bool library_ktls(TlsDirection dir) const = 0;
  // Bytes the library has already decrypted but nobody has read: a session
  // holding any cannot move into the kernel without losing them.
  virtual size_t buffered_plaintext() const = 0;
  // The traffic state for one direction (a copy of the keys: the caller
  // lets it go out of scope, which wipes it, as soon as it has used it).
  // TLS 1.3: with the traffic secret too (see TrafficKeys::secret()), for
  // the kernel path's own re-keying. For a direction the library moved into
  // the kernel itself, the key and sequence number may be stale (the kernel
  // holds the live ones); the secret is what counts. Throws
  // Error(kInternal) if the library cannot export it.
  virtual TrafficKeys ExportKernelKeys(TlsDirection dir) const = 0;

  // The backend's userspace record channel over `session`; `why` (why not
  // kTLS) is reported by its describe().
  static std::unique_ptr<Channel> UserspaceChannel(std::unique_ptr<TlsSession> session, std::string why);

 protected:
  TlsSession() = default;
  virtual std::unique_ptr<Channel> MakeRecordChannel(std::unique_ptr<TlsSession> self, std::string why) = 0;
};

}  // namespace ktm

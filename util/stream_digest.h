// A running XXH3-128 digest of a byte stream, for checking that a stream
// arrived exactly as it was sent (the tunnel's --stream-digest): both ends
// hash what passed through them and the two hex strings are compared.
//
// Not a security measure: TLS's AEAD already authenticates every record on
// the wire. This catches bugs in what happens around TLS (buffers reused too
// early, bytes skipped or repeated when a write was retried), which TLS
// cannot see. Not thread safe: one digest per direction, fed by one thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace ktm {

class StreamDigest {
 public:
  StreamDigest();
  ~StreamDigest();
  StreamDigest(const StreamDigest&) = delete;
  StreamDigest& operator=(const StreamDigest&) = delete;

  void Update(const void* data, size_t len);
  // "xxh3:" and 32 hex digits of the digest of everything so far.
  std::string Hex() const;
  // The same text for a 16-byte canonical (big-endian) XXH3-128 digest.
  static std::string Format(const unsigned char (&canonical)[16]);

 private:
  struct State;
  std::unique_ptr<State> st_;
};

}  // namespace ktm

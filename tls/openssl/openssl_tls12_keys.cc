// OpensslSession::Tls12Keys: the TLS 1.2 key block, which OpenSSL 3.0 does
// not export, derived again from the master secret (RFC 5246 6.3).
#include <openssl/core_names.h>
#include <openssl/kdf.h>
#include <string.h>

#include <array>
#include <cstring>
#include <memory>

#include "base/error.h"
#include "tls/openssl/openssl_session.h"

namespace ktm {
namespace {

struct KdfFree {
  void operator()(EVP_KDF_CTX* c) const { EVP_KDF_CTX_free(c); }
};

// PRF(master, "key expansion", server_random + client_random) into `out`.
void KeyExpansion(const EVP_MD* md, std::span<const uint8_t> master, std::span<const uint8_t> seed,
                  std::span<uint8_t> out) {
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "TLS1-PRF", nullptr);
  std::unique_ptr<EVP_KDF_CTX, KdfFree> ctx(kdf ? EVP_KDF_CTX_new(kdf) : nullptr);
  EVP_KDF_free(kdf);  // the context holds its own reference
  if (!ctx || !md) throw Error(ErrorKind::kInternal, EPROTO, "libcrypto has no TLS1-PRF for the key export");
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(EVP_MD_get0_name(md)), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SECRET, const_cast<uint8_t*>(master.data()), master.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SEED, const_cast<uint8_t*>(seed.data()), seed.size()),
      OSSL_PARAM_construct_end()};
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    throw Error(ErrorKind::kInternal, EPROTO, "TLS1-PRF refused the TLS 1.2 key expansion");
  }
}

}  // namespace

// Layout of the key block for AEAD suites (no MAC keys): client key,
// server key, client IV, server IV. The IV is the 4-byte implicit salt for
// AES-GCM/CCM and the 12-byte static IV for ChaCha20-Poly1305 (RFC 7905).
// Sequence number 1: each side's Finished was record 0 under these keys,
// and tickets are off, so nothing else went before the export.
TrafficKeys OpensslSession::Tls12Keys(TlsDirection dir) const {
  SSL* s = ssl_.get();
  const TlsCipher c = cipher();
  if (c == TlsCipher::kOther) {
    throw Error(ErrorKind::kInternal, EPROTO, "OpenSSL session keys can be exported for AEAD suites only");
  }
  const size_t key_size = c == TlsCipher::kAes256Gcm || c == TlsCipher::kChacha20Poly1305 ? 32 : 16;
  const size_t iv_size = c == TlsCipher::kChacha20Poly1305 ? 12 : 4;
  std::array<uint8_t, 48> master{};
  std::array<uint8_t, 13 + 64> seed{};  // "key expansion" server_random client_random
  std::array<uint8_t, 2 * (32 + 12)> block{};
  const size_t master_size = SSL_SESSION_get_master_key(SSL_get_session(s), master.data(), master.size());
  std::memcpy(seed.data(), "key expansion", 13);
  SSL_get_server_random(s, seed.data() + 13, 32);
  SSL_get_client_random(s, seed.data() + 45, 32);
  const size_t block_size = 2 * (key_size + iv_size);
  try {
    KeyExpansion(SSL_CIPHER_get_handshake_digest(SSL_get_current_cipher(s)), {master.data(), master_size}, seed,
                 {block.data(), block_size});
  } catch (...) {
    explicit_bzero(master.data(), master.size());
    throw;
  }
  explicit_bzero(master.data(), master.size());
  // Client keys are ours to send with when we are the client.
  const bool client_side = (SSL_is_server(s) == 1) == (dir == TlsDirection::kReceive);
  TrafficKeys k;
  k.set_key({block.data() + (client_side ? 0 : key_size), key_size});
  k.set_iv({block.data() + 2 * key_size + (client_side ? 0 : iv_size), iv_size});
  explicit_bzero(block.data(), block.size());
  k.rec_seq[7] = 1;
  return k;
}

}  // namespace ktm

#include "tls/tls_types.h"

namespace ktm {

const char* ToString(TlsVersion v) {
  switch (v) {
    case TlsVersion::kTls12: return "TLS1.2";
    case TlsVersion::kTls13: return "TLS1.3";
    case TlsVersion::kOther: return "other TLS version";
  }
  return "?";
}

const char* ToString(TlsCipher c) {
  switch (c) {
    case TlsCipher::kAes128Gcm: return "AES-128-GCM";
    case TlsCipher::kAes256Gcm: return "AES-256-GCM";
    case TlsCipher::kChacha20Poly1305: return "CHACHA20-POLY1305";
    case TlsCipher::kAes128Ccm: return "AES-128-CCM";
    case TlsCipher::kOther: return "other cipher";
  }
  return "?";
}

std::string TlsAlertName(uint8_t d) {
  const char* n = nullptr;
  switch (d) {
    case 0: n = "close_notify"; break;
    case 10: n = "unexpected_message"; break;
    case 20: n = "bad_record_mac"; break;
    case 22: n = "record_overflow"; break;
    case 40: n = "handshake_failure"; break;
    case 42: n = "bad_certificate"; break;
    case 43: n = "unsupported_certificate"; break;
    case 44: n = "certificate_revoked"; break;
    case 45: n = "certificate_expired"; break;
    case 46: n = "certificate_unknown"; break;
    case 47: n = "illegal_parameter"; break;
    case 48: n = "unknown_ca"; break;
    case 49: n = "access_denied"; break;
    case 50: n = "decode_error"; break;
    case 51: n = "decrypt_error"; break;
    case 70: n = "protocol_version"; break;
    case 71: n = "insufficient_security"; break;
    case 80: n = "internal_error"; break;
    case 86: n = "inappropriate_fallback"; break;
    case 90: n = "user_canceled"; break;
    case 109: n = "missing_extension"; break;
    case 110: n = "unsupported_extension"; break;
    case 112: n = "unrecognized_name"; break;
    case 113: n = "bad_certificate_status_response"; break;
    case 115: n = "unknown_psk_identity"; break;
    case 116: n = "certificate_required"; break;
    case 120: n = "no_application_protocol"; break;
    default: break;
  }
  return std::string(n ? n : "unknown") + " (" + std::to_string(d) + ")";
}

Error AlertReceivedError(uint8_t d, const std::string& during) {
  switch (d) {
    case 40: case 42: case 43: case 44: case 45: case 46: case 48: case 49: case 116:
      return Error(ErrorKind::kSecurity, ECONNABORTED,
                   "the peer refused our certificate: it sent TLS alert " + TlsAlertName(d) + " during " + during +
                       " (its log says why; check that it trusts our CA and that our certificate is valid)");
    // After the handshake we send only well-formed application data and
    // close_notify: unexpected_message, bad_record_mac, record_overflow or
    // decode_error mean what reached the peer was not what we sent.
    case 10: case 20: case 22: case 50:
      return Error(ErrorKind::kIntegrity, EBADMSG,
                   "the peer refused our data: it sent TLS alert " + TlsAlertName(d) + " during " + during +
                       " (what it received failed authentication or did not parse: corrupted or tampered with in "
                       "transit)");
    default:
      return Error(ErrorKind::kPeer, ECONNABORTED, "peer sent TLS alert " + TlsAlertName(d) + " during " + during);
  }
}

uint64_t RecordLimit(TlsCipher c) {
  switch (c) {
    case TlsCipher::kAes128Gcm:
    case TlsCipher::kAes256Gcm: return uint64_t{1} << 24;
    case TlsCipher::kAes128Ccm: return uint64_t{1} << 21;
    case TlsCipher::kChacha20Poly1305: return uint64_t{1} << 62;
    case TlsCipher::kOther: break;
  }
  return uint64_t{1} << 21;  // unknown AEAD: the strictest figure we keep
}

}  // namespace ktm

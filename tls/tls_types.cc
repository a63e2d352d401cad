#include "tls/tls_types.h"

#include <fnmatch.h>
#include <strings.h>

#include <cerrno>

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

const char* ToString(TlsBackend b) {
  switch (b) {
    case TlsBackend::kGnutls: return "gnutls";
    case TlsBackend::kOpenssl: return "openssl";
  }
  return "?";
}

const char* LibraryName(TlsBackend b) {
  switch (b) {
    case TlsBackend::kGnutls: return "GnuTLS";
    case TlsBackend::kOpenssl: return "OpenSSL";
  }
  return "?";
}

TlsBackend ParseTlsBackend(const std::string& s, const std::string& what) {
  for (TlsBackend b : kAllTlsBackends) {
    if (strcasecmp(s.c_str(), ToString(b)) == 0) return b;
  }
  throw Error(ErrorKind::kUsage, EINVAL, "bad " + what + " '" + s + "': expected gnutls or openssl");
}

namespace {

std::vector<std::string> SplitList(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const size_t comma = s.find(',', start);
    std::string item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    out.push_back(item);
    if (comma == std::string::npos) return out;
    start = comma + 1;
  }
}

template <typename T>
void AddOnce(std::vector<T>& v, T x) {
  if (std::find(v.begin(), v.end(), x) == v.end()) v.push_back(x);
}

}  // namespace

std::vector<TlsVersion> ParseTlsVersions(const std::string& s, const std::string& what) {
  std::vector<TlsVersion> out;
  for (const std::string& item : SplitList(s)) {
    std::string v = item;
    if (strncasecmp(v.c_str(), "tls", 3) == 0) v = v.substr(v.size() > 3 && (v[3] == 'v' || v[3] == 'V') ? 4 : 3);
    if (v == "1.3") {
      AddOnce(out, TlsVersion::kTls13);
    } else if (v == "1.2") {
      AddOnce(out, TlsVersion::kTls12);
    } else {
      throw Error(ErrorKind::kUsage, EINVAL,
                  "bad " + what + " item '" + item + "': expected 1.3 and/or 1.2 (kTLS takes no older version)");
    }
  }
  return out;
}

std::vector<TlsCipher> ParseTlsCiphers(const std::string& s, const std::string& what) {
  std::vector<TlsCipher> out;
  for (const std::string& item : SplitList(s)) {
    bool found = false;
    for (TlsCipher c : {TlsCipher::kAes128Gcm, TlsCipher::kAes256Gcm, TlsCipher::kChacha20Poly1305,
                        TlsCipher::kAes128Ccm}) {
      if (strcasecmp(item.c_str(), ToString(c)) == 0) {
        AddOnce(out, c);
        found = true;
      }
    }
    if (!found) {
      throw Error(ErrorKind::kUsage, EINVAL,
                  "bad " + what + " item '" + item +
                      "': expected aes-128-gcm, aes-256-gcm, chacha20-poly1305 or aes-128-ccm (the AEAD ciphers "
                      "the kernel's TLS can take)");
    }
  }
  return out;
}

std::string ToString(const TlsCryptoPolicy& p) {
  if (!p.library_override.empty()) return "library override '" + p.library_override + "'";
  std::string out;
  for (TlsVersion v : p.versions) out += std::string(out.empty() ? "" : ",") + ToString(v);
  out += " with ";
  bool first = true;
  for (TlsCipher c : p.ciphers) {
    out += std::string(first ? "" : ",") + ToString(c);
    first = false;
  }
  return out;
}

std::string ClientAllowListRefusal(const std::vector<std::string>& patterns, const std::string& subject_dn,
                                   const std::string& common_name) {
  if (patterns.empty()) return "";
  std::string list;
  for (const std::string& p : patterns) {
    if (fnmatch(p.c_str(), subject_dn.c_str(), 0) == 0) return "";
    if (!common_name.empty() && fnmatch(p.c_str(), common_name.c_str(), 0) == 0) return "";
    list += (list.empty() ? "'" : ", '") + p + "'";
  }
  return "the client's certificate (subject '" + subject_dn +
         "') is valid but not on the allow-list: it matches none of " + list +
         " (add --tls-allow-client for it on the destination)";
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
    // close_notify: unexpected_message, bad_record_mac, record_overflow,
    // decode_error or protocol_version (OpenSSL's answer to a record header
    // whose version bytes changed) mean what reached the peer was not what
    // we sent.
    case 10: case 20: case 22: case 50: case 70:
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

// GnuTLS's form of loaded credentials. Private to certs/ and the GnuTLS
// backend (tls/gnutls/): no neutral header includes this file.
#pragma once

#include "certs/credentials.h"
#include "certs/gnutls_util.h"

namespace ktm {

struct CredentialsNative {
  CertCredentials creds;
};

// The native credentials behind `c` (valid while `c` lives).
const CredentialsNative& NativeOf(const Credentials& c);

}  // namespace ktm

// GnuTLS's certificate credentials for loaded Credentials: built from the
// same files certs/ checked (creds->files()), once per Credentials object
// (Credentials::BackendState), shared by every session that uses them.
#pragma once

#include <gnutls/gnutls.h>

#include "certs/credentials.h"

namespace ktm {

// The credentials for `c`, valid while `c` lives. Throws Error(kSecurity)
// naming the file GnuTLS refused (a file changed since Credentials::Load).
gnutls_certificate_credentials_t GnutlsCredentials(const Credentials& c);

}  // namespace ktm

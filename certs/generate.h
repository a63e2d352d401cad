// Generation of test/demo PKI: a CA, and server and
// client certificates it signs, in QEMU's creds-dir layout. Keys are
// written with mode 0600.
//
// A neutral declaration: the implementation issues the certificates with
// GnuTLS's x509 API and lives with that backend (tls/gnutls/x509_issue.cc);
// link //certs:generate to get it.
#pragma once

#include <string>
#include <vector>

#include "certs/credentials.h"

namespace ktm {

enum class KeyType { kEcdsaP256, kRsa3072 };

struct GenerateOptions {
  std::string out_dir;
  std::string hostname = "localhost";    // server CN and DNS SAN
  std::vector<std::string> ips;          // extra IP SANs for the server
  std::string client_name = "tls-migrate-client";
  KeyType key_type = KeyType::kEcdsaP256;
  int days = 365;
};

// Writes ca-cert.pem, ca-key.pem, server-cert.pem, server-key.pem,
// client-cert.pem, client-key.pem into out_dir (created if missing).
void GenerateCredsDir(const GenerateOptions& opts);

}  // namespace ktm

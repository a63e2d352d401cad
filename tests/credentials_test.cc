// certs/: loading a creds dir, the load-time sanity checks (each error names
// the file and the problem), and generation.
#include "certs/credentials.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "certs/generate.h"
#include "tls/gnutls/x509_issue.h"
#include "tests/pki.h"

namespace ktm {
namespace {

using testing::Pki;

// Expects Load to throw an Error whose message contains every needle.
void ExpectLoadError(const CredentialFiles& f, TlsRole role, std::initializer_list<std::string> needles) {
  try {
    Credentials::Load(f, role);
    ADD_FAILURE() << "load succeeded";
  } catch (const Error& e) {
    for (const auto& n : needles) EXPECT_NE(std::string(e.what()).find(n), std::string::npos) << e.what();
    EXPECT_EQ(e.kind(), ErrorKind::kSecurity) << e.what();
  }
}

TEST(Credentials, LoadsQemuCredsDirForBothRoles) {
  const Pki& p = Pki::Get();
  CredentialFiles s = CredsDirFiles(p.dir, TlsRole::kServer);
  EXPECT_EQ(s.cert, p.dir + "/server-cert.pem");
  EXPECT_EQ(s.key, p.dir + "/server-key.pem");
  EXPECT_TRUE(s.crl.empty());
  EXPECT_NE(Credentials::Load(s, TlsRole::kServer), nullptr);
  CredentialFiles c = CredsDirFiles(p.dir, TlsRole::kClient);
  EXPECT_EQ(c.cert, p.dir + "/client-cert.pem");
  EXPECT_TRUE(Credentials::Load(c, TlsRole::kClient)->has_own_cert());
}

// A private key others may read is loaded (it works) but named with its
// mode in a warning, as ssh does; an owner-only key gives none.
TEST(Credentials, KeyReadableByOthersIsWarnedAboutWithItsMode) {
  const Pki& p = Pki::Get();
  CredentialFiles f = CredsDirFiles(p.dir, TlsRole::kServer);
  ASSERT_EQ(chmod(f.key.c_str(), 0600), 0);
  EXPECT_TRUE(Credentials::Load(f, TlsRole::kServer)->warnings().empty());
  ASSERT_EQ(chmod(f.key.c_str(), 0640), 0);  // a group that reads keys (Debian's ssl-cert): deliberate
  EXPECT_TRUE(Credentials::Load(f, TlsRole::kServer)->warnings().empty());
  ASSERT_EQ(chmod(f.key.c_str(), 0644), 0);
  auto c = Credentials::Load(f, TlsRole::kServer);
  ASSERT_EQ(chmod(f.key.c_str(), 0600), 0);
  ASSERT_EQ(c->warnings().size(), 1u);
  const std::string& w = c->warnings()[0];
  EXPECT_NE(w.find(f.key), std::string::npos) << w;
  EXPECT_NE(w.find("mode 0644"), std::string::npos) << w;
  EXPECT_NE(w.find("chmod 600"), std::string::npos) << w;
}

TEST(Credentials, MissingCaInCredsDirExplainsTheLayout) {
  try {
    CredsDirFiles("/nonexistent-dir", TlsRole::kServer);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("ca-cert.pem"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("certs generate"), std::string::npos);
  }
}

TEST(Credentials, ExpiredCertificateNamesFileAndDate) {
  const Pki& p = Pki::Get();
  ExpectLoadError({p.ca(), "", p.expired_cert, p.expired_key}, TlsRole::kServer,
                  {p.expired_cert, "expired on"});
}

TEST(Credentials, NotYetValidCertificate) {
  const Pki& p = Pki::Get();
  ExpectLoadError({p.ca(), "", p.future_cert, p.future_key}, TlsRole::kServer,
                  {p.future_cert, "not valid until"});
}

TEST(Credentials, CaWithoutCaConstraint) {
  const Pki& p = Pki::Get();
  ExpectLoadError({p.not_ca_cert, "", "", ""}, TlsRole::kClient, {p.not_ca_cert, "not a CA certificate"});
}

TEST(Credentials, CaWithoutCertSignUsage) {
  const Pki& p = Pki::Get();
  ExpectLoadError({p.no_certsign_ca, "", "", ""}, TlsRole::kClient, {p.no_certsign_ca, "keyCertSign"});
}

TEST(Credentials, LeafWithoutRoleKeyPurpose) {
  const Pki& p = Pki::Get();
  ExpectLoadError({p.ca(), "", p.no_purpose_cert, p.no_purpose_key}, TlsRole::kServer,
                  {p.no_purpose_cert, "serverAuth"});
  // A server certificate used as a client certificate: wrong purpose too.
  ExpectLoadError({p.ca(), "", p.server_cert(), p.server_key()}, TlsRole::kClient, {"clientAuth"});
}

TEST(Credentials, KeyNotMatchingCertificate) {
  const Pki& p = Pki::Get();
  ExpectLoadError({p.ca(), "", p.server_cert(), p.client_key()}, TlsRole::kServer,
                  {p.client_key(), "does not match"});
}

TEST(Credentials, ChainNotVerifyingToCa) {
  const Pki& p = Pki::Get();
  ExpectLoadError({p.other_ca_dir + "/ca-cert.pem", "", p.server_cert(), p.server_key()}, TlsRole::kServer,
                  {p.server_cert(), "does not chain"});
}

TEST(Credentials, CrlMustBeSignedByTheCa) {
  const Pki& p = Pki::Get();
  EXPECT_NE(Credentials::Load({p.ca(), p.crl, p.server_cert(), p.server_key()}, TlsRole::kServer), nullptr);
  ExpectLoadError({p.other_ca_dir + "/ca-cert.pem", p.crl, "", ""}, TlsRole::kClient, {p.crl, "not signed"});
}

TEST(Credentials, ServerNeedsOwnCertificate) {
  const Pki& p = Pki::Get();
  ExpectLoadError({p.ca(), "", "", ""}, TlsRole::kServer, {"needs its own certificate"});
}

TEST(Generate, KeysAre0600AndRsaOptionWorks) {
  char tmpl[] = "/tmp/ktm-gen-XXXXXX";
  std::string dir = mkdtemp(tmpl);
  GenerateOptions o;
  o.out_dir = dir;
  o.hostname = "dst.example";
  o.ips = {"192.0.2.7", "2001:db8::7"};
  o.key_type = KeyType::kRsa3072;
  GenerateCredsDir(o);
  for (const char* k : {"ca-key.pem", "server-key.pem", "client-key.pem"}) {
    struct stat st{};
    ASSERT_EQ(stat((dir + "/" + k).c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << k;
  }
  auto creds = Credentials::Load(CredsDirFiles(dir, TlsRole::kServer), TlsRole::kServer);
  ASSERT_NE(creds, nullptr);
  std::string pem = ReadFile(dir + "/server-cert.pem");
  X509Crt crt = NewCrt();
  gnutls_datum_t d{reinterpret_cast<unsigned char*>(pem.data()), (unsigned)pem.size()};
  ASSERT_GE(gnutls_x509_crt_import(crt.get(), &d, GNUTLS_X509_FMT_PEM), 0);
  EXPECT_EQ(CrtSubjectAltNames(crt.get()), "DNS:dst.example, IP:192.0.2.7, IP:2001:db8::7");
  EXPECT_EQ(gnutls_x509_crt_get_pk_algorithm(crt.get(), nullptr), GNUTLS_PK_RSA);
  EXPECT_TRUE(gnutls_x509_crt_check_hostname(crt.get(), "dst.example"));
  EXPECT_FALSE(gnutls_x509_crt_check_hostname(crt.get(), "other.example"));
}

}  // namespace
}  // namespace ktm

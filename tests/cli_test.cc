// The tls-migrate binary as users run it: separate processes, real exit
// codes, peers killed mid-stream, signals, and two hosts in network
// namespaces joined by a rate-limited veth pair.
#include <signal.h>

#include <thread>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <cstdlib>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/cli_util.h"
#include "tests/netns.h"
#include "tests/pki.h"
#include "util/image_digest.h"
#include "tests/subprocess.h"
#include "tests/test_util.h"
#include "util/sha256.h"

namespace ktm {
namespace {

using testing::Subprocess;
using namespace std::chrono_literals;

using Dir = testing::TempDir;
using testing::Cli;
using testing::GenerateCerts;
using testing::RunCli;

int FreePort() { return testing::FreePort(); }

TEST(Cli, HelpAndUsageErrors) {
  std::string out;
  EXPECT_EQ(RunCli({"--help"}, &out), 0);
  EXPECT_NE(out.find("Exit codes"), std::string::npos);
  for (const char* cmd : {"send", "recv", "probe", "demo"}) {
    EXPECT_EQ(RunCli({cmd, "--help"}, &out), 0) << cmd;
    EXPECT_NE(out.find("Usage: tls-migrate"), std::string::npos) << cmd;
  }
  EXPECT_EQ(RunCli({"certs", "generate", "--help"}, &out), 0);
  EXPECT_EQ(RunCli({"send"}, &out), 2);
  EXPECT_NE(out.find("--connect"), std::string::npos) << out;
  EXPECT_EQ(RunCli({"send", "--connect", "127.0.0.1:1", "--bogus"}, &out), 2);
  EXPECT_NE(out.find("unknown option --bogus"), std::string::npos) << out;
  EXPECT_EQ(RunCli({"frobnicate"}, &out), 2);
  EXPECT_EQ(RunCli({"send", "--connect", "127.0.0.1:1", "--size", "1M"}, &out), 2);
  EXPECT_NE(out.find("needs credentials"), std::string::npos) << out;
}

TEST(Cli, ProbeReportsThisHost) {
  std::string out;
  EXPECT_EQ(RunCli({"probe"}, &out), 0) << out;
  for (const char* s : {"TLS backends", "  gnutls   GnuTLS 3.", "  openssl  OpenSSL 3.", "library kTLS: ",
                        "kernel TLS", "TLS 1.3 key update", "TLS_RX_EXPECT_NO_PAD", "MSG_ZEROCOPY", "io_uring SEND_ZC",
                        "ulimit -l", "optmem_max", "What each mode would do"}) {
    EXPECT_NE(out.find(s), std::string::npos) << s << "\n" << out;
  }
  // --json: each backend with its library and what kTLS it enables itself.
  EXPECT_EQ(RunCli({"probe", "--json", "-"}, &out), 0) << out;
  const nlohmann::json j = nlohmann::json::parse(out.substr(out.rfind("\n{") + 1));
  ASSERT_EQ(j.at("tls_backends").size(), 2u) << j.dump(1);
  EXPECT_EQ(j.at("tls_backends")[0].at("backend"), "gnutls");
  EXPECT_EQ(j.at("tls_backends")[1].at("backend"), "openssl");
  for (const auto& b : j.at("tls_backends")) {
    EXPECT_FALSE(b.at("library_ktls").get<std::string>().empty()) << b.dump();
    EXPECT_EQ(b.at("library").get<std::string>().find("not built in"), std::string::npos) << b.dump();
  }
  EXPECT_TRUE(j.at("kernel_tls").is_boolean());
}

TEST(Cli, FileMigrationWithCertificatesAndJson) {
  Dir d;
  GenerateCerts(d.path + "/pki", "localhost", "127.0.0.1");
  struct stat st{};
  ASSERT_EQ(stat((d.path + "/pki/server-key.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  std::string in = d.path + "/in.img";
  {
    std::ofstream f(in, std::ios::binary);
    for (int i = 0; i < (3 << 18); ++i) f.put(static_cast<char>(i * 7 % 251));
  }
  const std::string port = std::to_string(FreePort());
  Subprocess recv(testing::WithBackend({Cli(), "recv", "--listen", "127.0.0.1:" + port, "--output",
                                        d.path + "/out.img", "--tls-creds", d.path + "/pki", "--json",
                                        d.path + "/recv.json", "--timeout", "20"}));
  ASSERT_TRUE(recv.WaitFor("listening on", 10s)) << recv.output();
  std::string out;
  int rc = RunCli({"send", "--connect", "127.0.0.1:" + port, "--input", in, "--tls-creds", d.path + "/pki",
                "--tls-hostname", "localhost", "--channels", "3", "--json", d.path + "/send.json"},
               &out);
  EXPECT_EQ(rc, 0) << out;
  EXPECT_EQ(recv.Wait(30s), 0) << recv.output();
  std::ifstream a(in, std::ios::binary), b(d.path + "/out.img", std::ios::binary);
  std::string sa((std::istreambuf_iterator<char>(a)), {}), sb((std::istreambuf_iterator<char>(b)), {});
  EXPECT_EQ(sa.size(), sb.size());
  EXPECT_TRUE(sa == sb);
  std::ifstream js(d.path + "/send.json");
  const nlohmann::json j = nlohmann::json::parse(js);
  EXPECT_EQ(j.at("image_digest"), DigestHex(DigestAlgorithm::kXxh3, ImageDigestOf(DigestAlgorithm::kXxh3,
                                                                                reinterpret_cast<const uint8_t*>(sa.data()),
                                                                                sa.size(), 4096)))
      << j.dump(1);
  ASSERT_EQ(j.at("channels").size(), 3u);
  EXPECT_EQ(j.at("channels")[0].at("id"), 0);
  EXPECT_NE(out.find("channels 0-2:"), std::string::npos) << out;
  // Both reports name the TLS library that ran (the backend under test).
  const std::string lib = testing::CliBackend() == "openssl" ? "OpenSSL" : "GnuTLS";
  EXPECT_NE(out.find("TLS library: " + lib), std::string::npos) << out;
  EXPECT_NE(recv.output().find("TLS library: " + lib), std::string::npos) << recv.output();
  std::ifstream rjs(d.path + "/recv.json");
  const nlohmann::json rj = nlohmann::json::parse(rjs);
  for (const nlohmann::json* side : {&j, &rj}) {
    EXPECT_EQ(side->at("tls").at("backend"), testing::CliBackend()) << side->dump(1);
    EXPECT_EQ(side->at("tls").at("library").get<std::string>().rfind(lib, 0), 0u) << side->dump(1);
  }
}

// --rekey-after on a userspace TLS migration: both sides change keys, and
// the path lines and --json say how often, under which limit, and why
// no-pad is off. A bad value is a usage error (exit 2) naming the flag.
TEST(Cli, RekeyAfterIsAppliedAndReported) {
  Dir d;
  GenerateCerts(d.path + "/pki", "localhost", "127.0.0.1");
  const std::string port = std::to_string(FreePort());
  Subprocess recv(testing::WithBackend({Cli(), "recv", "--listen", "127.0.0.1:" + port, "--output",
                                        d.path + "/out.img", "--tls-creds", d.path + "/pki", "--ktls", "off",
                                        "--rekey-after", "256K", "--json", d.path + "/recv.json", "--timeout", "20"}));
  ASSERT_TRUE(recv.WaitFor("listening on", 10s)) << recv.output();
  std::string out;
  EXPECT_EQ(RunCli({"send", "--connect", "127.0.0.1:" + port, "--size", "16M", "--tls-creds", d.path + "/pki",
                    "--ktls", "off", "--rekey-after", "256K", "--channels", "1", "--json", d.path + "/send.json"},
                   &out),
            0)
      << out;
  EXPECT_EQ(recv.Wait(30s), 0) << recv.output();
  EXPECT_NE(out.find("key updates: 8 sent, 0 received; send key changes before 2^24 records or 256.0 KiB "
                     "(--rekey-after); re-keying on"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("no-pad receive off: a kTLS receive option"), std::string::npos) << out;
  std::ifstream sj(d.path + "/send.json"), rj(d.path + "/recv.json");
  const nlohmann::json s = nlohmann::json::parse(sj), r = nlohmann::json::parse(rj);
  const nlohmann::json& sk = s.at("channels")[0].at("rekey");
  EXPECT_EQ(sk.at("sent"), 8) << s.dump(1);  // 16 MiB at 256 KiB: the pace's first window
  EXPECT_EQ(sk.at("limit_bytes"), 256 << 10);
  EXPECT_EQ(sk.at("limit_records"), 1 << 24);
  EXPECT_EQ(sk.at("possible"), true);
  EXPECT_EQ(r.at("channels")[0].at("rekey").at("received"), sk.at("sent")) << r.dump(1);
  EXPECT_EQ(s.at("channels")[0].at("rx_no_pad"), false);
  EXPECT_EQ(RunCli({"send", "--connect", "127.0.0.1:1", "--size", "1M", "--no-tls", "--rekey-after", "1K"}, &out), 2);
  EXPECT_NE(out.find("--rekey-after '1K': at least 16K"), std::string::npos) << out;
  EXPECT_EQ(RunCli({"send", "--connect", "127.0.0.1:1", "--size", "1M", "--no-tls", "--rekey-after", "lots"}, &out), 2);
  EXPECT_NE(out.find("bad --rekey-after 'lots'"), std::string::npos) << out;
}

TEST(Cli, WrongHostnameExitsWithSecurityCode) {
  Dir d;
  GenerateCerts(d.path + "/pki", "dst.example", "127.0.0.1");
  const std::string port = std::to_string(FreePort());
  Subprocess recv(testing::WithBackend({Cli(), "recv", "--listen", "127.0.0.1:" + port, "--output",
                                        d.path + "/out.img", "--tls-creds", d.path + "/pki", "--timeout", "3"}));
  ASSERT_TRUE(recv.WaitFor("listening on", 10s));
  std::string out;
  EXPECT_EQ(RunCli({"send", "--connect", "127.0.0.1:" + port, "--size", "1M", "--tls-creds", d.path + "/pki",
                 "--tls-hostname", "wrong.example"},
                &out),
            3)
      << out;
  EXPECT_NE(out.find("expected the name 'wrong.example'"), std::string::npos) << out;
  EXPECT_NE(recv.Wait(20s), 0);
  EXPECT_NE(recv.output().find("rejected connection"), std::string::npos) << recv.output();
  EXPECT_FALSE(d.Has("out.img"));
}

TEST(Cli, BenchRunsEveryModeAndWritesJsonAndChart) {
  Dir d;
  std::string out;
  ASSERT_EQ(RunCli({"bench", "--size", "16M", "--channels", "1", "--json", d.path + "/b.json", "--png",
                    d.path + "/b.png", "--output-dir", d.path, "--downtime-size", "64M", "--runs", "1"},
                   &out, 300s),
            0)
      << out;
  std::ifstream js(d.path + "/b.json");
  const nlohmann::json j = nlohmann::json::parse(js);
  auto row = [&](const std::string& mode) -> nlohmann::json {
    for (const auto& r : j.at("results")) {
      if (r.at("mode") == mode && r.at("channels") == 1) return r;
    }
    return nullptr;
  };
  for (const char* m : {"plain-copy", "msg-zerocopy", "uring", "uring-fixed", "tls-userspace", "tls-qemu-style"}) {
    const nlohmann::json r = row(m);
    ASSERT_TRUE(r.is_object()) << m << "\n" << j.dump(1);
    EXPECT_TRUE(r.at("ran").get<bool>()) << m << "\n" << r.dump(1);
    EXPECT_GT(r.value("gbytes_per_s", 0.0), 0.0) << m;
  }
  // The QEMU-style anchor writes one record per page: more, smaller records
  // than userspace TLS with corking, so it is measured, not assumed.
  const nlohmann::json ktls = row("ktls");  // ran, or says why not
  ASSERT_TRUE(ktls.is_object());
  EXPECT_TRUE(ktls.at("ran").get<bool>() || !ktls.value("why_not", std::string()).empty());
  EXPECT_NE(out.find("x QEMU"), std::string::npos) << out;
  EXPECT_TRUE(d.Has("b.png"));
  // The sections: the floor and each TLS row's ratio to it, the file rows,
  // the durable file migration against socat, the downtime split.
  EXPECT_GT(j.at("floor").value("aes_gcm_encrypt_s_per_gib", 0.0), 0.0) << j.dump(1);
  EXPECT_GT(j.at("floor").value("memcpy_s_per_gib", 0.0), 0.0);
  ASSERT_FALSE(j.at("floor_ratios").empty());
  EXPECT_GT(j.at("floor_ratios")[0].value("src_ratio", 0.0), 0.0);
  bool file_row = false;
  for (const auto& r : j.at("results")) {
    if (r.value("to_file", false) && r.value("ran", false) && r.value("gbytes_per_s", 0.0) > 0) file_row = true;
  }
  EXPECT_TRUE(file_row) << j.dump(1);
  EXPECT_GT(j.at("file_vs_socat").value("tls_migrate_s", 0.0), 0.0);
  EXPECT_TRUE(j.at("file_vs_socat").at("socat_sync_s").is_number()) << j.at("file_vs_socat").dump();
  for (const char* c : {"dirty-64M", "final-1pct", "final-1pct-file"}) {
    const nlohmann::json& dt = j.at("downtime").at(c);
    EXPECT_GT(dt.value("total_s", 0.0), 0.0) << c;
    EXPECT_GE(dt.value("total_s", 0.0), dt.value("final_pages_s", 0.0)) << c;
  }
  // The live writer into a file at two sizes, with the writeback bound and
  // without, and the bound's cost in transfer time.
  for (const char* size : {"small", "large"}) {
    for (const char* bound : {"bounded", "unbounded"}) {
      const nlohmann::json& dt = j.at("downtime").at("dirty-64M-file").at(size).at(bound);
      EXPECT_GT(dt.value("total_s", 0.0), 0.0) << size << " " << bound;
      EXPECT_GT(dt.value("transfer_s", 0.0), 0.0) << size << " " << bound;
    }
  }
  EXPECT_NE(out.find("cost of the bound in transfer time"), std::string::npos) << out;
  // 1% of 64 MiB of 4 KiB pages, less the few the random picks repeat.
  EXPECT_NEAR(j.at("downtime").at("final-1pct").value("final_pages", 0.0), 163, 3);
  for (const char* s : {"Floor (measured now", "socat + sync", "Downtime (freeze -> DONE)", "-> file"}) {
    EXPECT_NE(out.find(s), std::string::npos) << s;
  }
  // Nothing left in the output directory but what the test made.
  for (const auto& e : d.Entries()) EXPECT_EQ(e.find("tls-migrate-bench"), std::string::npos) << e;
}

// The TLS flags are checked before anything listens or connects: exit 2
// with a sentence naming the flag and the bad value.
TEST(Cli, TlsBackendAndPolicyFlagsAreCheckedAtStartup) {
  Dir d;
  GenerateCerts(d.path + "/pki", "localhost", "127.0.0.1");
  const std::vector<std::string> recv = {"recv", "--listen", "127.0.0.1:0", "--output", d.path + "/o.img",
                                         "--tls-creds", d.path + "/pki"};
  const std::vector<std::string> send = {"send", "--connect", "127.0.0.1:1", "--size", "1M", "--tls-creds",
                                         d.path + "/pki"};
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& more) {
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  struct Case {
    std::vector<std::string> args;
    const char* says;
  };
  const Case cases[] = {
      {with(recv, {"--tls-backend", "wolfssl"}), "bad --tls-backend 'wolfssl': expected gnutls or openssl"},
      {with(send, {"--tls-backend", "wolfssl"}), "bad --tls-backend 'wolfssl'"},
      {{"demo", "--tls-backend", "wolfssl"}, "bad --tls-backend 'wolfssl'"},
      {{"bench", "--tls-backend", "wolfssl"}, "bad --tls-backend 'wolfssl'"},
      {{"tunnel", "--tls-listen", "127.0.0.1:0", "--forward", "127.0.0.1:1", "--tls-creds", d.path + "/pki",
        "--tls-backend", "wolfssl"},
       "bad --tls-backend 'wolfssl'"},
      {with(recv, {"--tls-versions", "1.3,1.0"}), "bad --tls-versions item '1.0'"},
      {with(send, {"--tls-ciphers", "aes-128-gcm,3des"}), "bad --tls-ciphers item '3des'"},
      {with(send, {"--tls-allow-client", "CN=x"}), "--tls-allow-client applies where a TLS server runs"},
      {with(recv, {"--tls-allow-client", ""}), "--tls-allow-client needs a non-empty pattern"},
      // Each backend's own syntax, checked by that backend.
      {with(recv, {"--tls-priority", "NORMAL:+NO-SUCH-THING"}), "NORMAL:+NO-SUCH-THING"},
  };
  for (const Case& c : cases) {
    std::string out;
    EXPECT_EQ(RunCli(c.args, &out, 30s), 2) << c.args[0] << " " << c.says << "\n" << out;
    EXPECT_NE(out.find(c.says), std::string::npos) << c.says << "\n" << out;
    EXPECT_EQ(out.find("listening on"), std::string::npos) << out;
  }
}

// A migration between peers on different TLS libraries, both ways round:
// the destination's image digest equals the source's, and each report
// names its own library.
TEST(Cli, CrossBackendMigrationBothWays) {
  Dir d;
  GenerateCerts(d.path + "/pki", "localhost", "127.0.0.1");
  const std::string other = testing::CliBackend() == "openssl" ? "gnutls" : "openssl";
  for (const auto& [src, dst] : {std::pair{testing::CliBackend(), other}, std::pair{other, testing::CliBackend()}}) {
    SCOPED_TRACE("source " + src + ", destination " + dst);
    Subprocess recv({Cli(), "recv", "--tls-backend", dst, "--listen", "127.0.0.1:0", "--output", d.path + "/out.img",
                     "--tls-creds", d.path + "/pki", "--json", d.path + "/recv.json", "--timeout", "20"});
    ASSERT_TRUE(recv.WaitFor("listening on", 10s)) << recv.output();
    std::string out;
    EXPECT_EQ(RunCli({"send", "--tls-backend", src, "--connect", "127.0.0.1:" + testing::ListeningPort(recv.output()),
                      "--size", "24M", "--channels", "2", "--tls-creds", d.path + "/pki", "--json",
                      d.path + "/send.json"},
                     &out),
              0)
        << out;
    ASSERT_EQ(recv.Wait(30s), 0) << recv.output();
    std::ifstream sj(d.path + "/send.json"), rj(d.path + "/recv.json");
    const nlohmann::json s = nlohmann::json::parse(sj), r = nlohmann::json::parse(rj);
    EXPECT_EQ(s.at("image_digest"), r.at("image_digest"));
    EXPECT_EQ(s.at("tls").at("backend"), src);
    EXPECT_EQ(r.at("tls").at("backend"), dst);
    EXPECT_TRUE(d.Has("out.img"));
    unlink((d.path + "/out.img").c_str());
  }
}

// What a refused handshake leaves on both ends.
struct Refusal {
  int send_rc = -1;
  std::string send_out, recv_out;
};

// recv with `recv_tls` (until it logs the rejected connection), then a
// one-channel send with `send_tls`, both on the backend under test.
Refusal RunRefused(const std::vector<std::string>& recv_tls, const std::vector<std::string>& send_tls) {
  Dir d;
  std::vector<std::string> rargs = {Cli(), "recv", "--listen", "127.0.0.1:0", "--output", d.path + "/out.img",
                                    "--timeout", "30"};
  rargs.insert(rargs.end(), recv_tls.begin(), recv_tls.end());
  Subprocess recv(testing::WithBackend(rargs));
  Refusal r;
  if (!recv.WaitFor("listening on", 10s)) {
    r.recv_out = recv.output();
    return r;
  }
  std::vector<std::string> sargs = {"send", "--connect", "127.0.0.1:" + testing::ListeningPort(recv.output()),
                                    "--size", "1M", "--quiet", "--channels", "1"};
  sargs.insert(sargs.end(), send_tls.begin(), send_tls.end());
  r.send_rc = RunCli(sargs, &r.send_out);
  recv.WaitFor("rejected connection", 10s);
  recv.Signal(SIGTERM);
  recv.Wait(10s);
  r.recv_out = recv.output();
  EXPECT_FALSE(d.Has("out.img"));
  return r;
}

// Certificate failures through the CLI: exit 3 on the source with the same
// key words whichever backend runs (cli_test and cli_test_openssl assert
// the same), the destination logs the rejected connection and why.
TEST(Cli, CertificateFailuresAreExit3WithTheSameKeyWordsInEitherBackend) {
  const testing::Pki& p = testing::Pki::Get();
  Dir d;
  GenerateCerts(d.path + "/other", "localhost", "127.0.0.1");
  const std::vector<std::string> server = {"--tls-ca", p.ca(), "--tls-cert", p.server_cert(), "--tls-key",
                                           p.server_key()};
  const std::vector<std::string> client = {"--tls-ca", p.ca(), "--tls-cert", p.client_cert(), "--tls-key",
                                           p.client_key()};
  auto with = [](std::vector<std::string> a, const std::vector<std::string>& more) {
    a.insert(a.end(), more.begin(), more.end());
    return a;
  };
  struct Case {
    const char* name;
    std::vector<std::string> recv, send;
    std::vector<const char*> send_says, recv_says;
  };
  const Case cases[] = {
      {"wrong CA",
       server,
       {"--tls-creds", d.path + "/other"},
       {"the server's certificate", "not signed by a trusted CA"},
       {"rejected connection"}},
      {"wrong host",
       server,
       with(client, {"--tls-hostname", "wrong.example"}),  // (the connect address is 127.0.0.1)
       {"expected the name 'wrong.example'", "DNS:localhost"},
       {"rejected connection"}},
      {"revoked",
       {"--tls-ca", p.ca(), "--tls-cert", p.revoked_cert, "--tls-key", p.revoked_key},
       with(client, {"--tls-crl", p.crl}),
       {"the server's certificate", "revoked"},
       {"rejected connection"}},
      {"no client certificate",
       server,
       {"--tls-ca", p.ca()},
       {"refused our certificate", "certificate_required"},
       {"rejected connection", "no certificate"}},
      {"not on the allow-list",
       with(server, {"--tls-allow-client", "CN=somebody-else", "--tls-allow-client", "*.example"}),
       client,
       // (the alert differs: GnuTLS sends access_denied, OpenSSL 3.0 as
       // wipA has it handshake_failure; the sentence is the same)
       {"refused our certificate"},
       {"rejected connection", "not on the allow-list", "CN=tls-migrate-client", "'*.example'"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(c.name) + " with " + testing::CliBackend());
    const Refusal r = RunRefused(c.recv, c.send);
    EXPECT_EQ(r.send_rc, 3) << r.send_out;
    for (const char* w : c.send_says) EXPECT_NE(r.send_out.find(w), std::string::npos) << w << "\n" << r.send_out;
    for (const char* w : c.recv_says) EXPECT_NE(r.recv_out.find(w), std::string::npos) << w << "\n" << r.recv_out;
  }
}

// The allow-list lets in a client that matches by DN glob or by CN.
TEST(Cli, AllowListAdmitsAMatchingClient) {
  const testing::Pki& p = testing::Pki::Get();
  for (const char* pattern : {"CN=tls-migrate-*", "tls-migrate-client"}) {
    SCOPED_TRACE(pattern);
    Dir d;
    Subprocess recv(testing::WithBackend({Cli(), "recv", "--listen", "127.0.0.1:0", "--output", d.path + "/out.img",
                                          "--tls-ca", p.ca(), "--tls-cert", p.server_cert(), "--tls-key",
                                          p.server_key(), "--tls-allow-client", "CN=nobody", "--tls-allow-client",
                                          pattern, "--timeout", "20"}));
    ASSERT_TRUE(recv.WaitFor("listening on", 10s)) << recv.output();
    std::string out;
    EXPECT_EQ(RunCli({"send", "--connect", "127.0.0.1:" + testing::ListeningPort(recv.output()), "--size", "2M",
                      "--quiet", "--tls-ca", p.ca(), "--tls-cert", p.client_cert(), "--tls-key", p.client_key(),
                      "--tls-hostname", "localhost"},
                     &out),
              0)
        << out;
    EXPECT_EQ(recv.Wait(30s), 0) << recv.output();
    EXPECT_NE(recv.output().find("2 allow-list pattern(s)"), std::string::npos) << recv.output();
  }
}

// A live migration with the digest and downtime options: the summary and
// the JSON say which digest ran, the phases, and the downtime split.
TEST(Cli, LiveMigrationReportsDowntimePhasesAndDigest) {
  Dir d;
  const std::string port = std::to_string(FreePort());
  Subprocess recv({Cli(), "recv", "--listen", "127.0.0.1:" + port, "--output", d.path + "/out.img", "--no-tls",
                   "--json", d.path + "/recv.json", "--timeout", "30"});
  ASSERT_TRUE(recv.WaitFor("listening on", 10s)) << recv.output();
  std::string out;
  ASSERT_EQ(RunCli({"send", "--connect", "127.0.0.1:" + port, "--size", "64M", "--no-tls", "--live", "--dirty-rate",
                    "32M", "--max-downtime", "30", "--digest", "sha256", "--json", d.path + "/send.json"},
                   &out),
            0)
      << out;
  ASSERT_EQ(recv.Wait(30s), 0) << recv.output();
  std::ifstream sj(d.path + "/send.json"), rj(d.path + "/recv.json");
  const nlohmann::json s = nlohmann::json::parse(sj), r = nlohmann::json::parse(rj);
  EXPECT_EQ(s.at("digest_algorithm"), "sha256");
  EXPECT_EQ(r.at("digest_algorithm"), "sha256");
  EXPECT_EQ(s.at("image_digest"), r.at("image_digest"));
  EXPECT_EQ(s.at("image_digest").get<std::string>().size(), 64u);
  const nlohmann::json& dt = s.at("downtime");
  EXPECT_GT(dt.value("total_s", 0.0), 0.0) << dt.dump();
  EXPECT_GT(dt.value("expected_final_pages_s", 0.0), 0.0) << dt.dump();
  std::string phases;
  for (const auto& p : r.at("phases")) phases += p.at("name").get<std::string>() + ",";
  EXPECT_EQ(phases, "setup,transfer,verify,commit,");
  EXPECT_NE(recv.output().find("phases (wall / CPU"), std::string::npos) << recv.output();
  EXPECT_NE(out.find("downtime"), std::string::npos) << out;
  EXPECT_NE(out.find("(expected"), std::string::npos) << out;
  // A digest nobody knows is a usage error before anything connects.
  EXPECT_EQ(RunCli({"send", "--connect", "127.0.0.1:" + port, "--size", "1M", "--no-tls", "--digest", "md5"}, &out), 2);
  EXPECT_NE(out.find("xxh3 or sha256"), std::string::npos) << out;
}

// A transfer long enough to interrupt: 1 GiB, plaintext.
struct LongTransfer {
  Dir d;
  std::string port = std::to_string(FreePort());
  std::unique_ptr<Subprocess> recv, send;
  LongTransfer() {
    recv = std::make_unique<Subprocess>(std::vector<std::string>{
        Cli(), "recv", "--listen", "127.0.0.1:" + port, "--output", d.path + "/out.img", "--no-tls", "--timeout", "300"});
    EXPECT_TRUE(recv->WaitFor("listening on", 10s));
    send = std::make_unique<Subprocess>(std::vector<std::string>{
        Cli(), "send", "--connect", "127.0.0.1:" + port, "--size", "1G", "--no-tls", "--live",
        "--dirty-rate", "512M", "--max-iterations", "1000000"});
  }
  // True once pages are flowing: the destination creates its temporary
  // file only after every channel has introduced itself.
  bool WaitUntilStreaming() {
    for (int i = 0; i < 6000; ++i) {
      for (const auto& e : d.Entries()) {
        if (e.find(".partial.") != std::string::npos) return true;  // every channel is in: pages flow
      }
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }
};

TEST(Cli, DestinationKilledMidStream) {
  LongTransfer t;
  ASSERT_TRUE(t.WaitUntilStreaming()) << t.recv->output() << t.send->output();
  t.recv->Signal(SIGKILL);
  int rc = t.send->Wait(60s);
  EXPECT_EQ(rc, 1) << t.send->output();
  EXPECT_NE(t.send->output().find("peer closed or reset"), std::string::npos) << t.send->output();
  EXPECT_FALSE(t.d.Has("out.img"));  // (a SIGKILLed destination may leave its .partial file)
}

TEST(Cli, SourceKilledMidStream) {
  LongTransfer t;
  ASSERT_TRUE(t.WaitUntilStreaming()) << t.recv->output() << t.send->output();
  t.send->Signal(SIGKILL);
  int rc = t.recv->Wait(60s);
  EXPECT_EQ(rc, 1) << t.recv->output();
  EXPECT_NE(t.recv->output().find("source"), std::string::npos) << t.recv->output();
  EXPECT_TRUE(t.d.Entries().empty()) << "left: " << (t.d.Entries().empty() ? "" : t.d.Entries()[0]);
}

TEST(Cli, DestinationSigtermRemovesTemporaryFile) {
  LongTransfer t;
  ASSERT_TRUE(t.WaitUntilStreaming()) << t.recv->output() << t.send->output();
  t.recv->Signal(SIGTERM);
  EXPECT_EQ(t.recv->Wait(30s), 128 + SIGTERM);
  EXPECT_NE(t.send->Wait(60s), 0);
  EXPECT_TRUE(t.d.Entries().empty()) << "left: " << (t.d.Entries().empty() ? "" : t.d.Entries()[0]);
}

// Two hosts: namespaces A and B, veth pair, 10.77.x.1 -> 10.77.x.2, and a
// token bucket (tc tbf) on A's side so the sender really meets back-pressure.
class TwoHosts : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string failed = net_.Create("", 77);
    ASSERT_EQ(failed, "") << "setup failed (needs root and iproute2)";
    a_ = net_.a;
    b_ = net_.b;
    ip_a_ = net_.ip_a;
    ip_b_ = net_.ip_b;
    const std::string tbf =
        "ip netns exec " + a_ + " tc qdisc add dev " + net_.veth_a + " root tbf rate 400mbit burst 256kb latency 50ms";
    ASSERT_TRUE(testing::TwoNamespaces::Shell(tbf)) << "setup failed: " << tbf;
  }
  void TearDown() override { net_.Destroy(); }
  testing::TwoNamespaces net_;
  std::string a_, b_, ip_a_, ip_b_;
};

double JsonNumber(const std::string& json, const std::string& key) {
  const nlohmann::json j = nlohmann::json::parse(json, nullptr, false);
  return j.is_object() && j.contains(key) ? j.at(key).get<double>() : -1;
}

TEST_F(TwoHosts, TlsMigrationAcrossRateLimitedVeth) {
  Dir d;
  GenerateCerts(d.path + "/pki", "dst.example", ip_b_);
  Subprocess recv(testing::WithBackend({"ip", "netns", "exec", b_, Cli(), "recv", "--listen", ip_b_ + ":7443",
                                        "--output", d.path + "/out.img", "--tls-creds", d.path + "/pki",
                                        "--timeout", "30"}));
  ASSERT_TRUE(recv.WaitFor("listening on", 10s)) << recv.output();
  Subprocess send(testing::WithBackend({"ip", "netns", "exec", a_, Cli(), "send", "--connect", ip_b_ + ":7443",
                                        "--size", "48M", "--tls-creds", d.path + "/pki", "--json",
                                        d.path + "/send.json", "--quiet"}));
  ASSERT_EQ(send.Wait(120s), 0) << send.output();
  ASSERT_EQ(recv.Wait(30s), 0) << recv.output();
  std::ifstream js(d.path + "/send.json");
  std::string json((std::istreambuf_iterator<char>(js)), {});
  const double secs = JsonNumber(json, "seconds"), bytes = JsonNumber(json, "data_bytes");
  ASSERT_GT(secs, 0) << json;
  const double mbit = bytes * 8 / secs / 1e6;
  std::printf("  across veth with tbf 400mbit: %.0f Mbit/s of page data in %.2f s\n", mbit, secs);
  // The token bucket bounds the rate: the sender met back-pressure.
  EXPECT_LT(mbit, 400.0);
  EXPECT_GT(mbit, 50.0);
  // Integrity: the digest the destination verified is in its own output.
  const std::string digest = nlohmann::json::parse(json).at("image_digest");
  ASSERT_EQ(digest.size(), 32u);  // XXH3-128, the default
  EXPECT_NE(recv.output().find(digest), std::string::npos);
  EXPECT_TRUE(d.Has("out.img"));
}

}  // namespace
}  // namespace ktm

#include "tls/openssl/openssl_util.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <pthread.h>

#include <cerrno>
#include <ctime>

namespace ktm {

namespace {
sigset_t PipeSet() {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGPIPE);
  return s;
}
bool PipePending() {
  sigset_t s;
  sigemptyset(&s);
  return sigpending(&s) == 0 && sigismember(&s, SIGPIPE) == 1;
}

// Reads a memory BIO's contents out and frees it.
std::string Drain(BIO* b) {
  char* data = nullptr;
  const long n = BIO_get_mem_data(b, &data);
  std::string out(data && n > 0 ? data : "", n > 0 ? static_cast<size_t>(n) : 0);
  BIO_free(b);
  return out;
}
}  // namespace

SigpipeGuard::SigpipeGuard(bool needed) : active_(needed) {
  if (!active_) return;
  const int saved = errno;
  was_pending_ = PipePending();
  const sigset_t pipe = PipeSet();
  pthread_sigmask(SIG_BLOCK, &pipe, &old_);
  errno = saved;
}

SigpipeGuard::~SigpipeGuard() {
  if (!active_) return;
  const int saved = errno;
  if (!was_pending_ && PipePending()) {
    // Ours: take it off the pending set, without waiting.
    const sigset_t pipe = PipeSet();
    const timespec zero{};
    while (sigtimedwait(&pipe, nullptr, &zero) < 0 && errno == EINTR) {
    }
  }
  pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  errno = saved;
}

bool SigpipeIgnored() {
  struct sigaction sa {};
  return sigaction(SIGPIPE, nullptr, &sa) == 0 && sa.sa_handler == SIG_IGN;
}

int DrainOpensslErrors(int lib, std::string* text) {
  int reason = 0;
  char buf[256];
  while (const unsigned long e = ERR_get_error()) {
    if (reason == 0 && ERR_GET_LIB(e) == lib) reason = ERR_GET_REASON(e);
    if (text) {
      ERR_error_string_n(e, buf, sizeof(buf));
      *text += (text->empty() ? "" : "; ") + std::string(buf);
    }
  }
  return reason;
}

std::string SubjectRfc4514(X509* crt) {
  X509_NAME* name = crt ? X509_get_subject_name(crt) : nullptr;
  BIO* b = BIO_new(BIO_s_mem());
  if (!name || !b) {
    BIO_free(b);
    return "";
  }
  X509_NAME_print_ex(b, name, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
  return Drain(b);
}

std::string CommonName(X509* crt) {
  X509_NAME* name = crt ? X509_get_subject_name(crt) : nullptr;
  const int i = name ? X509_NAME_get_index_by_NID(name, NID_commonName, -1) : -1;
  if (i < 0) return "";
  unsigned char* utf8 = nullptr;
  const int n = ASN1_STRING_to_UTF8(&utf8, X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)));
  std::string out = n > 0 ? std::string(reinterpret_cast<char*>(utf8), static_cast<size_t>(n)) : "";
  OPENSSL_free(utf8);
  return out;
}

std::string SubjectAltNames(X509* crt) {
  std::string out;
  auto* names = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(crt, NID_subject_alt_name, nullptr, nullptr));
  for (int i = 0; names && i < sk_GENERAL_NAME_num(names); ++i) {
    const GENERAL_NAME* g = sk_GENERAL_NAME_value(names, i);
    std::string item;
    if (g->type == GEN_DNS) {
      item = "DNS:" + std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(g->d.dNSName)),
                                  static_cast<size_t>(ASN1_STRING_length(g->d.dNSName)));
    } else if (g->type == GEN_IPADD) {
      const int len = ASN1_STRING_length(g->d.iPAddress);
      char ip[INET6_ADDRSTRLEN] = {};
      if (len != 4 && len != 16) continue;
      inet_ntop(len == 4 ? AF_INET : AF_INET6, ASN1_STRING_get0_data(g->d.iPAddress), ip, sizeof(ip));
      item = std::string("IP:") + ip;
    } else {
      continue;
    }
    out += (out.empty() ? "" : ", ") + item;
  }
  GENERAL_NAMES_free(names);
  return out.empty() ? "no DNS/IP subject alternative names" : out;
}

std::string NotAfter(X509* crt) {
  tm t{};
  if (!crt || ASN1_TIME_to_tm(X509_get0_notAfter(crt), &t) != 1) return "?";
  char buf[64];
  strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &t);
  return buf;
}

}  // namespace ktm

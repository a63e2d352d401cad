// The C API (include/ktls_migrate.h) over the C++ library. Every entry point
// catches everything: a C caller never sees a C++ exception; it gets a
// status and, on its own thread, the sentence of the failure.
#include "ktls_migrate.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "base/periodic.h"
#include "base/version.h"
#include "capi/channel_wrap.h"
#include "certs/credentials.h"
#include "certs/generate.h"
#include "channel/address.h"
#include "tls/handshake.h"
#include "transport/endpoint.h"
#include "transport/migration.h"
#include "transport/page_source.h"
#include "transport/report_json.h"


using namespace ktm;

namespace {

thread_local std::string g_last_error;
thread_local ktm_status g_last_status = KTM_OK;

ktm_status StatusOf(ErrorKind k) {
  switch (k) {
    case ErrorKind::kUsage: return KTM_E_USAGE;
    case ErrorKind::kPeer: return KTM_E_PEER;
    case ErrorKind::kTimeout: return KTM_E_TIMEOUT;
    case ErrorKind::kSecurity: return KTM_E_SECURITY;
    case ErrorKind::kIntegrity: return KTM_E_INTEGRITY;
    case ErrorKind::kLocalIo: return KTM_E_LOCAL_IO;
    case ErrorKind::kInternal: return KTM_E_INTERNAL;
  }
  return KTM_E_INTERNAL;
}

ktm_status Fail(ktm_status s, std::string msg) {
  g_last_error = std::move(msg);
  g_last_status = s;
  return s;
}

// Runs `fn`, turning any exception into a status and the thread's message.
template <typename F>
ktm_status Guard(F&& fn) {
  try {
    fn();
    return KTM_OK;
  } catch (const Error& e) {
    return Fail(StatusOf(e.kind()), e.what());
  } catch (const std::bad_alloc&) {
    return Fail(KTM_E_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return Fail(KTM_E_INTERNAL, e.what());
  } catch (...) {
    return Fail(KTM_E_INTERNAL, "unknown failure");
  }
}

// Guard for functions that return a handle: NULL on failure.
template <typename T, typename F>
T* GuardNew(F&& fn) {
  T* out = nullptr;
  if (Guard([&] { out = fn(); }) != KTM_OK) return nullptr;
  return out;
}

void NeedArg(const void* p, const char* what) {
  if (!p) throw Error(ErrorKind::kUsage, EINVAL, std::string(what) + " must not be NULL");
}

// The integer a C caller passed for an enum parameter. A C enum may carry
// any int; reading it as the C++ enum type would be undefined for values
// outside the enumerators, so the bytes are copied, never loaded as the enum.
template <typename E>
int RawEnum(const E& e) {
  static_assert(sizeof(E) == sizeof(int));
  int raw;
  std::memcpy(&raw, &e, sizeof(raw));
  return raw;
}

PolicyMode PolicyOf(int p) {
  switch (p) {
    case KTM_OFF: return PolicyMode::kOff;
    case KTM_AUTO: return PolicyMode::kAuto;
    case KTM_REQUIRE: return PolicyMode::kRequire;
  }
  throw Error(ErrorKind::kUsage, EINVAL, "policy must be KTM_OFF, KTM_AUTO or KTM_REQUIRE, not " + std::to_string(p));
}

TlsBackend BackendOf(int b) {
  if (b == KTM_TLS_BACKEND_GNUTLS) return TlsBackend::kGnutls;
  if (b == KTM_TLS_BACKEND_OPENSSL) return TlsBackend::kOpenssl;
  throw Error(ErrorKind::kUsage, EINVAL,
              "TLS backend must be KTM_TLS_BACKEND_GNUTLS or KTM_TLS_BACKEND_OPENSSL, not " + std::to_string(b));
}

TlsRole RoleOf(int r) {
  if (r == KTM_CLIENT) return TlsRole::kClient;
  if (r == KTM_SERVER) return TlsRole::kServer;
  throw Error(ErrorKind::kUsage, EINVAL, "role must be KTM_CLIENT or KTM_SERVER, not " + std::to_string(r));
}

}  // namespace

struct ktm_creds {
  std::shared_ptr<Credentials> creds;
};

struct ktm_config {
  bool tls = true;
  std::shared_ptr<Credentials> creds;
  std::string hostname;
  TlsBackend backend = TlsBackend::kGnutls;
  TlsCryptoPolicy policy;  // library_override: ktm_config_set_priority
  std::vector<std::string> allowed_clients;
  PolicyMode ktls = PolicyMode::kAuto, zero_copy = PolicyMode::kAuto;
  std::chrono::milliseconds io_timeout{30000}, connect_timeout{10000};
  int channels = 4;
  DigestAlgorithm digest = DigestAlgorithm::kXxh3;
  std::chrono::milliseconds max_downtime{0};
  uint32_t max_iterations = 30;
  uint64_t rekey_after = 0;  // TlsOptions::rekey_after_bytes

  SecurityConfig Security(TlsRole role, const std::string& address) const {
    SecurityConfig s;
    s.tls = tls;
    s.ktls = ktls;
    s.zero_copy = zero_copy;
    if (!tls) return s;
    if (!creds) {
      throw Error(ErrorKind::kUsage, EINVAL, "TLS needs credentials: ktm_config_set_creds (or ktm_config_set_tls(c, 0))");
    }
    s.tls_options.backend = backend;
    s.tls_options.role = role;
    s.tls_options.creds = creds;
    s.tls_options.policy = policy;
    // A bad override is the caller's usage error now, not a refusal of the
    // peer at the handshake.
    CheckTlsPolicy(backend, policy);
    if (role == TlsRole::kServer) s.tls_options.allowed_clients = allowed_clients;
    s.tls_options.rekey_after_bytes = rekey_after;
    if (role == TlsRole::kClient) {
      s.tls_options.peer_name = hostname;
      if (s.tls_options.peer_name.empty()) {
        // The connect address's host, as openssl s_client and QEMU do.
        const size_t colon = address.rfind(':');
        std::string host = colon == std::string::npos ? address : address.substr(0, colon);
        if (host.size() > 1 && host.front() == '[') host = host.substr(1, host.size() - 2);
        s.tls_options.peer_name = host;
      }
    }
    return s;
  }
};

struct ktm_listener {
  Listener l;
  std::string address;
};

struct ktm_channel {
  OpenedChannel oc;
};

struct ktm_page_list {
  std::vector<uint64_t>* pages;
  uint64_t page_count;
};

struct ktm_report {
  MigrationReport r;
  std::string json;
};

extern "C" {

const char* ktm_last_error(void) { return g_last_error.c_str(); }
ktm_status ktm_last_status(void) { return g_last_status; }

const char* ktm_status_name(ktm_status status) {
  switch (RawEnum(status)) {
    case KTM_OK: return "ok";
    case KTM_E_USAGE: return "usage";
    case KTM_E_PEER: return "peer";
    case KTM_E_TIMEOUT: return "timeout";
    case KTM_E_SECURITY: return "security";
    case KTM_E_INTEGRITY: return "integrity";
    case KTM_E_LOCAL_IO: return "local-io";
    case KTM_E_INTERNAL: return "internal";
  }
  return "unknown";
}

const char* ktm_version(void) { return KTM_VERSION_STRING; }

// --- credentials -----------------------------------------------------------

ktm_creds* ktm_creds_load_dir(const char* dir, ktm_role role) {
  return GuardNew<ktm_creds>([&] {
    NeedArg(dir, "dir");
    const TlsRole r = RoleOf(RawEnum(role));
    return new ktm_creds{Credentials::Load(CredsDirFiles(dir, r), r)};
  });
}

ktm_creds* ktm_creds_load_files(const char* ca, const char* cert, const char* key, const char* crl, ktm_role role) {
  return GuardNew<ktm_creds>([&] {
    NeedArg(ca, "ca");
    CredentialFiles f;
    f.ca = ca;
    f.cert = cert ? cert : "";
    f.key = key ? key : "";
    f.crl = crl ? crl : "";
    return new ktm_creds{Credentials::Load(f, RoleOf(RawEnum(role)))};
  });
}

void ktm_creds_free(ktm_creds* c) { delete c; }

ktm_status ktm_creds_generate(const char* dir, const char* hostname, const char* ip) {
  return Guard([&] {
    NeedArg(dir, "dir");
    NeedArg(hostname, "hostname");
    GenerateOptions g;
    g.out_dir = dir;
    g.hostname = hostname;
    if (ip) g.ips = {ip};
    GenerateCredsDir(g);
  });
}

// --- configuration ------------------------------------------------------------

ktm_config* ktm_config_new(void) {
  return GuardNew<ktm_config>([] { return new ktm_config(); });
}
void ktm_config_free(ktm_config* c) { delete c; }

#define KTM_SETTER(name, type, body)          \
  ktm_status name(ktm_config* c, type v) {    \
    return Guard([&] {                        \
      NeedArg(c, "config");                   \
      body;                                   \
    });                                       \
  }

KTM_SETTER(ktm_config_set_tls, int, c->tls = v != 0)
KTM_SETTER(ktm_config_set_ktls, ktm_policy, c->ktls = PolicyOf(RawEnum(v)))
KTM_SETTER(ktm_config_set_zero_copy, ktm_policy, c->zero_copy = PolicyOf(RawEnum(v)))
KTM_SETTER(ktm_config_set_io_timeout_ms, int64_t, c->io_timeout = std::chrono::milliseconds(v))
KTM_SETTER(ktm_config_set_max_downtime_ms, int64_t, c->max_downtime = std::chrono::milliseconds(v < 0 ? 0 : v))
KTM_SETTER(ktm_config_set_rekey_after, uint64_t, c->rekey_after = v)
KTM_SETTER(ktm_config_set_max_iterations, uint32_t, c->max_iterations = v ? v : 1)
KTM_SETTER(ktm_config_set_connect_timeout_ms, int64_t,
           c->connect_timeout = std::chrono::milliseconds(v < 0 ? 86400000 : v))
KTM_SETTER(ktm_config_set_channels, int, {
  if (v < 1 || v > 64) throw Error(ErrorKind::kUsage, EINVAL, "channels must be 1..64, not " + std::to_string(v));
  c->channels = v;
})
KTM_SETTER(ktm_config_set_digest, ktm_digest, {
  const int d = RawEnum(v);
  if (d != KTM_DIGEST_XXH3 && d != KTM_DIGEST_SHA256) {
    throw Error(ErrorKind::kUsage, EINVAL, "digest must be KTM_DIGEST_XXH3 or KTM_DIGEST_SHA256");
  }
  c->digest = d == KTM_DIGEST_SHA256 ? DigestAlgorithm::kSha256 : DigestAlgorithm::kXxh3;
})
KTM_SETTER(ktm_config_set_creds, const ktm_creds*, {
  NeedArg(v, "creds");
  c->creds = v->creds;
})
KTM_SETTER(ktm_config_set_hostname, const char*, c->hostname = v ? v : "")
KTM_SETTER(ktm_config_set_priority, const char*, c->policy.library_override = v ? v : "")
KTM_SETTER(ktm_config_set_tls_backend, ktm_tls_backend, {
  const TlsBackend b = BackendOf(RawEnum(v));
  // A backend this build cannot run is refused here, where the caller
  // chose it, with the library's sentence.
  CheckTlsPolicy(b, TlsCryptoPolicy{});
  c->backend = b;
})
KTM_SETTER(ktm_config_set_tls_versions, const char*, {
  NeedArg(v, "versions");
  c->policy.versions = ParseTlsVersions(v, "TLS versions");
})
KTM_SETTER(ktm_config_set_tls_ciphers, const char*, {
  NeedArg(v, "ciphers");
  c->policy.ciphers = ParseTlsCiphers(v, "TLS ciphers");
})
KTM_SETTER(ktm_config_add_tls_allow_client, const char*, {
  NeedArg(v, "pattern");
  if (!*v) throw Error(ErrorKind::kUsage, EINVAL, "an allow-list pattern must not be empty");
  c->allowed_clients.emplace_back(v);
})

#undef KTM_SETTER

// --- listeners and channels -------------------------------------------------------

ktm_listener* ktm_listen(const char* address) {
  return GuardNew<ktm_listener>([&] {
    NeedArg(address, "address");
    auto* l = new ktm_listener{Listener::Listen(address), ""};
    l->address = l->l.address();
    return l;
  });
}

ktm_tls_backend ktm_config_get_tls_backend(const ktm_config* c) {
  return c && c->backend == TlsBackend::kOpenssl ? KTM_TLS_BACKEND_OPENSSL : KTM_TLS_BACKEND_GNUTLS;
}

const char* ktm_listener_address(const ktm_listener* l) { return l ? l->address.c_str() : ""; }
void ktm_listener_free(ktm_listener* l) { delete l; }

ktm_channel* ktm_channel_connect(const char* address, const ktm_config* c) {
  return GuardNew<ktm_channel>([&] {
    NeedArg(address, "address");
    NeedArg(c, "config");
    OpenedChannel oc = OpenClientChannel(address, c->Security(TlsRole::kClient, address), c->connect_timeout);
    oc.channel->set_io_timeout(c->io_timeout);
    return new ktm_channel{std::move(oc)};
  });
}

ktm_channel* ktm_channel_accept(ktm_listener* l, const ktm_config* c, int64_t timeout_ms) {
  return GuardNew<ktm_channel>([&] {
    NeedArg(l, "listener");
    NeedArg(c, "config");
    UniqueFd fd = l->l.AcceptFd(std::chrono::milliseconds(timeout_ms));
    OpenedChannel oc = OpenServerChannel(std::move(fd), c->Security(TlsRole::kServer, ""));
    oc.channel->set_io_timeout(c->io_timeout);
    return new ktm_channel{std::move(oc)};
  });
}

void ktm_channel_free(ktm_channel* ch) {
  if (!ch) return;
  ch->oc.channel->close();  // never throws (channel.h)
  delete ch;
}

const char* ktm_channel_path(const ktm_channel* ch) { return ch ? ch->oc.path.c_str() : ""; }
int ktm_channel_is_ktls(const ktm_channel* ch) { return ch && ch->oc.ktls; }
int ktm_channel_is_zero_copy(const ktm_channel* ch) { return ch && ch->oc.zero_copy; }

ktm_status ktm_channel_write(ktm_channel* ch, const void* buf, size_t len, unsigned flags, uint64_t* first_id,
                             uint64_t* last_id) {
  return Guard([&] {
    NeedArg(ch, "channel");
    if (len) NeedArg(buf, "buf");
    const ZeroCopyIds ids = ch->oc.channel->write_all(buf, len, (flags & KTM_WRITE_ZERO_COPY) ? kWriteZeroCopy : 0);
    // The C API names ranges inclusively; an empty range is first > last.
    if (first_id) *first_id = ids.empty() ? 1 : ids.first;
    if (last_id) *last_id = ids.empty() ? 0 : ids.end - 1;
  });
}

int ktm_channel_is_released(ktm_channel* ch, uint64_t id) {
  int released = 0;
  const ktm_status st = Guard([&] {
    NeedArg(ch, "channel");
    ch->oc.channel->try_flush();
    // The contract covers every write up to and including `id`, not `id`
    // alone: completions arrive out of order (io_uring notifies a request
    // that pinned nothing at once, while an earlier one still holds pages).
    // [0, id] is released exactly when the tracker's low-water mark is past
    // `id`. UINT64_MAX was never handed out (and id + 1 would wrap).
    released = id != UINT64_MAX && ch->oc.channel->is_released(ZeroCopyIds{0, id + 1}) ? 1 : 0;
  });
  return st == KTM_OK ? released : 0;
}

ktm_status ktm_channel_set_release_callback(ktm_channel* ch, ktm_release_fn fn, void* user) {
  return Guard([&] {
    NeedArg(ch, "channel");
    if (!fn) {
      ch->oc.channel->set_release_callback(nullptr);
      return;
    }
    ch->oc.channel->set_release_callback([fn, user](uint64_t first, uint64_t last, bool) { fn(user, first, last); });
  });
}

ktm_status ktm_channel_flush(ktm_channel* ch) {
  return Guard([&] {
    NeedArg(ch, "channel");
    ch->oc.channel->flush();
  });
}

ktm_status ktm_channel_read(ktm_channel* ch, void* buf, size_t len, size_t* got) {
  return Guard([&] {
    NeedArg(ch, "channel");
    NeedArg(got, "got");
    *got = 0;
    if (!len) return;
    NeedArg(buf, "buf");
    const iovec iov{buf, len};
    *got = ch->oc.channel->readv(std::span<const iovec>(&iov, 1)).bytes;
  });
}

ktm_status ktm_channel_read_all(ktm_channel* ch, void* buf, size_t len) {
  return Guard([&] {
    NeedArg(ch, "channel");
    if (len) NeedArg(buf, "buf");
    if (!ch->oc.channel->read_all(buf, len)) {
      throw Error(ErrorKind::kPeer, EPIPE, "the peer closed the stream before " + std::to_string(len) + " bytes arrived");
    }
  });
}

ktm_status ktm_channel_shutdown(ktm_channel* ch, ktm_shutdown how) {
  return Guard([&] {
    NeedArg(ch, "channel");
    const int h = RawEnum(how);
    if (h != KTM_SHUT_WRITE && h != KTM_SHUT_READ && h != KTM_SHUT_BOTH) {
      throw Error(ErrorKind::kUsage, EINVAL, "how must be KTM_SHUT_WRITE, KTM_SHUT_READ or KTM_SHUT_BOTH");
    }
    ch->oc.channel->shutdown(h == KTM_SHUT_WRITE ? ShutdownHow::kWrite
                             : h == KTM_SHUT_READ ? ShutdownHow::kRead
                                                  : ShutdownHow::kBoth);
  });
}

// --- migration ------------------------------------------------------------------

ktm_status ktm_page_list_append(ktm_page_list* l, const uint64_t* pages, size_t n) {
  return Guard([&] {
    NeedArg(l, "list");
    if (n) NeedArg(pages, "pages");
    for (size_t i = 0; i < n; ++i) {
      if (pages[i] >= l->page_count) {
        throw Error(ErrorKind::kUsage, EINVAL,
                    "dirty page " + std::to_string(pages[i]) + " is outside the image (" +
                        std::to_string(l->page_count) + " pages)");
      }
    }
    l->pages->insert(l->pages->end(), pages, pages + n);
  });
}

}  // extern "C"

namespace {

// The caller's memory and callbacks as a PageSource.
class CallerSource : public PageSource {
 public:
  CallerSource(const void* data, uint64_t size, uint32_t page_size, const ktm_source_ops& ops, void* user)
      : data_(static_cast<const uint8_t*>(data)), size_(size), page_size_(page_size), ops_(ops), user_(user) {}
  const uint8_t* data() const override { return data_; }
  uint64_t size() const override { return size_; }
  uint32_t page_size() const override { return page_size_; }
  bool live() const override { return ops_.live != 0; }
  void CollectDirty(std::vector<uint64_t>& pages) override {
    ktm_page_list l{&pages, page_count()};
    const size_t before = pages.size();
    ops_.collect_dirty(user_, &l);
    // Ranges from several appends: keep them ascending and unique.
    std::sort(pages.begin() + static_cast<std::ptrdiff_t>(before), pages.end());
    pages.erase(std::unique(pages.begin() + static_cast<std::ptrdiff_t>(before), pages.end()), pages.end());
  }
  void Freeze() override {
    if (ops_.freeze) ops_.freeze(user_);
  }

 private:
  const uint8_t* data_;
  uint64_t size_;
  uint32_t page_size_;
  ktm_source_ops ops_;
  void* user_;
};

// Runs `run(progress)` (a migration) while a library thread calls the
// caller's progress callback about every 100 ms, then hands out the report.
template <typename Run>
void RunWithProgress(ktm_progress_fn fn, void* user, ktm_report** report, Run run) {
  Progress p;
  MigrationReport r;
  {
    std::optional<PeriodicThread> poll;
    if (fn) {
      poll.emplace(std::chrono::milliseconds(100),
                   [&p, fn, user] { fn(user, p.bytes.load(), p.total_bytes.load(), p.iteration.load()); });
    }
    r = run(&p);
  }
  if (report) {
    auto* out = new ktm_report{std::move(r), ""};
    out->json = MigrationReportJson(out->r).dump();
    *report = out;
  }
}

}  // namespace

extern "C" {

ktm_status ktm_migrate_source(const char* address, const ktm_config* c, const void* data, uint64_t size,
                              uint32_t page_size, const ktm_source_ops* ops, void* user, ktm_progress_fn progress,
                              void* progress_user, ktm_report** report) {
  if (report) *report = nullptr;
  return Guard([&] {
    NeedArg(address, "address");
    NeedArg(c, "config");
    NeedArg(data, "data");
    NeedArg(ops, "ops");
    if (!ops->collect_dirty) throw Error(ErrorKind::kUsage, EINVAL, "ops->collect_dirty must not be NULL");
    if (size == 0) throw Error(ErrorKind::kUsage, EINVAL, "the image is empty");
    if (page_size < 4096 || (page_size & (page_size - 1)) || (reinterpret_cast<uintptr_t>(data) % page_size)) {
      throw Error(ErrorKind::kUsage, EINVAL, "page_size must be a power of two >= 4096 and data aligned to it");
    }
    CallerSource src(data, size, page_size, *ops, user);
    SourceOptions o;
    o.address = address;
    o.channels = c->channels;
    o.security = c->Security(TlsRole::kClient, address);
    o.connect_timeout = c->connect_timeout;
    o.io_timeout = c->io_timeout;
    o.max_iterations = c->max_iterations;
    o.max_downtime = c->max_downtime;
    o.digest = c->digest;
    RunWithProgress(progress, progress_user, report, [&](Progress* p) {
      o.progress = p;
      return RunSource(src, o);
    });
  });
}

ktm_status ktm_migrate_destination(ktm_listener* l, const ktm_config* c, const char* output_file, void* buffer,
                                   uint64_t buffer_size, int64_t accept_timeout_ms, ktm_progress_fn progress,
                                   void* progress_user, ktm_report** report) {
  if (report) *report = nullptr;
  return Guard([&] {
    NeedArg(l, "listener");
    NeedArg(c, "config");
    if (!output_file && !buffer) throw Error(ErrorKind::kUsage, EINVAL, "give an output file or a buffer");
    DestinationOptions o;
    o.output = output_file ? output_file : "";
    if (!output_file) {
      o.memory = static_cast<uint8_t*>(buffer);
      o.memory_size = buffer_size;
    }
    o.security = c->Security(TlsRole::kServer, "");
    o.accept_timeout = std::chrono::milliseconds(accept_timeout_ms < 0 ? 86400000 : accept_timeout_ms);
    o.io_timeout = c->io_timeout;
    RunWithProgress(progress, progress_user, report, [&](Progress* p) {
      o.progress = p;
      return RunDestination(l->l, o);
    });
  });
}

uint64_t ktm_report_image_bytes(const ktm_report* r) { return r ? r->r.image_size : 0; }
uint64_t ktm_report_data_bytes(const ktm_report* r) { return r ? r->r.data_bytes : 0; }
uint64_t ktm_report_pages(const ktm_report* r) { return r ? r->r.pages : 0; }
uint32_t ktm_report_iterations(const ktm_report* r) { return r ? r->r.iterations : 0; }
double ktm_report_seconds(const ktm_report* r) { return r ? r->r.seconds : 0; }
double ktm_report_downtime_seconds(const ktm_report* r) { return r ? r->r.downtime.total_seconds : 0; }
const char* ktm_report_digest(const ktm_report* r) { return r ? r->r.digest.c_str() : ""; }
const char* ktm_report_digest_algorithm(const ktm_report* r) {
  return r ? (r->r.digest_algorithm == DigestAlgorithm::kSha256 ? "sha256" : "xxh3") : "";
}
const char* ktm_report_session(const ktm_report* r) { return r ? r->r.session.c_str() : ""; }
size_t ktm_report_channel_count(const ktm_report* r) { return r ? r->r.channels.size() : 0; }
const char* ktm_report_channel_path(const ktm_report* r, size_t i) {
  return r && i < r->r.channels.size() ? r->r.channels[i].path.c_str() : nullptr;
}
int ktm_report_channel_ktls(const ktm_report* r, size_t i) {
  return r && i < r->r.channels.size() && r->r.channels[i].ktls;
}
const char* ktm_report_json(const ktm_report* r) { return r ? r->json.c_str() : "{}"; }
void ktm_report_free(ktm_report* r) { delete r; }

}  // extern "C"

namespace ktm {
ktm_channel* WrapChannelForCApi(std::unique_ptr<Channel> ch, bool zero_copy) {
  OpenedChannel oc;
  oc.channel = std::move(ch);
  oc.zero_copy = zero_copy;
  return new ktm_channel{std::move(oc)};
}
}  // namespace ktm

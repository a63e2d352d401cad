/*
 * migrate_self.c - a process migrates a region of its own memory to a peer
 * process while it keeps writing to it, through libktlsmigrate's C API.
 *
 * The parent owns a 64 MiB region and a writer thread that keeps changing
 * random pages (write first, then mark the page dirty). A child process
 * receives into a buffer of its own. The parent runs the source: precopy
 * iterations send the dirty pages until few are left, then freeze() stops
 * the writer and the final pass runs. Afterwards both hash their memory
 * (FNV-1a, independent of the library's digest) and must agree.
 *
 * Build outside any build system:
 *   cc -std=c99 -O2 migrate_self.c $(pkg-config --cflags --libs ktls-migrate) -lpthread -o migrate_self
 * Run:
 *   ./migrate_self                 TLS with certificates generated in a temp dir
 *   ./migrate_self --creds DIR     TLS with a creds dir (server+client certs for localhost)
 *   ./migrate_self --no-tls        plaintext (memory crosses the wire readable)
 *   ./migrate_self --size-mib N    region size (default 64)
 * Exit: 0 verified, 1 migration failed, 2 usage, 3 memory differs.
 */
#define _GNU_SOURCE
#include <ktls_migrate.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

enum { kPage = 4096 };

struct region {
  uint8_t* mem;
  uint64_t size, pages;
  _Atomic uint64_t* dirty; /* one bit per page */
  atomic_int stop;
  pthread_t writer;
  atomic_uint_fast64_t writes;
};

static uint64_t fnv1a(const uint8_t* p, uint64_t n) {
  uint64_t h = 1469598103934665603ull;
  for (uint64_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

static uint64_t xorshift(uint64_t* s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

/* The guest: rewrites one random page at a time, then marks it dirty. */
static void* writer_main(void* arg) {
  struct region* r = arg;
  uint64_t seed = 88172645463325252ull;
  while (!atomic_load(&r->stop)) {
    const uint64_t page = xorshift(&seed) % r->pages;
    const uint64_t v = xorshift(&seed);
    for (int i = 0; i < kPage / 8; i += 64) memcpy(r->mem + page * kPage + (size_t)i * 8, &v, 8);
    atomic_fetch_or(&r->dirty[page / 64], 1ull << (page % 64));
    atomic_fetch_add(&r->writes, 1);
    if (atomic_load(&r->writes) % 64 == 0) usleep(1000); /* ~256 KiB of changes per ms at most */
  }
  return NULL;
}

static int first_collect = 1;

static void collect_dirty(void* user, ktm_page_list* out) {
  struct region* r = user;
  uint64_t batch[512];
  size_t n = 0;
  for (uint64_t w = 0; w < (r->pages + 63) / 64; ++w) {
    uint64_t bits = atomic_exchange(&r->dirty[w], 0);
    if (first_collect) bits = ~0ull; /* the first call reports every page */
    while (bits) {
      const uint64_t page = w * 64 + (uint64_t)__builtin_ctzll(bits);
      bits &= bits - 1;
      if (page >= r->pages) break;
      batch[n++] = page;
      if (n == 512) {
        ktm_page_list_append(out, batch, n);
        n = 0;
      }
    }
  }
  if (n) ktm_page_list_append(out, batch, n);
  first_collect = 0;
}

static void freeze(void* user) {
  struct region* r = user;
  atomic_store(&r->stop, 1);
  pthread_join(r->writer, NULL);
}

static void progress(void* user, uint64_t bytes, uint64_t total, uint32_t iteration) {
  (void)user;
  fprintf(stderr, "\r  source: %" PRIu64 " of %" PRIu64 " MiB sent, iteration %u   ", bytes >> 20, total >> 20, iteration);
}

static int fail(const char* what, ktm_status s) {
  fprintf(stderr, "migrate_self: %s: %s (%s)\n", what, ktm_last_error(), ktm_status_name(s));
  return 1;
}

/* The child: receive into its own buffer, send back the hash. */
static int run_destination(ktm_listener* l, ktm_config* cfg, uint64_t size, int out_fd) {
  uint8_t* buf = aligned_alloc(kPage, size);
  if (!buf) return 1;
  ktm_report* rep = NULL;
  const ktm_status s = ktm_migrate_destination(l, cfg, NULL, buf, size, 60000, NULL, NULL, &rep);
  if (s != KTM_OK) return fail("destination", s);
  char line[256];
  const int n = snprintf(line, sizeof(line), "%016" PRIx64 " %s\n", fnv1a(buf, size), ktm_report_digest(rep));
  if (write(out_fd, line, (size_t)n) != n) return 1;
  ktm_report_free(rep);
  free(buf);
  return 0;
}

int main(int argc, char** argv) {
  int tls = 1;
  const char* creds_dir = NULL;
  uint64_t mib = 64;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--no-tls")) tls = 0;
    else if (!strcmp(argv[i], "--creds") && i + 1 < argc) creds_dir = argv[++i];
    else if (!strcmp(argv[i], "--size-mib") && i + 1 < argc) mib = strtoull(argv[++i], NULL, 10);
    else {
      fprintf(stderr, "usage: migrate_self [--no-tls] [--creds DIR] [--size-mib N]\n");
      return 2;
    }
  }
  if (mib == 0) return 2;
  printf("migrate_self: libktlsmigrate %s, %" PRIu64 " MiB region, %s\n", ktm_version(), mib,
         tls ? "TLS" : "PLAINTEXT");

  char tmp[] = "/tmp/migrate-self-XXXXXX";
  if (tls && !creds_dir) {
    if (!mkdtemp(tmp)) return 1;
    ktm_status s = ktm_creds_generate(tmp, "localhost", "127.0.0.1");
    if (s != KTM_OK) return fail("generating certificates", s);
    creds_dir = tmp;
  }

  ktm_listener* l = ktm_listen("127.0.0.1:0");
  if (!l) return fail("listen", KTM_E_LOCAL_IO);
  const uint64_t size = mib << 20;
  int fds[2];
  if (pipe(fds) != 0) return 1;

  /* Fork before any thread or image exists: the child shares neither. */
  const pid_t child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    close(fds[0]);
    ktm_config* cfg = ktm_config_new();
    if (tls) {
      ktm_creds* c = ktm_creds_load_dir(creds_dir, KTM_SERVER);
      if (!c) _exit(fail("server credentials", KTM_E_SECURITY));
      ktm_config_set_creds(cfg, c);
      ktm_creds_free(c);
    } else {
      ktm_config_set_tls(cfg, 0);
    }
    const int rc = run_destination(l, cfg, size, fds[1]);
    ktm_config_free(cfg);
    ktm_listener_free(l);
    _exit(rc);
  }
  close(fds[1]);

  struct region r = {0};
  r.size = size;
  r.pages = size / kPage;
  r.mem = aligned_alloc(kPage, size);
  r.dirty = calloc((r.pages + 63) / 64, sizeof(uint64_t));
  if (!r.mem || !r.dirty) return 1;
  uint64_t seed = 1;
  for (uint64_t i = 0; i < size; i += 8) {
    const uint64_t v = xorshift(&seed);
    memcpy(r.mem + i, &v, 8);
  }
  pthread_create(&r.writer, NULL, writer_main, &r);

  ktm_config* cfg = ktm_config_new();
  if (tls) {
    ktm_creds* c = ktm_creds_load_dir(creds_dir, KTM_CLIENT);
    if (!c) return fail("client credentials", KTM_E_SECURITY);
    ktm_config_set_creds(cfg, c);
    ktm_config_set_hostname(cfg, "localhost");
    ktm_creds_free(c);
  } else {
    ktm_config_set_tls(cfg, 0);
  }
  ktm_config_set_max_downtime_ms(cfg, 50);
  ktm_source_ops ops = {collect_dirty, freeze, 1};
  ktm_report* rep = NULL;
  const ktm_status s = ktm_migrate_source(ktm_listener_address(l), cfg, r.mem, size, kPage, &ops, &r, progress,
                                          NULL, &rep);
  fprintf(stderr, "\n");
  if (s != KTM_OK) {
    if (!atomic_load(&r.stop)) freeze(&r);
    fail("source", s);
    waitpid(child, NULL, 0);
    return 1;
  }
  char line[256] = {0};
  ssize_t got = 0, n;
  while ((n = read(fds[0], line + got, sizeof(line) - 1 - (size_t)got)) > 0) got += n;
  int st = 0;
  waitpid(child, &st, 0);
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    fprintf(stderr, "migrate_self: the destination process failed (status %d)\n", st);
    return 1;
  }
  const uint64_t mine = fnv1a(r.mem, size);
  char theirs_hex[32] = {0}, theirs_digest[80] = {0};
  sscanf(line, "%31s %79s", theirs_hex, theirs_digest);
  char mine_hex[32];
  snprintf(mine_hex, sizeof(mine_hex), "%016" PRIx64, mine);

  printf("  %u iteration(s), %" PRIu64 " MiB of page data, %.2f s, downtime %.1f ms; the writer changed %" PRIu64
         " pages meanwhile\n",
         ktm_report_iterations(rep), ktm_report_data_bytes(rep) >> 20, ktm_report_seconds(rep),
         ktm_report_downtime_seconds(rep) * 1e3, (uint64_t)atomic_load(&r.writes));
  for (size_t i = 0; i < ktm_report_channel_count(rep); ++i) {
    printf("  channel %zu: %s\n", i, ktm_report_channel_path(rep, i));
  }
  printf("  image digest (%s): source %s, destination %s\n", ktm_report_digest_algorithm(rep),
         ktm_report_digest(rep), theirs_digest);
  const int same = !strcmp(mine_hex, theirs_hex) && !strcmp(ktm_report_digest(rep), theirs_digest);
  printf("verification: %s (FNV-1a of the frozen region %s, destination's %s)\n", same ? "OK" : "FAILED", mine_hex,
         theirs_hex);
  ktm_report_free(rep);
  ktm_config_free(cfg);
  ktm_listener_free(l);
  free(r.mem);
  free((void*)r.dirty);
  if (creds_dir == tmp) {
    const char* names[] = {"ca-cert.pem", "ca-key.pem", "server-cert.pem", "server-key.pem", "client-cert.pem",
                           "client-key.pem"};
    char path[128];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); ++i) {
      snprintf(path, sizeof(path), "%s/%s", tmp, names[i]);
      unlink(path);
    }
    rmdir(tmp);
  }
  return same ? 0 : 3;
}

/*
 * ktls_migrate.h - the C API of libktlsmigrate (C99, usable from C and C++).
 *
 * Encrypted migration transport: TLS channels that move into kernel TLS
 * where the kernel can (userspace TLS otherwise, with the reason reported),
 * zero-copy writes with completion tracking, and a multi-channel migration
 * of a memory image with precopy iterations and an end-to-end digest.
 *
 * Conventions, for every function below:
 * - Handles are opaque; each has one *_free function, which accepts NULL.
 * - Functions that can fail return a ktm_status (KTM_OK = 0) or NULL. The
 *   sentence describing the failure is then available from
 *   ktm_last_error() on the same thread (thread-local, valid until the next
 *   failing call on that thread). No C++ exception ever crosses this API.
 * - Thread safety: distinct handles may be used from different threads at
 *   once. One handle is used by one thread at a time, except where a
 *   function says otherwise.
 * - Blocking: calls block until done, bounded by the timeouts in the
 *   configuration (KTM_E_TIMEOUT when one passes).
 * - Strings returned by the library belong to the handle they came from and
 *   stay valid until it is freed.
 *
 * Link: cc app.c $(pkg-config --cflags --libs ktls-migrate)
 */
#ifndef KTLS_MIGRATE_H
#define KTLS_MIGRATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KTM_API_VERSION 1

/* Failure classes; the CLI maps them to its exit codes (1 peer/timeout/
 * internal, 2 usage, 3 security, 4 integrity, 5 local-io). */
typedef enum ktm_status {
  KTM_OK = 0,
  KTM_E_USAGE = 1,     /* bad argument, contradictory options */
  KTM_E_PEER = 2,      /* the peer vanished, reset, or closed early */
  KTM_E_TIMEOUT = 3,   /* a deadline passed with no progress */
  KTM_E_SECURITY = 4,  /* certificates, handshake, a 'require' policy not met */
  KTM_E_INTEGRITY = 5, /* forged/corrupted data, digest mismatch: data refused */
  KTM_E_LOCAL_IO = 6,  /* local files and resources (missing file, disk full) */
  KTM_E_INTERNAL = 7   /* a bug or an unexpected system failure */
} ktm_status;

/* The sentence describing this thread's last failure ("" if none). */
const char* ktm_last_error(void);
/* The status of this thread's last failure (KTM_OK if none): for the
 * functions that return a handle or NULL. */
ktm_status ktm_last_status(void);
/* "usage", "peer", ... for a status. Static storage. */
const char* ktm_status_name(ktm_status s);
/* The library's version, e.g. "0.1.0". Static storage. */
const char* ktm_version(void);

typedef enum ktm_role { KTM_CLIENT = 0, KTM_SERVER = 1 } ktm_role;
typedef enum ktm_policy { KTM_OFF = 0, KTM_AUTO = 1, KTM_REQUIRE = 2 } ktm_policy;
typedef enum ktm_digest { KTM_DIGEST_XXH3 = 1, KTM_DIGEST_SHA256 = 2 } ktm_digest;
/* The TLS library that runs handshakes and userspace records. Peers may use
 * different ones. */
typedef enum ktm_tls_backend { KTM_TLS_BACKEND_GNUTLS = 1, KTM_TLS_BACKEND_OPENSSL = 2 } ktm_tls_backend;

/* ---------------------------------------------------------------------
 * Credentials (x509): a CA, our certificate and key, optionally a CRL.
 */
typedef struct ktm_creds ktm_creds;

/* QEMU's creds-dir layout: ca-cert.pem, server-cert.pem/server-key.pem or
 * client-cert.pem/client-key.pem by role, ca-crl.pem if present. */
ktm_creds* ktm_creds_load_dir(const char* dir, ktm_role role);
/* Explicit files; crl may be NULL. */
ktm_creds* ktm_creds_load_files(const char* ca, const char* cert, const char* key, const char* crl,
                                ktm_role role);
void ktm_creds_free(ktm_creds* c);

/* Writes a new CA and server + client certificates into `dir` (creds-dir
 * layout, keys 0600) for `hostname` and, if not NULL, `ip`. For tests and
 * demos. */
ktm_status ktm_creds_generate(const char* dir, const char* hostname, const char* ip);

/* ---------------------------------------------------------------------
 * Configuration shared by channels and migrations. Defaults: TLS on with
 * GnuTLS, TLS 1.3 preferred and 1.2 allowed with AES-GCM and
 * ChaCha20-Poly1305, ktls auto, zero_copy auto, io
 * timeout 30 s, connect timeout 10 s, 4 channels, digest xxh3.
 */
typedef struct ktm_config ktm_config;

ktm_config* ktm_config_new(void);
void ktm_config_free(ktm_config* c);
/* Plaintext instead of TLS (the peer's memory crosses the wire readable). */
ktm_status ktm_config_set_tls(ktm_config* c, int enabled);
/* The configuration keeps its own reference; `creds` may be freed after. */
ktm_status ktm_config_set_creds(ktm_config* c, const ktm_creds* creds);
/* Client: the name the server certificate must hold (default: none = the
 * connect address's host). */
ktm_status ktm_config_set_hostname(ktm_config* c, const char* hostname);
/* The TLS library (default KTM_TLS_BACKEND_GNUTLS). KTM_E_USAGE for another
 * value, or for a backend this build cannot run (the message says why). */
ktm_status ktm_config_set_tls_backend(ktm_config* c, ktm_tls_backend b);
/* The backend set (KTM_TLS_BACKEND_GNUTLS for NULL). */
ktm_tls_backend ktm_config_get_tls_backend(const ktm_config* c);
/* Protocol versions, preferred first: "1.3,1.2" (the default), "1.3", "1.2".
 * KTM_E_USAGE naming the bad item; the configuration is then unchanged. */
ktm_status ktm_config_set_tls_versions(ktm_config* c, const char* versions);
/* AEAD ciphers, preferred first: "aes-128-gcm,aes-256-gcm,chacha20-poly1305"
 * (the default; also "aes-128-ccm"). KTM_E_USAGE as above. */
ktm_status ktm_config_set_tls_ciphers(ktm_config* c, const char* ciphers);
/* Server: accept only client certificates whose RFC 4514 subject DN
 * ("CN=host1,O=Example") or common name matches one of the shell patterns
 * (fnmatch(3), as QEMU's tls-authz) added; others are refused during the
 * handshake (KTM_E_SECURITY on both ends). None added: every client the CA
 * vouches for. A client configuration ignores the list. */
ktm_status ktm_config_add_tls_allow_client(ktm_config* c, const char* pattern);
/* The backend's own syntax, overriding the versions and ciphers above for
 * that backend: a GnuTLS priority string ("NORMAL:-VERS-ALL:+VERS-TLS1.3")
 * or, with KTM_TLS_BACKEND_OPENSSL, SSL_CONF commands
 * ("MinProtocol=TLSv1.3,Ciphersuites=TLS_AES_128_GCM_SHA256"). NULL or ""
 * clears it. Checked when a channel or migration starts (KTM_E_USAGE). */
ktm_status ktm_config_set_priority(ktm_config* c, const char* priority);
ktm_status ktm_config_set_ktls(ktm_config* c, ktm_policy p);
ktm_status ktm_config_set_zero_copy(ktm_config* c, ktm_policy p);
/* Change the TLS key after this many bytes per direction (TLS 1.3
 * KeyUpdate), as well as before the cipher's limit (2^24 records for
 * AES-GCM); 0 (default): at that limit only. Where the key cannot change
 * (TLS 1.2, a kernel TLS path without re-keying, a peer that cannot follow)
 * a channel stops with KTM_E_SECURITY at the limit instead. */
ktm_status ktm_config_set_rekey_after(ktm_config* c, uint64_t bytes);
/* No progress for this long on a channel fails with KTM_E_TIMEOUT; < 0 = forever. */
ktm_status ktm_config_set_io_timeout_ms(ktm_config* c, int64_t ms);
ktm_status ktm_config_set_connect_timeout_ms(ktm_config* c, int64_t ms);
/* Migration only: parallel channels (1..64). */
ktm_status ktm_config_set_channels(ktm_config* c, int n);
ktm_status ktm_config_set_digest(ktm_config* c, ktm_digest d);
/* Live source: final pass once the dirty pages fit in `ms` at the measured
 * rate (0: when <= 1/256 of the image is dirty); at most `iterations` passes. */
ktm_status ktm_config_set_max_downtime_ms(ktm_config* c, int64_t ms);
ktm_status ktm_config_set_max_iterations(ktm_config* c, uint32_t iterations);

/* ---------------------------------------------------------------------
 * Listeners and channels.
 */
typedef struct ktm_listener ktm_listener;
typedef struct ktm_channel ktm_channel;

/* "HOST:PORT" (PORT 0 picks one), "[V6]:PORT" or "unix:PATH". */
ktm_listener* ktm_listen(const char* address);
/* The bound address, port filled in. */
const char* ktm_listener_address(const ktm_listener* l);
void ktm_listener_free(ktm_listener* l);

/* Connects, runs the TLS handshake (client role) and picks the path (kTLS or
 * userspace TLS, by the config's policies). */
ktm_channel* ktm_channel_connect(const char* address, const ktm_config* c);
/* Waits up to `timeout_ms` (< 0: forever) for one connection and runs the
 * TLS handshake (server role). */
ktm_channel* ktm_channel_accept(ktm_listener* l, const ktm_config* c, int64_t timeout_ms);
/* Closes without close_notify if not shut down. NULL is fine. */
void ktm_channel_free(ktm_channel* ch);

/* Which path runs and why, e.g. "TLS1.3 AES-128-GCM, kTLS (keys installed
 * into the kernel)" or "..., userspace TLS (kTLS unavailable: ...)". */
const char* ktm_channel_path(const ktm_channel* ch);
int ktm_channel_is_ktls(const ktm_channel* ch);
int ktm_channel_is_zero_copy(const ktm_channel* ch);

#define KTM_WRITE_ZERO_COPY 1u /* the kernel may read `buf` after return */

/* Writes all `len` bytes. With KTM_WRITE_ZERO_COPY on a zero-copy channel
 * the buffer stays owned by the kernel until released: do not modify it
 * before ktm_channel_is_released(first..last) says so, or the release
 * callback ran, or ktm_channel_flush returned. Without the flag (or on a
 * copying path) the buffer may be reused at return. first_id and last_id
 * (may be NULL) get the write ids; first > last when nothing is pending. */
ktm_status ktm_channel_write(ktm_channel* ch, const void* buf, size_t len, unsigned flags, uint64_t* first_id,
                             uint64_t* last_id);
/* 1 if every write up to and including `id` is released (polls completions),
 * whatever order the kernel's completions arrived in; 0 while any of them is
 * still held, for an id not yet handed out, and on failure (a NULL channel,
 * an error the kernel reported: then ktm_last_error() says why). */
int ktm_channel_is_released(ktm_channel* ch, uint64_t id);
/* Called once per released write id range, on the thread that polls
 * (is_released, flush, write). NULL clears it. */
typedef void (*ktm_release_fn)(void* user, uint64_t first_id, uint64_t last_id);
ktm_status ktm_channel_set_release_callback(ktm_channel* ch, ktm_release_fn fn, void* user);
/* Blocks until every zero-copy write is released (bounded by the io timeout). */
ktm_status ktm_channel_flush(ktm_channel* ch);

/* Reads up to `len` bytes; *got = 0 means the peer closed cleanly. */
ktm_status ktm_channel_read(ktm_channel* ch, void* buf, size_t len, size_t* got);
/* Reads exactly `len` bytes; KTM_E_PEER if the stream ends first. */
ktm_status ktm_channel_read_all(ktm_channel* ch, void* buf, size_t len);

typedef enum ktm_shutdown { KTM_SHUT_WRITE = 1, KTM_SHUT_READ = 2, KTM_SHUT_BOTH = 3 } ktm_shutdown;
/* WRITE: close_notify + half close (the peer reads EOF); fails (KTM_E_PEER,
 * KTM_E_TIMEOUT) when that end cannot reach the peer.
 * READ: stop reading. BOTH: abort (nothing more is sent). READ and BOTH
 * cannot fail on a valid channel. */
ktm_status ktm_channel_shutdown(ktm_channel* ch, ktm_shutdown how);

/* ---------------------------------------------------------------------
 * Migration of a memory image over several channels.
 *
 * The source's memory is the caller's: the library reads pages straight
 * from `data` (zero copy where the path allows) while the caller may keep
 * writing to it. The caller reports which pages changed; a page written
 * after it was reported is reported again at the next collection, so
 * nothing is lost (write first, then mark dirty).
 */
typedef struct ktm_page_list ktm_page_list;
/* Appends page indices (ascending within one call) to the dirty list. */
ktm_status ktm_page_list_append(ktm_page_list* l, const uint64_t* pages, size_t n);

typedef struct ktm_source_ops {
  /* Required. Appends the pages changed since the previous call; the first
   * call must report every page. Called between iterations, on the
   * migration's thread. */
  void (*collect_dirty)(void* user, ktm_page_list* out);
  /* Optional. After it returns no page may change (stop the writers). */
  void (*freeze)(void* user);
  /* Nonzero: the memory changes while it moves (precopy iterates). */
  int live;
} ktm_source_ops;

typedef struct ktm_report ktm_report;

/* Progress, called about every 100 ms from a library thread while a
 * migration runs: bytes of page data so far, image bytes, iteration. */
typedef void (*ktm_progress_fn)(void* user, uint64_t bytes, uint64_t total, uint32_t iteration);

/* Runs the source to `address`: `data` (page aligned, `size` bytes,
 * readable up to size rounded up to `page_size`) until the destination
 * confirms a verified, committed image. `progress` may be NULL. On
 * success *report (if not NULL) gets a report to free with ktm_report_free. */
ktm_status ktm_migrate_source(const char* address, const ktm_config* c, const void* data, uint64_t size,
                              uint32_t page_size, const ktm_source_ops* ops, void* user, ktm_progress_fn progress,
                              void* progress_user, ktm_report** report);

/* Accepts one migration on `l` and receives it into `output_file` (a
 * temporary file beside it, renamed only when verified and durable) or, if
 * output_file is NULL, into `buffer` of `buffer_size` bytes (which must hold
 * the image rounded up to pages; KTM_E_LOCAL_IO otherwise). The buffer need
 * not be zeroed: on KTM_OK every page of it holds the source's image, zero
 * pages included. Its contents are undefined if the migration fails. */
ktm_status ktm_migrate_destination(ktm_listener* l, const ktm_config* c, const char* output_file, void* buffer,
                                   uint64_t buffer_size, int64_t accept_timeout_ms, ktm_progress_fn progress,
                                   void* progress_user, ktm_report** report);

uint64_t ktm_report_image_bytes(const ktm_report* r);
uint64_t ktm_report_data_bytes(const ktm_report* r);
uint64_t ktm_report_pages(const ktm_report* r);
uint32_t ktm_report_iterations(const ktm_report* r);
double ktm_report_seconds(const ktm_report* r);
/* Source only (0 elsewhere): freeze -> DONE. */
double ktm_report_downtime_seconds(const ktm_report* r);
/* Hex digest of the image and its algorithm ("xxh3"/"sha256"). */
const char* ktm_report_digest(const ktm_report* r);
const char* ktm_report_digest_algorithm(const ktm_report* r);
const char* ktm_report_session(const ktm_report* r);
size_t ktm_report_channel_count(const ktm_report* r);
/* The path channel `i` took and why (as ktm_channel_path); NULL if out of range. */
const char* ktm_report_channel_path(const ktm_report* r, size_t i);
int ktm_report_channel_ktls(const ktm_report* r, size_t i);
/* The whole report as JSON: the fields of the CLI's --json summary, without
 * its role and process-CPU fields. */
const char* ktm_report_json(const ktm_report* r);
void ktm_report_free(ktm_report* r);

#ifdef __cplusplus
}
#endif

#endif /* KTLS_MIGRATE_H */

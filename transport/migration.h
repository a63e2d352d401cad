// The migration engines: RunSource streams a PageSource over N channels;
// RunDestination receives into a file and commits it only when complete.
//
// Ordering: within an iteration each page is sent once, on one channel. At
// the end of an iteration every channel flushes (all zero-copy pages
// released, so none can be sent later with newer contents than its
// successor) and sends SYNC; the destination applies iteration i+1 only
// after SYNC(i) has arrived on every channel. So an older copy of a page can
// never overwrite a newer one. The last iteration's SYNC is FINAL; then
// channel 0 carries END with the digest of the image at switch-over (kept
// page by page while pages move, util/image_digest.h), the destination
// compares it with the digest of what it received, makes the file durable
// under its final name, and answers DONE.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "channel/address.h"
#include "channel/channel.h"
#include "transport/endpoint.h"
#include "transport/page_source.h"
#include "transport/protocol.h"
#include "util/image_digest.h"

namespace ktm {

// Live counters for progress display; updated by the engine threads.
struct Progress {
  std::atomic<uint64_t> bytes{0};        // page bytes sent/received (zero pages count as 0)
  std::atomic<uint64_t> pages{0};        // pages sent/received (incl. zero pages)
  std::atomic<uint32_t> iteration{0};
  std::atomic<uint64_t> dirty_pages{0};  // pages in the current iteration
  std::atomic<uint64_t> total_bytes{0};  // image size
};

struct ChannelReport {
  std::string path;
  bool ktls = false;
  bool zero_copy = false;
  ChannelStats stats;              // the channel's own counters (zero copy, batching, ...)
};

// Wall time and CPU of one phase. CPU is the whole process's (getrusage
// RUSAGE_SELF): exact when one side runs per process, as in the CLI.
struct PhaseTime {
  std::string name;  // source: setup, transfer, switch-over; destination: setup, transfer, verify, commit
  double wall_seconds = 0;
  double cpu_user_seconds = 0;
  double cpu_sys_seconds = 0;
};

// The source's downtime: from Freeze() (the guest stops) until DONE (the
// destination holds the verified, durable image).
struct DowntimeReport {
  bool measured = false;
  uint64_t final_pages = 0;           // pages sent after the freeze
  double expected_seconds = 0;        // final pages at the last iteration's page rate
  double final_pages_seconds = 0;     // freeze -> final barrier sent
  double digest_seconds = 0;          // final barrier -> END sent (validation + image digest)
  double confirm_seconds = 0;         // END -> DONE (the destination's verify and commit)
  double total_seconds = 0;
};

struct MigrationReport {
  std::string session;             // UUID
  uint64_t image_size = 0;
  uint32_t page_size = 0;
  uint32_t iterations = 0;
  double transfer_seconds = 0;     // source: first page to final barrier (no setup, digest, commit)
  uint64_t pages = 0;              // page transmissions (all iterations)
  uint64_t zero_pages = 0;         // of which sent as offsets only
  uint64_t data_bytes = 0;         // page payload bytes
  double seconds = 0;
  std::string digest;              // image digest (hex), util/image_digest.h
  DigestAlgorithm digest_algorithm = DigestAlgorithm::kXxh3;
  std::vector<PhaseTime> phases;
  DowntimeReport downtime;         // source only
  std::vector<ChannelReport> channels;
  std::vector<uint64_t> dirty_per_iteration;
};

struct SourceOptions {
  std::string address;             // destination HOST:PORT
  int channels = 4;
  SecurityConfig security;
  uint32_t max_iterations = 30;    // live: iterations before forcing the final pass
  uint64_t converge_pages = 0;     // live: final pass once dirty <= this (0: 1/256 of the image, >= 64)
  // Live: when > 0, the final pass starts once the dirty pages can be sent
  // within this time at the page rate measured in the previous iteration
  // (QEMU's downtime-limit); replaces converge_pages. max_iterations still
  // bounds the number of passes.
  std::chrono::milliseconds max_downtime{0};
  // Integrity digest of the image (carried in the hello; the destination
  // uses the source's choice).
  DigestAlgorithm digest = DigestAlgorithm::kXxh3;
  std::chrono::milliseconds connect_timeout{10000};
  // Every read, write, flush and the wait for the destination's answers:
  // no progress on a channel for this long ends the migration with
  // Error(kTimeout) naming the channel, the peer and the phase. Negative:
  // wait forever. The wait for DONE adds time for the destination's digest
  // and commit of the whole image: io_timeout plus one second per 64 MiB.
  std::chrono::milliseconds io_timeout{30000};
  // io_uring backend: pin the image once as registered buffers.
  bool register_buffers = false;
  Progress* progress = nullptr;
  // Optional: wraps each opened channel before pages flow (e.g. the
  // benchmark's QEMU-style anchor, which writes one record per page).
  std::function<std::unique_ptr<Channel>(std::unique_ptr<Channel>)> wrap_channel;
  // For tests and future use: capability bits (wire::kCap*,
  // transport/protocol.h) this source leaves out of its hello's offer, and
  // bits it requires on top of what it needs (its digest algorithm and
  // zero-page packets). A bit it requires is offered whatever this says.
  uint32_t capabilities_withheld = 0;
  uint32_t capabilities_required = 0;
};

// Runs the source side. Throws Error on any failure (the destination then
// discards its temporary file): kUsage for bad options, kPeer/kTimeout when
// the destination vanishes, kSecurity for TLS and policy failures,
// kIntegrity when the destination reports a digest mismatch.
MigrationReport RunSource(PageSource& source, const SourceOptions& opts);

struct DestinationOptions {
  std::string output;              // final file name; "" = keep the image in memory
                                   // (pre-faulted, like a destination's guest RAM)
  // With output "": receive into this caller-owned memory instead of
  // allocating (it must hold the image rounded up to pages, else
  // Error(kLocalIo) before any page). It need not be zeroed: every page is
  // written, zero pages included. Its contents are undefined on failure.
  uint8_t* memory = nullptr;
  uint64_t memory_size = 0;
  SecurityConfig security;
  std::chrono::milliseconds accept_timeout{60000};
  // The TLS handshake must end within this, handshake and hello within
  // twice this of the accept; else the connection is a stray and is
  // dropped, so a silent or trickling peer cannot stall the accept loop.
  std::chrono::milliseconds hello_timeout{10000};
  // After the session's channels are accepted: no progress on a channel for
  // this long ends the migration (Error(kTimeout)). Negative: forever.
  // With a file output it also bounds a receiver's wait for the disk: no
  // writeback round finished for this long is Error(kLocalIo, ETIMEDOUT).
  std::chrono::milliseconds io_timeout{30000};
  // Largest image accepted (bytes); 0 = what the output filesystem can hold.
  // A larger hello ends the migration with Error(kLocalIo) before any page.
  uint64_t max_size = 0;
  // Connections in their TLS handshake or hello at once. Each progresses on
  // its own (a silent one cannot delay the others); beyond this many, the
  // overflow rule of transport/admission.h drops the oldest pending
  // connection of the busiest source address (logged).
  size_t max_pending = 32;
  // File output: the received bytes not yet on disk (dirty or being
  // written) are held to about two of these windows. A writeback thread
  // writes out each window (or every 250 ms what there is) and waits for
  // the disk; a receiver two windows ahead of it waits and reads nothing
  // meanwhile, so a disk slower than the network paces the source, and the
  // commit's fsync finds about that much left whatever the image size. 0: no
  // bound (writeback is only started every 250 ms, never waited for).
  uint64_t writeback_window = 8u << 20;
  Progress* progress = nullptr;
  std::function<void(const std::string&)> log;  // notices (rejected strays, ...)
  // Called with the temporary file's path once created, "" when it is gone
  // (lets the CLI remove it on SIGINT/SIGTERM).
  std::function<void(const std::string&)> temp_file_hook;
  // For tests and future use: capability bits (wire::kCap*,
  // transport/protocol.h) this destination leaves out of its offer (a
  // source that requires one is refused with kRejectedCapability, naming
  // it), and bits it requires every source to offer (offered in any case).
  uint32_t capabilities_withheld = 0;
  uint32_t capabilities_required = 0;
};

// Checks that `output` can be written before anything is accepted: its
// directory exists, takes new files and can be opened to be synced at the
// commit, the name is not too long, the output is not a directory. Throws Error(kLocalIo) saying which. "" (in memory) passes.
void CheckOutputPath(const std::string& output);

// Accepts the channels of one migration on `listener` and writes the image.
// The file appears under `output` only after the final barrier and the
// digest check; on any failure the temporary file is removed and Error is
// thrown.
MigrationReport RunDestination(Listener& listener, const DestinationOptions& opts);

}  // namespace ktm

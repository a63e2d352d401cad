// The parts of `tls-migrate bench` beyond the mode table (cli/cmd_bench.cc):
// the hardware floor for the work, the real file path against socat, and
// the switch-over downtime.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace ktm::cli {

// CPU seconds per GiB of the irreducible work, measured in this run on one
// thread: AES-128-GCM encryption and decryption in 16 KiB records (GnuTLS's
// AEAD API, what a TLS record costs without any I/O), a memcpy, and the
// whole-image SHA-256 tree the switch-over used to compute on both ends.
struct Floor {
  double aes_gcm_encrypt = 0, aes_gcm_decrypt = 0, memcpy = 0, sha256_tree = 0;
};
Floor MeasureFloor();

struct SectionPlan {
  std::string pki_dir;     // server + client creds (localhost)
  std::string output_dir;  // where file destinations and the socat comparison write
  uint64_t file_size = 1ull << 30;
  uint64_t downtime_size = 4ull << 30;
  int runs = 3;
};

// A durable file migration (tls-migrate defaults: 4 channels, TLS) of a random
// file against `socat` OpenSSL into a file plus `sync`, same file, medians.
nlohmann::json FileVsSocat(const SectionPlan& plan);

// Downtime of live migrations of `downtime_size`: (a) a writer dirtying
// 64 MiB/s, (b) a guest whose final dirty set is 1% of its pages. Prints
// the split and the targets, and beside them the cost of the former
// switch-over (a SHA-256 tree of the whole image on each end).
nlohmann::json Downtime(const SectionPlan& plan, const Floor& floor);

}  // namespace ktm::cli

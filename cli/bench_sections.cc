#include "cli/bench_sections.h"

#include <fcntl.h>
#include <signal.h>
#include <gnutls/crypto.h>
#include <gnutls/gnutls.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>
#include <random>
#include <thread>
#include <vector>

#include "base/error.h"
#include "base/unique_fd.h"
#include "cli/loopback.h"
#include "cli/process.h"
#include "cli/report.h"
#include "transport/page_source.h"
#include "util/image_digest.h"
#include "util/sha256.h"

namespace ktm::cli {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kGiB = 1024.0 * 1024 * 1024;

double ThreadCpu() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// A live source whose guest's last writes, at the freeze, touch `percent`
// of its pages: the first pass sends everything, the next finds nothing
// dirty (converged), and the final pass carries exactly those pages.
class FinalDirtySource : public PageSource {
 public:
  FinalDirtySource(uint64_t size, double percent) : img_(MappedImage::Anonymous(size)), percent_(percent) {
    img_->FillMixed(0, 11);
  }
  const uint8_t* data() const override { return img_->data(); }
  uint64_t size() const override { return img_->size(); }
  uint32_t page_size() const override { return img_->page_size(); }
  bool live() const override { return true; }
  void CollectDirty(std::vector<uint64_t>& pages) override {
    if (first_) {
      first_ = false;
      for (uint64_t i = 0; i < page_count(); ++i) pages.push_back(i);
      return;
    }
    pages.insert(pages.end(), pending_.begin(), pending_.end());
    pending_.clear();
  }
  void Freeze() override {
    std::mt19937_64 rng(5);
    const uint64_t n = static_cast<uint64_t>(page_count() * percent_ / 100);
    for (uint64_t i = 0; i < n; ++i) {
      const uint64_t p = rng() % page_count();
      const uint64_t v = rng();
      std::memcpy(img_->mutable_data() + p * page_size(), &v, sizeof(v));
      pending_.push_back(p);
    }
    std::sort(pending_.begin(), pending_.end());
    pending_.erase(std::unique(pending_.begin(), pending_.end()), pending_.end());
  }

 private:
  std::unique_ptr<MappedImage> img_;
  double percent_;
  bool first_ = true;
  std::vector<uint64_t> pending_;
};

// Seconds of `fn` per GiB when it processes `bytes` per call.
template <typename F>
double CpuPerGib(uint64_t bytes, int reps, F fn) {
  fn();  // warm: pages faulted, caches and keys set up
  const double t0 = ThreadCpu();
  for (int i = 0; i < reps; ++i) fn();
  return (ThreadCpu() - t0) / (double(bytes) * reps / kGiB);
}

}  // namespace

Floor MeasureFloor() {
  constexpr size_t kBuf = 64u << 20, kRecord = 16384, kTag = 16;
  std::vector<uint8_t> plain(kBuf), cipher(kBuf / kRecord * (kRecord + kTag)), copy(kBuf);
  std::mt19937 rng(1);
  for (size_t i = 0; i < kBuf; i += 4) {
    const uint32_t v = rng();
    std::memcpy(&plain[i], &v, 4);
  }
  Floor f;
  uint8_t key_bytes[16] = {1, 2, 3}, nonce[12] = {0};
  gnutls_datum_t key = {key_bytes, sizeof(key_bytes)};
  gnutls_aead_cipher_hd_t h = nullptr;
  if (gnutls_aead_cipher_init(&h, GNUTLS_CIPHER_AES_128_GCM, &key) != 0) {
    throw Error(ErrorKind::kInternal, EINVAL, "GnuTLS has no AES-128-GCM");
  }
  f.aes_gcm_encrypt = CpuPerGib(kBuf, 8, [&] {
    for (size_t r = 0; r < kBuf / kRecord; ++r) {
      size_t out = kRecord + kTag;
      gnutls_aead_cipher_encrypt(h, nonce, sizeof(nonce), nullptr, 0, kTag, &plain[r * kRecord], kRecord,
                                 &cipher[r * (kRecord + kTag)], &out);
    }
  });
  int bad = 0;
  f.aes_gcm_decrypt = CpuPerGib(kBuf, 8, [&] {
    for (size_t r = 0; r < kBuf / kRecord; ++r) {
      size_t out = kRecord;
      if (gnutls_aead_cipher_decrypt(h, nonce, sizeof(nonce), nullptr, 0, kTag, &cipher[r * (kRecord + kTag)],
                                     kRecord + kTag, &copy[r * kRecord], &out) != 0) {
        ++bad;
      }
    }
  });
  gnutls_aead_cipher_deinit(h);
  if (bad) throw Error(ErrorKind::kInternal, EBADMSG, "AES-GCM floor: decryption failed");
  f.memcpy = CpuPerGib(kBuf, 8, [&] {
    std::memcpy(copy.data(), plain.data(), kBuf);
    asm volatile("" ::"r"(copy.data()) : "memory");  // keep the copy
  });
  f.sha256_tree = CpuPerGib(kBuf, 2, [&] { (void)ImageDigest(plain.data(), kBuf, 1); });
  return f;
}

namespace {

// A file of `size` random bytes at `path`, on disk (fsync'd).
void WriteRandomFile(const std::string& path, uint64_t size) {
  auto img = MappedImage::Anonymous(size);
  img->FillMixed(0, 3);
  UniqueFd fd(open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  if (!fd) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot create " + path + " (--output-dir)");
  for (uint64_t off = 0; off < size;) {
    const ssize_t n = pwrite(fd.get(), img->data() + off, std::min<uint64_t>(size - off, 64u << 20), off);
    if (n <= 0) ThrowErrno(ErrorKind::kLocalIo, errno, "write " + path);
    off += static_cast<uint64_t>(n);
  }
  fsync(fd.get());
}

// The XXH3 image digest of a file, in hex.
std::string FileDigest(const std::string& path) {
  auto f = MappedImage::FromFile(path);
  return DigestHex(DigestAlgorithm::kXxh3, ImageDigestOf(DigestAlgorithm::kXxh3, f->data(), f->size(), f->page_size()));
}

// Seconds of the tls-migrate runs: to DONE, the transfer, the destination's commit.
struct FileRuns {
  std::vector<double> wall, transfer, commit;
};

// One tls-migrate migration of `in` into `out` (removed afterwards),
// checked against the digest `want`.
void RunOursOnce(const SectionPlan& plan, const std::string& in, const std::string& out, const std::string& want,
                 FileRuns& runs) {
  LoopbackConfig cfg;
  cfg.input = in;
  cfg.output = out;
  cfg.pki_dir = plan.pki_dir;
  cfg.channels = 4;
  LoopbackResult r = RunOnLoopback(cfg);
  if (!r.verified || FileDigest(out) != want) throw Error(ErrorKind::kIntegrity, EBADMSG, "file migration differs");
  runs.wall.push_back(r.wall_seconds);
  runs.transfer.push_back(r.source.transfer_seconds);
  for (const auto& p : r.destination.value("phases", nlohmann::json::array())) {
    if (p.value("name", "") == "commit") runs.commit.push_back(p.value("wall_s", 0.0));
  }
  unlink(out.c_str());
}

// One socat OpenSSL copy of `in` into `out` plus `sync` (removed
// afterwards): its seconds, or nothing with `note` saying why.
std::optional<double> RunSocatOnce(const SectionPlan& plan, const std::string& in, const std::string& out,
                                   const std::string& want, std::string& note) {
  const int port = FreeTcpPort();
  const std::string p = std::to_string(port), pki = plan.pki_dir;
  // -T 60: socat itself gives up after a minute without traffic.
  Program dst = Program::Start({"socat", "-u", "-T", "60",
                                "OPENSSL-LISTEN:" + p + ",bind=127.0.0.1,reuseaddr,cert=" + pki + "/server-cert.pem,key=" +
                                    pki + "/server-key.pem,cafile=" + pki + "/ca-cert.pem,verify=1",
                                "CREATE:" + out});
  const auto up_by = Clock::now() + std::chrono::seconds(10);
  while (!TcpPortListening(port) && Clock::now() < up_by) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const auto t0 = Clock::now();
  Program src = Program::Start({"socat", "-u", "-T", "60", "FILE:" + in,
                                "OPENSSL:127.0.0.1:" + p + ",cert=" + pki + "/client-cert.pem,key=" + pki +
                                    "/client-key.pem,cafile=" + pki + "/ca-cert.pem,commonname=localhost"});
  std::string so, dout;
  const int src_rc = src.Wait(&so);
  // A source that never connected leaves the listener waiting forever.
  if (src_rc != 0) dst.Signal(SIGTERM);
  const int dst_rc = dst.Wait(&dout);
  std::string sync_out;
  const int sync_rc = Program::Start({"sync", out}).Wait(&sync_out);
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  std::optional<double> result;
  if (src_rc != 0 || dst_rc != 0 || sync_rc != 0 || FileDigest(out) != want) {
    note = "socat run failed: " + so + dout + sync_out;
  } else {
    result = secs;
  }
  unlink(out.c_str());
  return result;
}

}  // namespace

nlohmann::json FileVsSocat(const SectionPlan& plan) {
  const std::string in = plan.output_dir + "/bench-input.img", out = plan.output_dir + "/bench-output.img";
  std::printf("\nDurable file migration of %s (random) into %s: tls-migrate send/recv defaults (4 channels, TLS)\n"
              "against socat OpenSSL into a file + sync, same file, medians of %d runs\n",
              Human(double(plan.file_size)).c_str(), plan.output_dir.c_str(), plan.runs);
  WriteRandomFile(in, plan.file_size);
  struct Cleanup {
    std::string a, b;
    ~Cleanup() {
      unlink(a.c_str());
      unlink(b.c_str());
    }
  } cleanup{in, out};
  const std::string want = FileDigest(in);
  FileRuns ours;
  std::vector<double> theirs;
  std::string socat_note;
  for (int run = 0; run < plan.runs; ++run) {
    RunOursOnce(plan, in, out, want, ours);
    if (!ProgramInPath("socat")) {
      socat_note = "socat not installed (apt-get install socat)";
      continue;
    }
    if (std::optional<double> secs = RunSocatOnce(plan, in, out, want, socat_note)) theirs.push_back(*secs);
  }
  std::printf("  tls-migrate: %.2f s (transfer %.2f s, destination commit %.2f s)\n", Median(ours.wall),
              Median(ours.transfer), Median(ours.commit));
  if (!theirs.empty()) {
    std::printf("  socat + sync: %.2f s\n", Median(theirs));
    std::printf("  target: tls-migrate faster than socat + sync: %.2fx: %s\n", Median(theirs) / Median(ours.wall),
                Median(ours.wall) < Median(theirs) ? "met" : "NOT met");
  } else {
    std::printf("  socat: %s\n", socat_note.c_str());
  }
  return {{"bytes", plan.file_size},          {"tls_migrate_s", Median(ours.wall)},
          {"tls_migrate_transfer_s", Median(ours.transfer)}, {"tls_migrate_commit_s", Median(ours.commit)},
          {"socat_sync_s", theirs.empty() ? nlohmann::json(nullptr) : nlohmann::json(Median(theirs))},
          {"socat_note", socat_note}};
}

namespace {

// Medians of the runs of one downtime case.
struct DowntimeMedians {
  double total = 0, final_pages = 0, final_pages_s = 0, expected_s = 0, digest_s = 0, confirm_s = 0, transfer_s = 0;
  nlohmann::json Json() const {
    return {{"total_s", total},       {"final_pages", final_pages}, {"final_pages_s", final_pages_s},
            {"expected_s", expected_s}, {"digest_s", digest_s},     {"confirm_s", confirm_s},
            {"transfer_s", transfer_s}};
  }
  void Print(const std::string& label) const {
    std::printf("  %-38s %7.0f ms: final %6.0f pages %6.1f ms (expected %6.1f), digest %5.1f ms, "
                "verify+commit %6.1f ms\n",
                label.c_str(), total * 1e3, final_pages, final_pages_s * 1e3, expected_s * 1e3, digest_s * 1e3,
                confirm_s * 1e3);
  }
};

// The downtime split and transfer time of a case's runs.
class DowntimeSamples {
 public:
  // One run of `cfg` (its output file removed afterwards).
  void Run(const LoopbackConfig& cfg) {
    LoopbackResult r = RunOnLoopback(cfg);
    if (!cfg.output.empty()) unlink(cfg.output.c_str());
    if (!r.verified) throw Error(ErrorKind::kIntegrity, EBADMSG, "downtime run: destination differs");
    const DowntimeReport& d = r.source.downtime;
    total_.push_back(d.total_seconds);
    pages_s_.push_back(d.final_pages_seconds);
    digest_s_.push_back(d.digest_seconds);
    confirm_s_.push_back(d.confirm_seconds);
    expected_s_.push_back(d.expected_seconds);
    final_pages_.push_back(double(d.final_pages));
    transfer_s_.push_back(r.source.transfer_seconds);
  }
  DowntimeMedians Medians() const {
    return {Median(total_),    Median(final_pages_), Median(pages_s_),   Median(expected_s_),
            Median(digest_s_), Median(confirm_s_),   Median(transfer_s_)};
  }

 private:
  std::vector<double> total_, pages_s_, digest_s_, confirm_s_, expected_s_, final_pages_, transfer_s_;
};

DowntimeMedians RunDowntimeCase(const LoopbackConfig& cfg, int runs) {
  DowntimeSamples s;
  for (int run = 0; run < runs; ++run) s.Run(cfg);
  return s.Medians();
}

LoopbackConfig Dirty64M(const SectionPlan& plan, uint64_t size) {
  LoopbackConfig cfg;
  cfg.pki_dir = plan.pki_dir;
  cfg.channels = 4;
  cfg.size = size;
  cfg.live = true;
  cfg.dirty_rate = 64u << 20;
  cfg.zero_percent = 0;
  return cfg;
}

// The 64 MiB/s writer into a file at a quarter of the downtime size and at
// the full size: with the destination's writeback bounded, the commit's
// fsync does not grow with the image; beside it the same without the bound
// (the page cache absorbs the transfer and the final fsync waits out the
// backlog), and what the bound costs in transfer time.
nlohmann::json FileDowntimeBySize(const SectionPlan& plan) {
  const uint64_t sizes[2] = {std::max<uint64_t>(plan.downtime_size / 4, 16u << 20), plan.downtime_size};
  const uint64_t window = DestinationOptions{}.writeback_window;
  std::printf("  writer dirtying 64 MiB/s, file destination, writeback bounded to %s windows and unbounded "
              "(runs alternate):\n",
              Human(double(window)).c_str());
  DowntimeMedians bounded[2], unbounded[2];
  for (int i = 0; i < 2; ++i) {
    LoopbackConfig cfg = Dirty64M(plan, sizes[i]);
    cfg.output = plan.output_dir + "/bench-downtime.img";
    DowntimeSamples with, without;
    for (int run = 0; run < plan.runs; ++run) {
      cfg.writeback_window = window;
      with.Run(cfg);
      cfg.writeback_window = 0;
      without.Run(cfg);
    }
    bounded[i] = with.Medians();
    unbounded[i] = without.Medians();
    bounded[i].Print("  " + Human(double(sizes[i])) + ", bounded");
    unbounded[i].Print("  " + Human(double(sizes[i])) + ", unbounded (before)");
  }
  const double growth = bounded[1].total / std::max(bounded[0].total, 1e-9);
  const bool met = bounded[1].total <= 0.250 && growth <= 1.5;
  std::printf("    target: %s into a file <= 250 ms and within 1.5x of %s: %.0f ms, %.2fx: %s "
              "(unbounded: %.0f ms, %.2fx)\n",
              Human(double(sizes[1])).c_str(), Human(double(sizes[0])).c_str(), bounded[1].total * 1e3, growth,
              met ? "met" : "NOT met", unbounded[1].total * 1e3,
              unbounded[1].total / std::max(unbounded[0].total, 1e-9));
  auto cost = [&](int i) { return bounded[i].transfer_s / std::max(unbounded[i].transfer_s, 1e-9) - 1; };
  std::printf("    cost of the bound in transfer time: %s %.2f s vs %.2f s unbounded (%+.0f%%), "
              "%s %.2f s vs %.2f s (%+.0f%%)\n",
              Human(double(sizes[0])).c_str(), bounded[0].transfer_s, unbounded[0].transfer_s, cost(0) * 100,
              Human(double(sizes[1])).c_str(), bounded[1].transfer_s, unbounded[1].transfer_s, cost(1) * 100);
  nlohmann::json out = nlohmann::json::object();
  out["window_bytes"] = window;
  for (int i = 0; i < 2; ++i) {
    out[i == 0 ? "small" : "large"] = {{"size", sizes[i]},
                                       {"bounded", bounded[i].Json()},
                                       {"unbounded", unbounded[i].Json()}};
  }
  out["target_met"] = met;
  return out;
}

}  // namespace

nlohmann::json Downtime(const SectionPlan& plan, const Floor& floor) {
  const double gib = double(plan.downtime_size) / kGiB;
  std::printf("\nDowntime (freeze -> DONE) of live %s migrations, TLS, 4 channels, medians of %d runs\n",
              Human(double(plan.downtime_size)).c_str(), plan.runs);
  nlohmann::json out = nlohmann::json::object();
  struct Case {
    const char* name;
    const char* label;
    bool to_file;
  };
  for (const Case c : {Case{"dirty-64M", "writer dirtying 64 MiB/s", false},
                       Case{"final-1pct", "final dirty set 1% of pages", false},
                       Case{"final-1pct-file", "final dirty set 1%, file destination", true}}) {
    LoopbackConfig cfg = Dirty64M(plan, plan.downtime_size);
    if (c.to_file) cfg.output = plan.output_dir + "/bench-downtime.img";
    if (std::string(c.name) != "dirty-64M") {
      const uint64_t size = plan.downtime_size;
      cfg.make_source = [size] { return std::make_unique<FinalDirtySource>(size, 1.0); };
    }
    const DowntimeMedians m = RunDowntimeCase(cfg, c.to_file ? 1 : plan.runs);
    m.Print(c.label);
    const double rest = m.total - m.final_pages_s;
    if (std::string(c.name) == "dirty-64M") {
      std::printf("    target: downtime minus the final pages' transfer < 150 ms: %.0f ms: %s\n", rest * 1e3,
                  rest < 0.150 ? "met" : "NOT met");
    } else if (!c.to_file) {
      std::printf("    target: under 250 ms in total: %s\n", m.total < 0.250 ? "met" : "NOT met");
    }
    out[c.name] = m.Json();
  }
  out["dirty-64M-file"] = FileDowntimeBySize(plan);
  // Before: the switch-over digested the whole image with a 2-thread
  // SHA-256 tree, first on the source, then on the destination.
  const double before = 2 * gib * floor.sha256_tree / std::max(1u, std::min(2u, std::thread::hardware_concurrency()));
  std::printf("  before (the former switch-over hashed the whole image, SHA-256 tree on each end in turn): "
              "%.0f ms for the digests alone, measured as %.2f CPU-s/GiB here\n",
              before * 1e3, floor.sha256_tree);
  out["before_digest_s"] = before;
  return out;
}

}  // namespace ktm::cli

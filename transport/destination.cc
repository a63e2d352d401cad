#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "base/error.h"
#include "base/unique_fd.h"
#include "transport/first_failure.h"
#include "transport/migration.h"
#include "util/sha256.h"

namespace ktm {
namespace {

using Clock = std::chrono::steady_clock;

// The iteration barrier: every channel's receiver waits here after SYNC(i)
// until all channels have sent SYNC(i). Abortable, so one failing channel
// releases the others.
class IterationBarrier {
 public:
  explicit IterationBarrier(size_t n) : n_(n) {}

  // Returns false if the migration was aborted. Throws if the channels
  // disagree about whether this iteration is the final one.
  bool ArriveAndWait(bool final) {
    std::unique_lock<std::mutex> l(mu_);
    if (aborted_) return false;
    const uint64_t gen = generation_;
    if (arrived_ == 0) final_ = final;
    if (final != final_) throw Error(ErrorKind::kIntegrity, EBADMSG, "invalid packet: channels disagree about the final iteration");
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return true;
    }
    cv_.wait(l, [&] { return generation_ != gen || aborted_; });
    return !aborted_ || generation_ != gen;
  }

  void Abort() {
    std::lock_guard<std::mutex> l(mu_);
    aborted_ = true;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const size_t n_;
  size_t arrived_ = 0;
  uint64_t generation_ = 0;
  bool final_ = false;
  bool aborted_ = false;
};

// The image being received: a temporary file beside the target, mapped
// shared. Removed on destruction unless committed.
class TempImage {
 public:
  TempImage(const std::string& output, uint64_t size, uint64_t padded,
            const std::function<void(const std::string&)>& hook)
      : size_(size), padded_(padded), hook_(hook) {
    if (output.empty()) {
      void* p = mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
      if (p == MAP_FAILED) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot allocate " + std::to_string(padded) + " bytes for the image");
      base_ = static_cast<uint8_t*>(p);
      return;
    }
    path_ = output + ".partial.XXXXXX";
    int fd = mkostemp(path_.data(), O_CLOEXEC);
    if (fd < 0) {
      ThrowErrno(ErrorKind::kLocalIo, errno, "cannot create a temporary file beside " + output +
                            " (is the directory writable?)");
    }
    fd_.reset(fd);
    if (hook_) hook_(path_);
    if (ftruncate(fd, static_cast<off_t>(padded)) != 0) {
      int e = errno;
      Discard();
      ThrowErrno(ErrorKind::kLocalIo, e, "cannot size " + path_ + " to " + std::to_string(padded) + " bytes");
    }
    void* p = mmap(nullptr, padded, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
      int e = errno;
      Discard();
      ThrowErrno(ErrorKind::kLocalIo, e, "cannot map " + path_);
    }
    base_ = static_cast<uint8_t*>(p);
  }
  ~TempImage() { Discard(); }

  uint8_t* data() { return base_; }

  Sha256::Digest Digest() { return ImageDigest(base_, size_); }

  // Makes the file durable under its final name.
  void Commit(const std::string& output) {
    if (output.empty()) return;  // in memory: verified is all there is
    if (msync(base_, padded_, MS_SYNC) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "msync " + path_);
    munmap(base_, padded_);
    base_ = nullptr;
    if (ftruncate(fd_.get(), static_cast<off_t>(size_)) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "truncate " + path_);
    fchmod(fd_.get(), 0644);
    if (fsync(fd_.get()) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "fsync " + path_);
    if (rename(path_.c_str(), output.c_str()) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "rename to " + output);
    committed_ = true;
    if (hook_) hook_("");
    std::string dir = output.substr(0, output.find_last_of('/') == std::string::npos ? 0 : output.find_last_of('/'));
    int dfd = open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      fsync(dfd);
      close(dfd);
    }
  }

 private:
  void Discard() {
    if (base_) munmap(base_, padded_);
    base_ = nullptr;
    if (!committed_ && !path_.empty() && fd_) {
      unlink(path_.c_str());
      if (hook_) hook_("");
    }
    fd_.reset();
  }
  std::string path_;
  UniqueFd fd_;
  uint8_t* base_ = nullptr;
  uint64_t size_, padded_;
  bool committed_ = false;
  std::function<void(const std::string&)> hook_;
};

struct Receiver {
  int id = 0;
  Channel* ch = nullptr;
  uint64_t pages = 0, zero_pages = 0, data_bytes = 0;
  uint32_t iterations = 0;
  std::optional<Sha256::Digest> end_digest;
};

// Channel reads of one receiver: every failure names the channel, and a
// peer that disappears is named as such.
class ChannelReader {
 public:
  ChannelReader(Channel& ch, int id) : ch_(ch), who_("channel " + std::to_string(id) + ": ") {}
  const std::string& who() const { return who_; }

  bool Read(void* buf, size_t len) {
    try {
      return ch_.read_all(buf, len);
    } catch (const Error& e) {
      throw Tagged(e);
    }
  }
  bool ReadV(std::span<const iovec> iov) {
    try {
      return ch_.readv_all(iov);
    } catch (const Error& e) {
      throw Tagged(e);
    }
  }

 private:
  Error Tagged(const Error& e) const {
    if (e.kind() == ErrorKind::kPeer) {
      return Error(e.kind(), e.code(),
                   who_ + "the source vanished mid-migration (" + e.what() +
                       "); the image is incomplete and was discarded");
    }
    return e.WithContext(who_);
  }
  Channel& ch_;
  std::string who_;
};

// Reads one channel until its end (EOF after the final SYNC, or END on
// channel 0), applying pages into `image` with iteration barriers.
void ReceiveChannel(Receiver& r, const wire::Geometry& g, uint8_t* image, IterationBarrier& barrier,
                    Progress* progress) {
  ChannelReader ch(*r.ch, r.id);
  std::vector<uint64_t> offsets(wire::kMaxPagesPerPacket);
  std::vector<iovec> iov;
  iov.reserve(wire::kMaxPagesPerPacket);
  uint64_t expect_packet = 0;
  uint32_t iteration = 0;
  bool final_done = false;
  const std::string& who = ch.who();
  for (;;) {
    uint8_t hdr[wire::kHeaderSize];
    if (!ch.Read(hdr, sizeof(hdr))) {
      if (final_done && r.id != 0) return;
      throw Error(ErrorKind::kPeer, EPIPE, who + "the source closed the stream before the final barrier (source killed?); "
                               "the image is incomplete and was discarded");
    }
    wire::PacketHeader h = wire::DecodeHeader(hdr, g);
    if (h.packet_num != expect_packet) {
      throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: number " + std::to_string(h.packet_num) + ", expected " +
                               std::to_string(expect_packet));
    }
    ++expect_packet;
    switch (h.type) {
      case wire::kPages:
      case wire::kZero: {
        if (final_done) throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: pages after the final barrier");
        if (h.iteration != iteration) {
          throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: pages of iteration " + std::to_string(h.iteration) +
                                   " while receiving iteration " + std::to_string(iteration));
        }
        if (!ch.Read(offsets.data(), h.page_count * sizeof(uint64_t))) {
          throw Error(ErrorKind::kPeer, EPIPE, who + "stream ended inside a packet");
        }
        try {
          wire::ValidateOffsets(hdr, h, offsets.data(), g);
        } catch (const Error& e) {
          throw e.WithContext(who);
        }
        if (h.type == wire::kZero) {
          // A fresh file is already zero; later iterations must clear.
          if (iteration > 0) {
            for (uint32_t i = 0; i < h.page_count; ++i) std::memset(image + offsets[i], 0, g.page_size);
          }
          r.zero_pages += h.page_count;
        } else {
          // Receive straight into the mapped image.
          iov.clear();
          for (uint32_t i = 0; i < h.page_count; ++i) {
            uint8_t* p = image + offsets[i];
            if (!iov.empty() && static_cast<uint8_t*>(iov.back().iov_base) + iov.back().iov_len == p) {
              iov.back().iov_len += g.page_size;
            } else {
              iov.push_back({p, g.page_size});
            }
          }
          if (!ch.ReadV(iov)) throw Error(ErrorKind::kPeer, EPIPE, who + "stream ended inside a packet");
          r.data_bytes += uint64_t{h.page_count} * g.page_size;
          if (progress) progress->bytes += uint64_t{h.page_count} * g.page_size;
        }
        r.pages += h.page_count;
        if (progress) progress->pages += h.page_count;
        break;
      }
      case wire::kSync: {
        if (final_done || h.iteration != iteration) {
          throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: duplicate or out-of-order SYNC for iteration " +
                                   std::to_string(h.iteration) + " (expected " + std::to_string(iteration) + ")");
        }
        const bool final = h.flags & wire::kFlagFinal;
        if (!barrier.ArriveAndWait(final)) return;  // another channel failed
        r.iterations = ++iteration;
        if (progress && r.id == 0) progress->iteration = iteration;
        final_done = final;
        break;
      }
      case wire::kEnd: {
        if (r.id != 0 || !final_done) {
          throw Error(ErrorKind::kIntegrity, EBADMSG, who + "invalid packet: END before the final barrier or on channel " +
                                   std::to_string(r.id));
        }
        Sha256::Digest d;
        if (!ch.Read(d.data(), d.size())) throw Error(ErrorKind::kPeer, EPIPE, who + "stream ended inside END");
        r.end_digest = d;
        return;
      }
    }
  }
}

}  // namespace

namespace {

void SendU32Pair(Channel& ch, uint32_t magic, uint32_t status) {
  uint8_t buf[wire::kAckSize];
  wire::EncodeU32Pair(magic, status, buf);
  ch.write_all(buf, sizeof(buf));
}

// Best effort: the peer may already be gone, and the error that matters is
// the one being reported.
void TrySendU32Pair(Channel& ch, uint32_t magic, uint32_t status) {
  try {
    SendU32Pair(ch, magic, status);
  } catch (const Error&) {
  }
}

struct AcceptedSession {
  wire::Hello first;
  std::vector<OpenedChannel> by_id;  // indexed by channel id
};

// Phase 1: accept until every channel of one session has introduced itself.
// Anything else (failed handshake, bad hello, foreign session, duplicate
// channel id) is a stray: answered if possible, logged, and dropped; no page
// is read from it.
AcceptedSession AcceptSession(Listener& listener, const DestinationOptions& opts, Clock::time_point deadline) {
  auto log = [&](const std::string& s) {
    if (opts.log) opts.log(s);
  };
  AcceptedSession session;
  std::optional<wire::Hello> first;
  size_t accepted = 0;
  while (!first || accepted < first->channel_count) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      throw Error(ErrorKind::kTimeout, ETIMEDOUT,
                  first ? "only " + std::to_string(accepted) + " of " + std::to_string(first->channel_count) +
                              " channels arrived before the accept timeout"
                        : "no migration arrived before the accept timeout");
    }
    UniqueFd fd;
    try {
      fd = listener.AcceptFd(left);
    } catch (const Error& e) {
      if (e.kind() == ErrorKind::kTimeout) continue;  // the loop head reports what was missing
      throw;
    }
    const std::string peer = SockName(fd.get(), true);
    OpenedChannel oc;
    try {
      SecurityConfig sec = opts.security;
      if (sec.tls) sec.tls_options.handshake_timeout = std::min(sec.tls_options.handshake_timeout, opts.hello_timeout);
      oc = OpenServerChannel(std::move(fd), sec);
    } catch (const Error& e) {
      log("rejected connection from " + peer + ": " + e.what());
      continue;
    }
    wire::Hello h;
    try {
      uint8_t buf[wire::kHelloSize];
      if (!oc.channel->wait_readable(opts.hello_timeout)) {
        throw Error(ErrorKind::kTimeout, ETIMEDOUT,
                    "sent no channel hello within " + std::to_string(opts.hello_timeout.count()) + " ms");
      }
      if (!oc.channel->read_all(buf, sizeof(buf))) throw Error(ErrorKind::kPeer, EPIPE, "closed before its hello");
      h = wire::DecodeHello(buf);
    } catch (const Error& e) {
      log("rejected connection from " + peer + ": " + e.what());
      TrySendU32Pair(*oc.channel, wire::kAckMagic, e.code() == EPROTO ? wire::kRejectedVersion : wire::kFailed);
      continue;
    }
    uint32_t status = wire::kOk;
    if (first) {
      if (h.session != first->session) status = wire::kRejectedSession;
      else if (h.channel_count != first->channel_count) status = wire::kRejectedChannel;
      else if (h.image_size != first->image_size || h.page_size != first->page_size) status = wire::kRejectedGeometry;
      else if (session.by_id[h.channel_id].channel) status = wire::kRejectedChannel;
    }
    if (status != wire::kOk) {
      log("rejected channel " + std::to_string(h.channel_id) + " from " + peer + " (session " +
          wire::UuidString(h.session) + "): " + wire::StatusText(status));
      TrySendU32Pair(*oc.channel, wire::kAckMagic, status);
      continue;
    }
    if (!first) {
      first = h;
      session.by_id.resize(h.channel_count);
    }
    SendU32Pair(*oc.channel, wire::kAckMagic, wire::kOk);
    session.by_id[h.channel_id] = std::move(oc);
    ++accepted;
  }
  session.first = *first;
  return session;
}

// Phase 2: one receiver thread per channel until the final barrier (and END
// on channel 0). The first failure aborts every receiver and is thrown.
std::vector<Receiver> ReceiveImage(AcceptedSession& session, const wire::Geometry& g, uint8_t* image,
                                   Progress* progress) {
  const size_t n = session.by_id.size();
  std::vector<Receiver> rx(n);
  IterationBarrier barrier(n);
  FirstFailure failure;
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    rx[i].id = static_cast<int>(i);
    rx[i].ch = session.by_id[i].channel.get();
    threads.emplace_back([&, i] {
      try {
        ReceiveChannel(rx[i], g, image, barrier, progress);
      } catch (const std::exception& e) {
        failure.Record(e, [&] {
          barrier.Abort();
          // Wake the other receivers out of their reads.
          for (auto& c : session.by_id) {
            try { c.channel->shutdown(ShutdownHow::kRead); } catch (...) {}
          }
        });
      }
    });
  }
  for (auto& t : threads) t.join();
  failure.ThrowIfFailed();  // the caller's TempImage removes the file
  if (!rx[0].end_digest) {
    throw Error(ErrorKind::kPeer, EPIPE, "the source never sent END; the image is incomplete and was discarded");
  }
  return rx;
}

// Phase 3: the end-to-end check before the image may appear under its final
// name, the commit, and DONE to the source.
std::string VerifyAndCommit(AcceptedSession& session, TempImage& image, const Sha256::Digest& expected,
                            const std::string& output) {
  Channel& ch0 = *session.by_id[0].channel;
  const Sha256::Digest got = image.Digest();
  const std::string digest = Sha256::Hex(got);
  if (got != expected) {
    TrySendU32Pair(ch0, wire::kDoneMagic, wire::kDigestMismatch);
    throw Error(ErrorKind::kIntegrity, EBADMSG,
                "image digest mismatch: received " + digest + ", source had " + Sha256::Hex(expected) +
                    "; the image was discarded");
  }
  image.Commit(output);
  SendU32Pair(ch0, wire::kDoneMagic, wire::kOk);
  // The source answers with close_notify; wait for it so its last read
  // never races our close.
  uint8_t tail;
  try {
    ch0.read_all(&tail, 1);
  } catch (const Error&) {
  }
  return digest;
}

// Phase 4: the report.
MigrationReport BuildReport(const AcceptedSession& session, const std::vector<Receiver>& rx) {
  MigrationReport rep;
  rep.session = wire::UuidString(session.first.session);
  rep.image_size = session.first.image_size;
  rep.page_size = session.first.page_size;
  for (size_t i = 0; i < rx.size(); ++i) {
    rep.pages += rx[i].pages;
    rep.zero_pages += rx[i].zero_pages;
    rep.data_bytes += rx[i].data_bytes;
    rep.iterations = std::max(rep.iterations, rx[i].iterations);
    ChannelReport cr;
    cr.path = session.by_id[i].path;
    cr.ktls = session.by_id[i].ktls;
    cr.zero_copy = session.by_id[i].zero_copy;
    cr.stats = session.by_id[i].channel->stats();
    rep.channels.push_back(cr);
  }
  return rep;
}

}  // namespace

MigrationReport RunDestination(Listener& listener, const DestinationOptions& opts) {
  const auto t0 = Clock::now();
  AcceptedSession session = AcceptSession(listener, opts, t0 + opts.accept_timeout);
  const wire::Geometry g{session.first.image_size, session.first.page_size};
  if (opts.progress) opts.progress->total_bytes = g.image_size;
  TempImage image(opts.output, g.image_size, g.padded_size(), opts.temp_file_hook);
  const std::vector<Receiver> rx = ReceiveImage(session, g, image.data(), opts.progress);
  const std::string digest = VerifyAndCommit(session, image, *rx[0].end_digest, opts.output);
  MigrationReport rep = BuildReport(session, rx);
  rep.digest = digest;
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

}  // namespace ktm

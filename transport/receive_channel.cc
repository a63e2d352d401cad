#include "transport/receive_channel.h"

#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <span>
#include <thread>

#include "base/error.h"
#include "transport/first_failure.h"
#include "transport/iteration_barrier.h"

namespace ktm {
namespace {

// Channel reads of one receiver: every failure names the channel, and a
// peer that disappears is named as such.
class ChannelReader {
 public:
  ChannelReader(Channel& ch, int id, const std::string& peer)
      : ch_(ch), who_("channel " + std::to_string(id) + " (from " + peer + "): ") {}
  const std::string& who() const { return who_; }
  // What the channel was doing, for timeouts ("receiving iteration 2").
  void set_phase(std::string phase) { phase_ = std::move(phase); }

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
    if (e.kind() == ErrorKind::kTimeout) return e.WithContext(who_ + phase_ + ": ");
    if (e.kind() == ErrorKind::kPeer) {
      return Error(e.kind(), e.code(),
                   who_ + "the source vanished mid-migration (" + e.what() +
                       "); the image is incomplete and was discarded");
    }
    return e.WithContext(who_);
  }
  Channel& ch_;
  std::string who_;
  std::string phase_ = "receiving iteration 0";
};

// Reads one channel until its end (EOF after the final SYNC, or END on
// channel 0), applying pages to the target with iteration barriers and
// keeping each page's digest.
class ChannelReceiver {
 public:
  ChannelReceiver(Receiver& r, const wire::Geometry& g, const ImageTarget& target, PageDigests& digests,
                  IterationBarrier& barrier, Progress* progress);

  // Throws the first Error of this channel (named); returns at its end or
  // once another channel has aborted the barrier.
  void Run();

 private:
  wire::PacketHeader Decode(const uint8_t* hdr);
  void OnPages(const uint8_t* hdr, const wire::PacketHeader& h);
  void ZeroPages(const wire::PacketHeader& h);
  void FilePages(const wire::PacketHeader& h);
  void MemoryPages(const wire::PacketHeader& h);
  bool OnSync(const wire::PacketHeader& h);  // false: another channel failed
  void OnEnd();
  [[noreturn]] void OnAbort(const wire::PacketHeader& h);

  Error Invalid(const std::string& what) const {
    return Error(ErrorKind::kIntegrity, EBADMSG, ch_.who() + "invalid packet: " + what);
  }
  Error EndedInsidePacket() const {
    return Error(ErrorKind::kPeer, EPIPE, ch_.who() + "stream ended inside a packet");
  }
  void CountData(uint32_t pages) {
    r_.data_bytes += uint64_t{pages} * g_.page_size;
    if (progress_) progress_->bytes += uint64_t{pages} * g_.page_size;
  }

  Receiver& r_;
  const wire::Geometry& g_;
  const ImageTarget& target_;
  uint8_t* const image_;  // target_.memory: nullptr for a file
  PageDigests& digests_;
  IterationBarrier& barrier_;
  Progress* const progress_;
  ChannelReader ch_;
  // File target: pages land here first (256 KiB: a source packet, in L2).
  const uint32_t bounce_pages_;
  std::vector<uint8_t> bounce_, zeros_;
  std::vector<uint64_t> offsets_;
  std::vector<iovec> iov_;
  uint64_t expect_packet_ = 0;
  uint32_t iteration_ = 0;
  bool final_done_ = false;
};

ChannelReceiver::ChannelReceiver(Receiver& r, const wire::Geometry& g, const ImageTarget& target,
                                 PageDigests& digests, IterationBarrier& barrier, Progress* progress)
    : r_(r),
      g_(g),
      target_(target),
      image_(target.memory),
      digests_(digests),
      barrier_(barrier),
      progress_(progress),
      ch_(*r.ch, r.id, r.peer),
      bounce_pages_(std::max<uint32_t>(1, (256u << 10) / g.page_size)),
      offsets_(wire::kMaxPagesPerPacket) {
  if (!image_) {
    bounce_.resize(size_t{bounce_pages_} * g.page_size);
    zeros_.assign(bounce_.size(), 0);
  }
  iov_.reserve(wire::kMaxPagesPerPacket);
}

void ChannelReceiver::Run() {
  for (;;) {
    uint8_t hdr[wire::kHeaderSize];
    if (!ch_.Read(hdr, sizeof(hdr))) {
      if (final_done_ && r_.id != 0) return;
      throw Error(ErrorKind::kPeer, EPIPE, ch_.who() + "the source closed the stream before the final barrier (source "
                                                       "killed?); the image is incomplete and was discarded");
    }
    const wire::PacketHeader h = Decode(hdr);
    switch (h.type) {
      case wire::kPages:
      case wire::kZero:
        OnPages(hdr, h);
        break;
      case wire::kSync:
        if (!OnSync(h)) return;
        break;
      case wire::kEnd:
        OnEnd();
        return;
      case wire::kAbort:
        OnAbort(h);
    }
  }
}

// Decodes a header and checks that it is the next packet of the stream.
wire::PacketHeader ChannelReceiver::Decode(const uint8_t* hdr) {
  wire::PacketHeader h;
  try {
    h = wire::DecodeHeader(hdr, g_);
  } catch (const Error& e) {
    throw e.WithContext(ch_.who());
  }
  if (h.packet_num != expect_packet_) {
    throw Invalid("number " + std::to_string(h.packet_num) + ", expected " + std::to_string(expect_packet_));
  }
  ++expect_packet_;
  return h;
}

// A PAGES or ZERO packet: its offsets, then its pages to the target.
void ChannelReceiver::OnPages(const uint8_t* hdr, const wire::PacketHeader& h) {
  if (final_done_) throw Invalid("pages after the final barrier");
  if (h.iteration != iteration_) {
    throw Invalid("pages of iteration " + std::to_string(h.iteration) + " while receiving iteration " +
                  std::to_string(iteration_));
  }
  if (!ch_.Read(offsets_.data(), h.page_count * sizeof(uint64_t))) throw EndedInsidePacket();
  try {
    wire::ValidateOffsets(hdr, h, offsets_.data(), g_);
  } catch (const Error& e) {
    throw e.WithContext(ch_.who());
  }
  if (h.type == wire::kZero) {
    ZeroPages(h);
  } else if (!image_) {
    FilePages(h);
  } else {
    MemoryPages(h);
  }
  r_.pages += h.page_count;
  if (progress_) progress_->pages += h.page_count;
}

void ChannelReceiver::ZeroPages(const wire::PacketHeader& h) {
  if (!image_) {
    // Written even into the fresh file: left as the reserved (unwritten)
    // blocks, zero pages scattered among data pages split the file into a
    // great many extents, which made the fsync and deleting the image
    // slower; written, the file stays a handful of extents.
    for (uint32_t i = 0; i < h.page_count; i += bounce_pages_) {
      WritePages(target_, zeros_.data(), &offsets_[i], std::min(bounce_pages_, h.page_count - i), g_.page_size);
    }
  } else {
    // Cleared in every iteration, even the first: the memory may be the
    // caller's, holding older bytes, and the digest below vouches for a
    // zero page only if the image really holds one.
    for (uint32_t i = 0; i < h.page_count; ++i) std::memset(image_ + offsets_[i], 0, g_.page_size);
  }
  for (uint32_t i = 0; i < h.page_count; ++i) digests_.SetZero(offsets_[i] / g_.page_size);
  r_.zero_pages += h.page_count;
}

// File target: read a bounce buffer's worth, hash it, pwrite it.
void ChannelReceiver::FilePages(const wire::PacketHeader& h) {
  for (uint32_t i = 0; i < h.page_count; i += bounce_pages_) {
    const uint32_t n = std::min(bounce_pages_, h.page_count - i);
    if (!ch_.Read(bounce_.data(), size_t{n} * g_.page_size)) throw EndedInsidePacket();
    for (uint32_t k = 0; k < n; ++k) {
      digests_.Update(offsets_[i + k] / g_.page_size, bounce_.data() + size_t{k} * g_.page_size);
    }
    WritePages(target_, bounce_.data(), &offsets_[i], n, g_.page_size);
  }
  CountData(h.page_count);
}

// Receive straight into the image in memory. On kTLS the source sends the
// run in whole records of its own (WritePacket), and the header and offsets
// were read with reads of their own size: so this one read covers whole
// records and the kernel decrypts them in place, into the image (TLS 1.3:
// with TLS_RX_EXPECT_NO_PAD). Reading header and run in one go, or the
// header into a bigger buffer, would make it copy a record of the run.
void ChannelReceiver::MemoryPages(const wire::PacketHeader& h) {
  iov_.clear();
  for (uint32_t i = 0; i < h.page_count; ++i) {
    uint8_t* p = image_ + offsets_[i];
    if (!iov_.empty() && static_cast<uint8_t*>(iov_.back().iov_base) + iov_.back().iov_len == p) {
      iov_.back().iov_len += g_.page_size;
    } else {
      iov_.push_back({p, g_.page_size});
    }
  }
  if (!ch_.ReadV(iov_)) throw EndedInsidePacket();
  // Hash what arrived while it is still in cache: the image digest at the
  // end then only hashes the page digests.
  for (uint32_t i = 0; i < h.page_count; ++i) digests_.Update(offsets_[i] / g_.page_size, image_ + offsets_[i]);
  CountData(h.page_count);
}

bool ChannelReceiver::OnSync(const wire::PacketHeader& h) {
  if (final_done_ || h.iteration != iteration_) {
    throw Invalid("duplicate or out-of-order SYNC for iteration " + std::to_string(h.iteration) + " (expected " +
                  std::to_string(iteration_) + ")");
  }
  const bool final = h.flags & wire::kFlagFinal;
  if (!barrier_.ArriveAndWait(final)) return false;
  r_.iterations = ++iteration_;
  ch_.set_phase(final ? "waiting for the end of the stream" : "receiving iteration " + std::to_string(iteration_));
  if (progress_ && r_.id == 0) progress_->iteration = iteration_;
  final_done_ = final;
  return true;
}

void ChannelReceiver::OnEnd() {
  if (r_.id != 0 || !final_done_) {
    throw Invalid("END before the final barrier or on channel " + std::to_string(r_.id));
  }
  ImageHash d;
  if (!ch_.Read(d.data(), d.size())) throw Error(ErrorKind::kPeer, EPIPE, ch_.who() + "stream ended inside END");
  r_.end_digest = d;
}

// The source gave up and said why: fail with its kind of error (so both
// ends exit with the same code), not as a vanished peer.
void ChannelReceiver::OnAbort(const wire::PacketHeader& h) {
  uint8_t payload[wire::kMaxAbortPayload];
  if (!ch_.Read(payload, h.payload_len)) throw Error(ErrorKind::kPeer, EPIPE, ch_.who() + "stream ended inside ABORT");
  wire::AbortNote note;
  try {
    note = wire::DecodeAbortPayload(payload, h.payload_len);
  } catch (const Error& e) {
    throw e.WithContext(ch_.who());
  }
  const ErrorKind kind = note.kind == wire::kAbortLocalIo    ? ErrorKind::kLocalIo
                         : note.kind == wire::kAbortUsage    ? ErrorKind::kUsage
                         : note.kind == wire::kAbortSecurity ? ErrorKind::kSecurity
                                                             : ErrorKind::kInternal;
  throw Error(kind, ECANCELED,
              "the source gave up: " + note.reason + " (the image is incomplete and was discarded)");
}

// The DONE status that tells the source why the destination failed;
// kFailed: none that the source would read.
uint32_t DoneStatusFor(const std::exception& e) {
  const auto* ke = dynamic_cast<const Error*>(&e);
  const ErrorKind kind = ke ? ke->kind() : ErrorKind::kInternal;
  if (ke && ke->code() == ECANCELED) return wire::kFailed;  // the source's own ABORT
  return kind == ErrorKind::kIntegrity ? wire::kRefusedData
         : kind == ErrorKind::kLocalIo ? wire::kCommitFailed
         : kind == ErrorKind::kTimeout ? wire::kTimedOut
                                       : wire::kFailed;
}

}  // namespace

std::vector<Receiver> ReceiveImage(AcceptedSession& session, const wire::Geometry& g, const ImageTarget& image,
                                   PageDigests& digests, Progress* progress) {
  const size_t n = session.by_id.size();
  std::vector<Receiver> rx(n);
  IterationBarrier barrier(n);
  FirstFailure failure;
  auto on_first_failure = [&](const std::exception& e) {
    // Tell the source why before anything else: once the other receivers
    // are woken below their TLS sessions are dead and could carry nothing.
    // On every channel: the failing one may not carry it (a TLS session is
    // dead after a forged record); the source reads whichever still can, so
    // both ends exit with the same code.
    const uint32_t st = DoneStatusFor(e);
    if (st != wire::kFailed) {
      for (auto& c : session.by_id) TrySendU32Pair(*c.channel, wire::kDoneMagic, st);
    }
    barrier.Abort();
    // Wake the other receivers out of their reads.
    for (auto& c : session.by_id) c.channel->shutdown(ShutdownHow::kRead);  // never throws
  };
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    rx[i].id = static_cast<int>(i);
    rx[i].ch = session.by_id[i].channel.get();
    rx[i].peer = session.by_id[i].peer;
    threads.emplace_back([&, i] {
      try {
        ChannelReceiver(rx[i], g, image, digests, barrier, progress).Run();
      } catch (const std::exception& e) {
        failure.Record(e, [&] { on_first_failure(e); });
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

}  // namespace ktm

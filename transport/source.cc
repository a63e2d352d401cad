#include <sys/uio.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <optional>

#include "base/error.h"
#include "transport/channel_worker.h"
#include "transport/first_failure.h"
#include "transport/migration.h"
#include "transport/phase_clock.h"
#include "util/image_digest.h"

namespace ktm {
namespace {

using Clock = std::chrono::steady_clock;
constexpr uint32_t kDataPagesPerPacket = 64;  // 256 KiB of 4 KiB pages per sendmsg
constexpr size_t kHeaderSlots = 64;
// Items a channel worker's lane holds: a pass is two (pages, SYNC), END
// one; room for the urgent requests of later protocols.
constexpr size_t kQueueDepth = 8;

// Sends one channel's share of the pages. Header+offsets live in a ring of
// slots; a slot is reused only after the channel has released the write it
// went out with (zero copy pins the header page too), so no header is ever
// rewritten under the kernel. No heap allocation per page: all buffers are
// sized once.
class ChannelSender {
 public:
  ChannelSender(Channel& ch, const PageSource& src, PageDigests& digests, Progress* progress)
      : ch_(ch), src_(src), digests_(digests), progress_(progress), slots_(kHeaderSlots) {
    for (auto& s : slots_) s.buf.resize(wire::kHeaderSize + sizeof(uint64_t) * wire::kMaxPagesPerPacket);
    iov_.reserve(kDataPagesPerPacket + 1);
    data_.reserve(kDataPagesPerPacket);
    zero_.reserve(wire::kMaxPagesPerPacket);
  }

  void SendPages(const uint64_t* pages, size_t n, uint32_t iteration) {
    iteration_ = iteration;
    const uint32_t ps = src_.page_size();
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* p = src_.data() + pages[i] * ps;
      // Each page is hashed as it goes out (it is in cache now, and the
      // TLS library reads it next): the image digest at switch-over then
      // only hashes the page digests.
      if (IsZeroPage(p, ps)) {
        digests_.SetZero(pages[i]);
        zero_.push_back(pages[i] * ps);
        if (zero_.size() == wire::kMaxPagesPerPacket) FlushZero();
      } else {
        digests_.Update(pages[i], p);
        data_.push_back(pages[i] * ps);
        if (data_.size() == kDataPagesPerPacket) FlushData();
      }
    }
    FlushData();
    FlushZero();
  }

  // Ends the iteration: every zero-copy write released, then SYNC.
  void Sync(uint32_t iteration, bool final) {
    ch_.flush();
    wire::PacketHeader h;
    h.type = wire::kSync;
    h.iteration = iteration;
    h.flags = final ? wire::kFlagFinal : 0;
    SendControl(h, nullptr, 0);
  }

  void End(const ImageHash& digest) {
    wire::PacketHeader h;
    h.type = wire::kEnd;
    h.iteration = iteration_;
    h.payload_len = wire::kDigestSize;
    SendControl(h, digest.data(), digest.size());
  }

  // The source gives up: tells the destination why (capability
  // abort-reason), so it fails with the same kind of error.
  void Abort(const wire::AbortNote& note) {
    uint8_t payload[wire::kMaxAbortPayload];
    wire::PacketHeader h;
    h.type = wire::kAbort;
    h.iteration = iteration_;
    h.payload_len = static_cast<uint32_t>(wire::EncodeAbortPayload(note, payload));
    SendControl(h, payload, h.payload_len, kWriteLastWords);
  }

  uint64_t pages() const { return pages_; }
  uint64_t zero_pages() const { return zero_pages_; }
  uint64_t data_bytes() const { return data_bytes_; }

 private:
  struct Slot {
    std::vector<uint8_t> buf;
    ZeroCopyIds ids;
  };

  Slot& NextSlot() {
    Slot& s = slots_[next_slot_++ % slots_.size()];
    if (!ch_.is_released(s.ids)) {
      ch_.try_flush();
      if (!ch_.is_released(s.ids)) ch_.flush();
    }
    return s;
  }

  uint8_t* Header(Slot& s, wire::PacketHeader& h, const std::vector<uint64_t>& offs) {
    h.packet_num = packet_num_++;
    h.page_size = src_.page_size();
    h.page_count = static_cast<uint32_t>(offs.size());
    wire::EncodeHeader(h, offs.data(), s.buf.data());  // the offsets follow the header
    return s.buf.data();
  }

  void FlushData() {
    if (data_.empty()) return;
    const uint32_t ps = src_.page_size();
    EnsurePacketFits(wire::kHeaderSize + data_.size() * (sizeof(uint64_t) + ps));
    Slot& s = NextSlot();
    wire::PacketHeader h;
    h.type = wire::kPages;
    h.iteration = iteration_;
    uint8_t* hdr = Header(s, h, data_);
    iov_.clear();
    iov_.push_back({hdr, wire::kHeaderSize + data_.size() * sizeof(uint64_t)});
    // Pages straight from the image; neighbours merge into one iovec.
    for (uint64_t off : data_) {
      auto* p = const_cast<uint8_t*>(src_.data() + off);
      if (iov_.size() > 1 && static_cast<uint8_t*>(iov_.back().iov_base) + iov_.back().iov_len == p) {
        iov_.back().iov_len += ps;
      } else {
        iov_.push_back({p, ps});
      }
    }
    s.ids = WritePacket(ch_, iov_);  // kTLS: header and run in records of their own
    pages_ += data_.size();
    data_bytes_ += data_.size() * ps;
    if (progress_) {
      progress_->pages += data_.size();
      progress_->bytes += data_.size() * ps;
    }
    data_.clear();
  }

  void FlushZero() {
    if (zero_.empty()) return;
    EnsurePacketFits(wire::kHeaderSize + zero_.size() * sizeof(uint64_t));
    Slot& s = NextSlot();
    wire::PacketHeader h;
    h.type = wire::kZero;
    h.iteration = iteration_;
    uint8_t* hdr = Header(s, h, zero_);
    s.ids = ch_.write_all(hdr, wire::kHeaderSize + zero_.size() * sizeof(uint64_t), 0);
    pages_ += zero_.size();
    zero_pages_ += zero_.size();
    if (progress_) progress_->pages += zero_.size();
    zero_.clear();
  }

  // A packet this channel's send key can no longer carry whole (the key
  // cannot change: see Channel::send_budget) is not started: the failure
  // comes between packets, where the ABORT that follows can be read.
  // Two records of margin: a packet may end in a short record per write.
  void EnsurePacketFits(size_t bytes) {
    const uint64_t budget = ch_.send_budget();
    if (budget == UINT64_MAX || bytes + 2 * 16384 <= budget) return;
    const ChannelStats st = ch_.stats();
    throw Error(ErrorKind::kSecurity, EKEYEXPIRED,
                "the TLS send key reached its limit (" + std::to_string(st.rekey.limit_records) + " records" +
                    (st.rekey.limit_bytes ? " or " + std::to_string(st.rekey.limit_bytes) + " bytes" : "") +
                    ") and cannot change: " + st.rekey.detail + "; nothing more is sent under it");
  }

  void SendControl(wire::PacketHeader& h, const uint8_t* payload, size_t len, unsigned flags = 0) {
    if (!(flags & kWriteLastWords)) EnsurePacketFits(wire::kHeaderSize + len);
    uint8_t buf[wire::kHeaderSize + std::max(wire::kDigestSize, wire::kMaxAbortPayload)];
    h.packet_num = packet_num_++;
    h.page_size = src_.page_size();
    h.page_count = 0;
    wire::EncodeHeader(h, nullptr, buf);
    if (len) std::memcpy(buf + wire::kHeaderSize, payload, len);
    ch_.write_all(buf, wire::kHeaderSize + len, flags);
  }

  Channel& ch_;
  const PageSource& src_;
  PageDigests& digests_;
  Progress* progress_;
  std::vector<Slot> slots_;
  size_t next_slot_ = 0;
  std::vector<iovec> iov_;
  std::vector<uint64_t> data_, zero_;
  uint64_t packet_num_ = 0;
  uint32_t iteration_ = 0;
  uint64_t pages_ = 0, zero_pages_ = 0, data_bytes_ = 0;
};

// The kind of failure a destination status stands for, so both ends exit
// with the same code.
ErrorKind KindOfStatus(uint32_t st) {
  switch (st) {
    case wire::kNoSpace:
    case wire::kCommitFailed:
      return ErrorKind::kLocalIo;
    case wire::kDigestMismatch:
    case wire::kInvalidHello:
    case wire::kRefusedData:
      return ErrorKind::kIntegrity;
    case wire::kTimedOut:
      return ErrorKind::kTimeout;
    case wire::kRejectedVersion:
    case wire::kRejectedCapability:
    case wire::kRejectedSession:
    case wire::kRejectedChannel:
    case wire::kRejectedGeometry:
      return ErrorKind::kSecurity;
    default:
      return ErrorKind::kPeer;
  }
}

// Our writes failed because the destination went away. If it said why
// first (an early DONE with a status, sent on every channel that can still
// carry it), report that, so both ends exit with the same kind; otherwise
// `cause` stands. The destination sends its verdict before it closes
// anything, but on a slow or loaded machine it (or a path between) may get
// there later than our failure: so the channels are watched in turn,
// `first` first, until one has a verdict, or every one has ended (EOF or an
// error: nothing more can come; a destination that exits ends them all at
// once), or `bound` has passed. Returns the status, or kOk for none.
// A read that fails with an integrity error is a verdict too (kRefusedData,
// the error in `*refused`): over TLS the channel that carried a bad record
// is dead at the destination and cannot carry DONE, but its TLS alert
// (bad_record_mac) arrives in its place.
// Reading while the channel's sender thread writes is fine: a session takes
// one reader and one writer.
uint32_t AwaitVerdict(std::vector<OpenedChannel>& chans, size_t first, std::chrono::milliseconds bound,
                      std::optional<Error>* refused) {
  const auto deadline = Clock::now() + bound;
  std::vector<bool> ended(chans.size(), false);
  size_t open = chans.size();
  while (open > 0) {
    for (size_t k = 0; k < chans.size(); ++k) {
      const size_t c = (first + k) % chans.size();
      if (ended[c]) continue;
      Channel& ch = *chans[c].channel;
      try {
        if (!ch.wait_readable(std::chrono::milliseconds(20))) continue;
        uint8_t done[wire::kAckSize];
        if (ch.read_all(done, sizeof(done))) return wire::DecodeU32Pair(wire::kDoneMagic, done, "completion message");
      } catch (const Error& e) {
        if (e.kind() == ErrorKind::kIntegrity) {
          *refused = e;
          return wire::kRefusedData;
        }
        // otherwise this channel cannot tell
      }
      ended[c] = true;
      --open;
    }
    if (Clock::now() >= deadline) break;
  }
  return wire::kOk;
}

// How long a failing source waits for the destination's verdict at most:
// the io timeout, but never more than 5 s (the verdict is sent before the
// destination closes anything; a destination that exits ends the wait).
std::chrono::milliseconds VerdictBound(const SourceOptions& opts) {
  const std::chrono::milliseconds cap(5000);
  return opts.io_timeout.count() >= 0 ? std::min(cap, opts.io_timeout) : cap;
}

Error VerdictError(uint32_t st, const Error& cause, const std::optional<Error>& refused) {
  const std::string why = refused ? refused->what() : wire::StatusText(st);
  return Error(KindOfStatus(st), EIO,
               std::string("the destination stopped the migration: ") + why + " (here: " + cause.what() + ")");
}

// After the workers are idle: nobody else uses the channels now.
void ThrowDestinationVerdict(std::vector<OpenedChannel>& chans, const Error& cause, std::chrono::milliseconds bound) {
  for (auto& c : chans) {
    try {
      c.channel->set_io_timeout(bound);  // a half-arrived verdict cannot hold us longer
    } catch (const Error&) {
    }
  }
  std::optional<Error> refused;
  const uint32_t st = AwaitVerdict(chans, 0, bound, &refused);
  if (st != wire::kOk) throw VerdictError(st, cause, refused);
}

// Reads channel `i`'s acknowledgement. A plaintext source talking to a TLS
// destination gets the alert its handshake sent instead (a TLS record:
// type 21, version 3.x; 7 bytes) and then the end of the stream: that is
// said as such (kSecurity), not as a truncated message.
void ReadAck(Channel& ch, bool tls, int i, uint8_t ack[wire::kAckSize]) {
  size_t got = 0;
  while (got < wire::kAckSize) {
    iovec v{ack + got, wire::kAckSize - got};
    const ReadResult r = ch.readv(std::span<const iovec>(&v, 1));
    if (r.would_block) {  // a non-blocking channel: wait as readv would
      if (!ch.wait_readable(ch.io_timeout(/*for_write=*/false))) {
        throw Error(ErrorKind::kTimeout, ETIMEDOUT, "no acknowledgement of channel " + std::to_string(i));
      }
      continue;
    }
    if (r.eof()) break;
    got += r.bytes;
  }
  if (got == wire::kAckSize) return;
  const std::string which = "channel " + std::to_string(i);
  if (!tls && got >= 3 && (ack[0] == 21 || ack[0] == 22) && ack[1] == 3) {
    throw Error(ErrorKind::kSecurity, EPROTO,
                "the destination answered " + which + " with a TLS record, not an acknowledgement: it needs TLS, "
                    "and this source runs without it",
                Remedy::kPeerUsesTls);
  }
  if (got == 0) {
    throw Error(ErrorKind::kPeer, ECONNRESET, "destination closed " + which + " before acknowledging it");
  }
  throw Error(ErrorKind::kPeer, EPIPE, "destination closed " + which + " after " + std::to_string(got) + " of " +
                                           std::to_string(wire::kAckSize) + " bytes of its acknowledgement");
}

// Phase 1: connect and introduce every channel before any page moves, so a
// bad certificate or a refusing destination stops the migration up front.
// `agreed_caps`: the capabilities agreed with the destination (the same on
// every channel: one destination, one session).
std::vector<OpenedChannel> OpenChannels(const PageSource& src, const SourceOptions& opts, const wire::Uuid& uuid,
                                        uint32_t& agreed_caps) {
  std::vector<OpenedChannel> chans;
  uint32_t rekey_withheld = 0;  // from channel 0: the hello's offer is the same on every channel
  for (int i = 0; i < opts.channels; ++i) {
    chans.push_back(OpenClientChannel(opts.address, opts.security, opts.connect_timeout));
    chans.back().channel->set_io_timeout(opts.io_timeout);
    if (i == 0) {
      const ChannelStats st = chans.back().channel->stats();
      rekey_withheld = wire::RekeyWithheld(st.rekey.applies, st.rekey.can_rekey);
    }
    wire::Hello h;
    h.channel_id = static_cast<uint16_t>(i);
    h.channel_count = static_cast<uint16_t>(opts.channels);
    h.session = uuid;
    h.image_size = src.size();
    h.page_size = src.page_size();
    h.digest = static_cast<uint16_t>(opts.digest);
    // It cannot do without its digest algorithm, nor (yet) without ZERO packets.
    const wire::Offer offer =
        wire::LocalOffer(opts.capabilities_withheld | rekey_withheld,
                         wire::DigestCapability(h.digest) | wire::kCapZeroPages | opts.capabilities_required);
    h.offered = offer.offered;
    h.required = offer.required;
    uint8_t buf[wire::kHelloSize];
    wire::EncodeHello(h, buf);
    chans.back().channel->write_all(buf, sizeof(buf));
    uint8_t ack[wire::kHelloAckSize];
    ReadAck(*chans.back().channel, opts.security.tls, i, ack);
    const size_t rest = wire::HelloAckRest(ack);
    if (rest && !chans.back().channel->read_all(ack + wire::kAckSize, rest)) {
      throw Error(ErrorKind::kPeer, EPIPE,
                  "destination closed channel " + std::to_string(i) + " in its acknowledgement");
    }
    const wire::Agreement agreed = wire::SourceVerdict(offer, ack, wire::kAckSize + rest);
    if (agreed.status != wire::kOk) {
      throw Error(KindOfStatus(agreed.status), EPROTO,
                  "destination refused channel " + std::to_string(i) + ": " + agreed.why);
    }
    agreed_caps = agreed.caps;
    chans.back().channel->set_peer_follows_key_updates((agreed.caps & wire::kCapRekey) != 0);
  }
  if (opts.register_buffers) {
    const uint64_t padded = src.page_count() * src.page_size();
    for (auto& c : chans) {
      if (!c.channel->register_region(src.data(), padded)) {
        throw Error(ErrorKind::kUsage, EINVAL,
                    "registering the image as buffers needs the io_uring backend on plaintext channels (" + c.path +
                        ")",
                    Remedy::kIoUringBackend);
      }
      c.path = PlaintextPath(*c.channel);
    }
  }
  if (opts.wrap_channel) {
    for (auto& c : chans) c.channel = opts.wrap_channel(std::move(c.channel));
  }
  return chans;
}

// Timestamps of the switch-over, for the downtime report.
struct SwitchTimes {
  Clock::time_point freeze, final_sent, end_sent, done;
};

// Which error a failing channel reports. The peer went away: if the
// destination said why first, that is the error (so both ends agree). The
// other channels are probed at once, before the abort (their shutdown)
// makes their writers fail and the TLS library discard their sessions. One
// prober at a time: a session takes one reader. Runs as the workers'
// failure hook.
class FailureVerdict {
 public:
  FailureVerdict(std::vector<OpenedChannel>& chans, const SourceOptions& opts,
                 std::vector<std::unique_ptr<ChannelSender>>& senders, uint32_t agreed_caps)
      : chans_(chans), opts_(opts), senders_(senders), agreed_caps_(agreed_caps) {}

  void Record(const std::exception& e, size_t failing, FirstFailure& failure) {
    const auto* ke = dynamic_cast<const Error*>(&e);
    if (ke && ke->kind() == ErrorKind::kSecurity && ke->code() == EKEYEXPIRED) TellKeySpent(*ke, failing);
    std::optional<Error> verdict;
    // Held through Record below, so a peer failure that waits here cannot
    // record itself ahead of the verdict.
    std::unique_lock<std::mutex> g(mu_, std::defer_lock);
    if (ke && ke->kind() == ErrorKind::kPeer) {
      g.lock();
      if (!probed_) {
        probed_ = true;
        // The failing channel first: its write failed but what the
        // destination sent before resetting is still queued for reading.
        std::optional<Error> refused;
        const uint32_t st = AwaitVerdict(chans_, failing, VerdictBound(opts_), &refused);
        if (st != wire::kOk) verdict = VerdictError(st, *ke, refused);
      }
    }
    failure.Record(verdict ? static_cast<const std::exception&>(*verdict) : e, [&] {
      // Unblock the other senders.
      for (auto& c : chans_) c.channel->shutdown(ShutdownHow::kBoth);  // never throws
    });
  }

 private:
  // A channel's send key reached its limit and cannot change: its last
  // words (the record it kept back) tell the destination why, so both
  // ends fail with the security error. This is the failing channel's own
  // worker thread, its only writer. Best effort.
  void TellKeySpent(const Error& e, size_t failing) {
    if (!(agreed_caps_ & wire::kCapAbortReason)) return;
    wire::AbortNote note;
    note.kind = wire::kAbortSecurity;
    note.reason = std::string(e.what()).substr(0, wire::kMaxAbortReason);
    try {
      senders_[failing]->Abort(note);
    } catch (const std::exception&) {
      // The destination then sees a vanished source.
    }
  }

  std::vector<OpenedChannel>& chans_;
  const SourceOptions& opts_;
  std::vector<std::unique_ptr<ChannelSender>>& senders_;
  const uint32_t agreed_caps_;
  std::mutex mu_;
  bool probed_ = false;
};

// The precopy policy: when the dirty set has converged (or the iterations
// are spent) the source is frozen and the pass is the final one.
class Precopy {
 public:
  Precopy(PageSource& src, const SourceOptions& opts, MigrationReport& rep, PhaseClock& phases, SwitchTimes& times)
      : src_(src), opts_(opts), rep_(rep), phases_(phases), times_(times),
        converge_(opts.converge_pages ? opts.converge_pages : std::max<uint64_t>(64, src.page_count() / 256)) {}

  // Collects iteration `iter`'s pages into `dirty`; true for the final pass.
  bool Collect(uint32_t iter, std::vector<uint64_t>& dirty) {
    bool final = false;
    dirty.clear();
    src_.CollectDirty(dirty);
    // Converged, or out of iterations: stop the guest and send the rest.
    if (iter > 0 && (Converged(dirty.size()) || iter + 1 >= opts_.max_iterations)) {
      Freeze();
      src_.CollectDirty(dirty);
      std::sort(dirty.begin(), dirty.end());
      dirty.erase(std::unique(dirty.begin(), dirty.end()), dirty.end());
      final = true;
    }
    if (iter == 0 && (!src_.live() || opts_.max_iterations <= 1)) {
      Freeze();
      final = true;
    }
    if (final) {
      rep_.downtime.measured = src_.live();
      rep_.downtime.final_pages = dirty.size();
      rep_.downtime.expected_seconds = ExpectedSeconds(dirty.size());
    }
    rep_.dirty_per_iteration.push_back(dirty.size());
    if (opts_.progress) {
      opts_.progress->iteration = iter;
      opts_.progress->dirty_pages = dirty.size();
    }
    return final;
  }

  // An iteration of `pages` took `secs`. A tiny iteration measures
  // latency, not bandwidth: keep the last rate taken over a meaningful
  // amount of work.
  void Measured(size_t pages, double secs) {
    if (secs > 0.005 && pages >= 256) page_rate_ = pages / secs;
  }

 private:
  // Pages per second of the previous iteration: what the final pass is
  // expected to achieve (QEMU estimates its downtime the same way).
  double ExpectedSeconds(size_t pages) const { return page_rate_ > 0 ? pages / page_rate_ : 0.0; }

  bool Converged(size_t pages) const {
    if (opts_.max_downtime.count() > 0) {
      return page_rate_ > 0 && ExpectedSeconds(pages) * 1000 <= static_cast<double>(opts_.max_downtime.count());
    }
    return pages <= converge_;
  }

  void Freeze() {
    // A static image "freezes" before its only pass: that pass is the
    // transfer, and switch-over starts after it (RunSource).
    if (src_.live()) phases_.Begin("switch-over");
    times_.freeze = Clock::now();
    src_.Freeze();
  }

  PageSource& src_;
  const SourceOptions& opts_;
  MigrationReport& rep_;
  PhaseClock& phases_;
  SwitchTimes& times_;
  const uint64_t converge_;
  double page_rate_ = 0;
};

// Queues one pass on every channel's worker: its contiguous share of
// `dirty` (neighbouring pages stay on one channel, so their iovecs merge),
// then SYNC. `dirty` must stay untouched until the workers are idle.
void PostPass(ChannelWorkers& workers, std::vector<std::unique_ptr<ChannelSender>>& senders,
              const std::vector<OpenedChannel>& chans, const std::vector<uint64_t>& dirty, uint32_t iter, bool final) {
  const size_t n = senders.size();
  for (size_t c = 0; c < n; ++c) {
    const size_t lo = dirty.size() * c / n, hi = dirty.size() * (c + 1) / n;
    ChannelSender* sender = senders[c].get();
    auto context = [&peer = chans[c].peer, c, iter, final] {
      return "channel " + std::to_string(c) + " (to " + peer + "), " +
             (final ? "final pass" : "iteration " + std::to_string(iter)) + ": ";
    };
    const bool queued = workers.Post(c, [sender, pages = dirty.data() + lo, count = hi - lo, iter, context] {
      try {
        sender->SendPages(pages, count, iter);
      } catch (const Error& e) {
        throw e.WithContext(context());
      }
    }) && workers.Post(c, [sender, iter, final, context] {
      try {
        sender->Sync(iter, final);
      } catch (const Error& e) {
        throw e.WithContext(context());
      }
    });
    if (!queued) return;  // a channel failed: its error is recorded
  }
}

// Phase 2: precopy iterations until the dirty set converges (or the
// iteration limit), then the source is frozen and the final pass runs. Each
// iteration ends with a flush and SYNC on every channel, and waits for all
// of them (the workers' barrier) before the next dirty set is taken.
void StreamIterations(PageSource& src, const SourceOptions& opts, std::vector<OpenedChannel>& chans,
                      std::vector<std::unique_ptr<ChannelSender>>& senders, ChannelWorkers& workers,
                      MigrationReport& rep, PhaseClock& phases, SwitchTimes& times) {
  Precopy precopy(src, opts, rep, phases, times);
  std::vector<uint64_t> dirty;
  dirty.reserve(src.page_count());
  bool final = false;
  for (uint32_t iter = 0; !final; ++iter) {
    final = precopy.Collect(iter, dirty);
    const auto iter_start = Clock::now();
    PostPass(workers, senders, chans, dirty, iter, final);
    workers.WaitIdle();
    workers.ThrowIfFailed();
    rep.iterations = iter + 1;
    precopy.Measured(dirty.size(), std::chrono::duration<double>(Clock::now() - iter_start).count());
  }
  times.final_sent = Clock::now();
}

// Phase 3: switch-over. The image is frozen and every page is out; its
// digest (over the page digests kept while sending) is what the
// destination must hold. END on channel 0, then wait for DONE.
// The source's own failure before END: where the destination understands
// ABORT, tell it why on channel 0 (best effort, through that channel's
// worker: the workers are idle after the final pass), then fail.
[[noreturn]] void AbortMigration(const Error& e, uint32_t agreed_caps, ChannelSender& sender0,
                                 ChannelWorkers& workers) {
  if (agreed_caps & wire::kCapAbortReason) {
    wire::AbortNote note;
    note.kind = e.kind() == ErrorKind::kLocalIo ? wire::kAbortLocalIo
                : e.kind() == ErrorKind::kUsage ? wire::kAbortUsage
                                                : wire::kAbortInternal;
    note.reason = e.what();
    try {
      workers.Call(0, [&] { sender0.Abort(note); }).get();
    } catch (const std::exception&) {
      // The destination learns of the end anyway, as a vanished source.
    }
  }
  throw e;
}

std::string SwitchOver(const PageSource& src, const SourceOptions& opts, std::vector<OpenedChannel>& chans,
                       ChannelSender& sender0, ChannelWorkers& workers, const PageDigests& digests,
                       SwitchTimes& times, uint32_t agreed_caps) {
  try {
    src.Validate();
  } catch (const Error& e) {
    AbortMigration(e, agreed_caps, sender0, workers);
  }
  const ImageHash digest = digests.Final();
  Channel& ch0 = *chans[0].channel;
  // Channel 0's worker writes END (its errors come back here, as they
  // would from a direct call); the wait for DONE is this thread's.
  workers.Call(0, [&] { sender0.End(digest); }).get();
  times.end_sent = Clock::now();
  for (size_t c = 1; c < chans.size(); ++c) chans[c].channel->shutdown(ShutdownHow::kWrite);
  // DONE comes after the destination has verified and committed the image
  // (its fsync is proportional to the image): give it that time on top of
  // the io timeout.
  if (opts.io_timeout.count() >= 0) {
    ch0.set_io_timeout(opts.io_timeout + std::chrono::seconds(src.size() / (64u << 20)));
  }
  uint8_t done[wire::kAckSize];
  try {
    if (!ch0.read_all(done, sizeof(done))) {
      throw Error(ErrorKind::kPeer, ECONNRESET, "destination closed the connection before confirming the image");
    }
  } catch (const Error& e) {
    throw e.WithContext("channel 0 (to " + chans[0].peer + "), waiting for the destination to confirm the image: ");
  }
  times.done = Clock::now();
  uint32_t st = wire::DecodeU32Pair(wire::kDoneMagic, done, "completion message");
  if (st != wire::kOk) {
    throw Error(KindOfStatus(st), EIO, std::string("destination did not commit the image: ") + wire::StatusText(st));
  }
  try {
    ch0.shutdown(ShutdownHow::kWrite);
  } catch (const Error&) {
    // DONE said the image is committed: the outcome is decided. Our end of
    // stream only lets the destination close without waiting; if it cannot
    // be sent, the destination's wait ends with the connection anyway.
  }
  return DigestHex(opts.digest, digest);
}

void FillDowntime(const SwitchTimes& t, DowntimeReport& d) {
  auto secs = [](Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); };
  d.final_pages_seconds = secs(t.freeze, t.final_sent);
  d.digest_seconds = secs(t.final_sent, t.end_sent);
  d.confirm_seconds = secs(t.end_sent, t.done);
  d.total_seconds = secs(t.freeze, t.done);
}

// Phase 4: per-channel counters and paths.
void AddChannelReports(const SourceOptions& opts, const std::vector<OpenedChannel>& chans,
                       const std::vector<std::unique_ptr<ChannelSender>>& senders, MigrationReport& rep) {
  for (size_t c = 0; c < chans.size(); ++c) {
    rep.pages += senders[c]->pages();
    rep.zero_pages += senders[c]->zero_pages();
    rep.data_bytes += senders[c]->data_bytes();
    ChannelReport cr;
    cr.path = chans[c].path;
    cr.ktls = chans[c].ktls;
    cr.zero_copy = chans[c].zero_copy;
    cr.stats = chans[c].channel->stats();
    // A plaintext channel's path may have changed (io_uring fallback).
    if (!opts.security.tls) cr.path = PlaintextPath(*chans[c].channel);
    rep.channels.push_back(cr);
  }
}

}  // namespace

MigrationReport RunSource(PageSource& src, const SourceOptions& opts) {
  if (opts.channels < 1 || opts.channels > wire::kMaxChannels) {
    throw Error(ErrorKind::kUsage, EINVAL,
                "the channel count must be 1.." + std::to_string(wire::kMaxChannels) + ", not " +
                    std::to_string(opts.channels));
  }
  MigrationReport rep;
  const wire::Uuid uuid = wire::RandomUuid();
  rep.session = wire::UuidString(uuid);
  rep.image_size = src.size();
  rep.page_size = src.page_size();
  if (opts.progress) opts.progress->total_bytes = src.size();
  rep.digest_algorithm = opts.digest;
  const auto t0 = Clock::now();
  PhaseClock phases;
  phases.Begin("setup");

  uint32_t agreed_caps = 0;
  std::vector<OpenedChannel> chans = OpenChannels(src, opts, uuid, agreed_caps);
  PageDigests digests(opts.digest, src.size(), src.page_size());
  std::vector<std::unique_ptr<ChannelSender>> senders;
  for (auto& c : chans) {
    senders.push_back(std::make_unique<ChannelSender>(*c.channel, src, digests, opts.progress));
  }

  // One worker per channel for the whole migration; declared after what
  // its items use, so it is joined first.
  FailureVerdict verdict(chans, opts, senders, agreed_caps);
  ChannelWorkers workers(chans.size(), kQueueDepth, [&verdict](const std::exception& e, size_t c, FirstFailure& f) {
    verdict.Record(e, c, f);
  });

  phases.Begin("transfer");
  const auto transfer_start = Clock::now();
  SwitchTimes times;
  try {
    StreamIterations(src, opts, chans, senders, workers, rep, phases, times);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kPeer) ThrowDestinationVerdict(chans, e, VerdictBound(opts));
    throw;
  }
  rep.transfer_seconds = std::chrono::duration<double>(Clock::now() - transfer_start).count();
  if (!src.live()) phases.Begin("switch-over");
  try {
    rep.digest = SwitchOver(src, opts, chans, *senders[0], workers, digests, times, agreed_caps);
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::kPeer) ThrowDestinationVerdict(chans, e, VerdictBound(opts));
    throw;
  }
  workers.Stop();
  FillDowntime(times, rep.downtime);
  rep.phases = phases.Take();
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  AddChannelReports(opts, chans, senders, rep);
  return rep;
}

}  // namespace ktm

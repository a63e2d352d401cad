#include "transport/dest_session.h"

#include <optional>
#include <string>

#include "base/error.h"
#include "transport/admission.h"
#include "transport/image_store.h"

namespace ktm {
namespace {

using Clock = std::chrono::steady_clock;

// The session being assembled from admitted connections: the first valid
// hello fixes it, and each later connection joins it or is answered with a
// status and dropped.
class SessionBuilder {
 public:
  explicit SessionBuilder(const DestinationOptions& opts)
      : opts_(opts), offer_(wire::LocalOffer(opts.capabilities_withheld, opts.capabilities_required)) {}

  // Validates one finished connection: it joins the session or is answered
  // with a status and dropped. Throws (after answering kNoSpace) if the
  // first valid hello's image cannot be stored.
  void Settle(Admitted& p);

  const std::optional<wire::Hello>& first() const { return first_; }
  size_t accepted() const { return accepted_; }
  bool complete() const { return first_ && accepted_ == first_->channel_count; }
  AcceptedSession Take() {
    session_.first = *first_;
    return std::move(session_);
  }

 private:
  void Log(const std::string& s) const {
    if (opts_.log) opts_.log(s);
  }
  void RefuseBroken(Admitted& p) const;
  uint32_t Fits(const wire::Hello& h) const;

  const DestinationOptions& opts_;
  const wire::Offer offer_;  // what this destination offers and requires
  AcceptedSession session_;
  std::optional<wire::Hello> first_;
  size_t accepted_ = 0;
};

// Answers hello `h` (wire::EncodeHelloAnswer). A refusal is best effort,
// like TrySendU32Pair; an acceptance that cannot be sent throws.
void AnswerHello(Channel& ch, const wire::Hello& h, const wire::Offer& offer, uint32_t status) {
  uint8_t ack[wire::kHelloAckSize];
  const size_t n = wire::EncodeHelloAnswer(h, offer, status, ack);
  try {
    ch.write_all(ack, n);
  } catch (const Error&) {
    if (status == wire::kOk) throw;
  }
}

// A connection whose handshake or hello failed: answered with a plain Ack
// (any source version reads those) where the channel still works.
void SessionBuilder::RefuseBroken(Admitted& p) const {
  Log("rejected connection from " + p.peer + ": " + p.error->what());
  if (!p.oc.channel) return;
  const uint32_t st = p.error->code() == EPROTO                      ? wire::kRejectedVersion
                      : p.error->kind() == ErrorKind::kIntegrity ? wire::kInvalidHello
                                                                 : wire::kFailed;
  TrySendU32Pair(*p.oc.channel, wire::kAckMagic, st);
}

// kOk, or why hello `h` cannot join the session the first hello fixed.
uint32_t SessionBuilder::Fits(const wire::Hello& h) const {
  if (!first_) return wire::kOk;
  if (h.session != first_->session) return wire::kRejectedSession;
  if (h.channel_count != first_->channel_count) return wire::kRejectedChannel;
  if (h.image_size != first_->image_size || h.page_size != first_->page_size || h.digest != first_->digest ||
      h.offered != first_->offered || h.required != first_->required) {
    return wire::kRejectedGeometry;
  }
  if (session_.by_id[h.channel_id].channel) return wire::kRejectedChannel;
  return wire::kOk;
}

void SessionBuilder::Settle(Admitted& p) {
  if (p.oc.channel) p.oc.channel->set_io_timeout(opts_.io_timeout);
  wire::Hello h;
  if (!p.error) {
    try {
      h = wire::DecodeHello(p.intro.data());
    } catch (const Error& e) {
      p.error = e;
    }
  }
  if (p.error) return RefuseBroken(p);
  // This channel's offer: kCapRekey only if it can follow a KeyUpdate.
  wire::Offer offer = offer_;
  const ChannelStats st = p.oc.channel->stats();
  offer.offered &= ~(wire::RekeyWithheld(st.rekey.applies, st.rekey.can_rekey) & ~offer.required);
  const wire::Agreement agreed = wire::Negotiate(offer, wire::Side::kDestination, h.offer());
  const uint32_t status = agreed.status != wire::kOk ? agreed.status : Fits(h);
  if (status != wire::kOk) {
    Log("rejected channel " + std::to_string(h.channel_id) + " from " + p.peer + " (session " +
        wire::UuidString(h.session) + "): " + (agreed.status ? agreed.why : wire::StatusText(status)));
    return AnswerHello(*p.oc.channel, h, offer, status);
  }
  if (!first_) {
    // The first valid hello fixes the session: refuse an image that
    // cannot be stored before a single page moves.
    try {
      const wire::Geometry g{h.image_size, h.page_size};
      CheckImageFits(opts_, h.image_size, g.padded_size());
    } catch (const Error&) {
      AnswerHello(*p.oc.channel, h, offer, wire::kNoSpace);
      throw;
    }
    first_ = h;
    session_.by_id.resize(h.channel_count);
  }
  AnswerHello(*p.oc.channel, h, offer, wire::kOk);
  p.oc.channel->set_peer_follows_key_updates((agreed.caps & wire::kCapRekey) != 0);
  session_.by_id[h.channel_id] = std::move(p.oc);
  ++accepted_;
}

AdmissionOptions HelloAdmission(const DestinationOptions& opts) {
  AdmissionOptions ao;
  ao.security = opts.security;
  ao.intro_size = wire::kHelloSize;
  ao.intro_name = "channel hello";
  ao.timeout = opts.hello_timeout;
  ao.max_pending = opts.max_pending;
  ao.log = opts.log;
  return ao;
}

}  // namespace

void SendU32Pair(Channel& ch, uint32_t magic, uint32_t status) {
  uint8_t buf[wire::kAckSize];
  wire::EncodeU32Pair(magic, status, buf);
  ch.write_all(buf, sizeof(buf));
}

void TrySendU32Pair(Channel& ch, uint32_t magic, uint32_t status) {
  try {
    SendU32Pair(ch, magic, status);
  } catch (const Error&) {
  }
}

AcceptedSession AcceptSession(Listener& listener, const DestinationOptions& opts, Clock::time_point deadline) {
  SessionBuilder session(opts);
  Admission pending(listener, HelloAdmission(opts));
  while (!session.complete()) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) {
      const auto& first = session.first();
      throw Error(ErrorKind::kTimeout, ETIMEDOUT,
                  first ? "only " + std::to_string(session.accepted()) + " of " +
                              std::to_string(first->channel_count) + " channels arrived before the accept timeout"
                        : "no migration arrived before the accept timeout");
    }
    pending.Poll(left);
    for (auto& p : pending.TakeFinished()) {
      session.Settle(p);
      if (session.complete()) break;
    }
  }
  for (const std::string& peer : pending.PendingPeers()) {
    if (opts.log) {
      opts.log("closed connection from " + peer + ": still pending authentication when the migration's channels "
               "were complete");
    }
  }
  return session.Take();  // ~Admission cuts the rest short and joins them
}

}  // namespace ktm

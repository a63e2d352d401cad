// The destination's orchestrator: accept one session, receive its image,
// verify and commit it, report. Each job lives in its own file:
// dest_session (admission and the hello check), receive_channel (the
// receive loop), iteration_barrier, image_store (storage, writeback and
// commit), dest_verify (the end-to-end check).
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "base/error.h"
#include "transport/busy_responder.h"
#include "transport/dest_session.h"
#include "transport/dest_verify.h"
#include "transport/image_store.h"
#include "transport/migration.h"
#include "transport/phase_clock.h"
#include "transport/receive_channel.h"
#include "util/image_digest.h"

namespace ktm {
namespace {

using Clock = std::chrono::steady_clock;

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

BusyResponder::Options BusyOptions(const DestinationOptions& opts) {
  BusyResponder::Options b;
  b.security = opts.security;
  b.hello_timeout = opts.hello_timeout;
  b.max_pending = opts.max_pending;
  b.log = opts.log;
  return b;
}

// Receives the image into `image` while its file is written back; a
// writeback failure is told to the source as kCommitFailed.
std::vector<Receiver> ReceiveIntoImage(AcceptedSession& session, const wire::Geometry& g, TempImage& image,
                                       PageDigests& digests, const DestinationOptions& opts) {
  std::optional<Writeback> writeback;
  if (image.fd() >= 0) writeback.emplace(image.fd(), image.path(), opts.writeback_window, opts.io_timeout);
  std::vector<Receiver> rx =
      ReceiveImage(session, g, ImageTarget{image.data(), image.fd(), image.path(), writeback ? &*writeback : nullptr},
                   digests, opts.progress);
  if (writeback) {
    try {
      writeback->Finish();
    } catch (const Error&) {
      // The source waits for DONE on channel 0: say why there is none.
      TrySendU32Pair(*session.by_id[0].channel, wire::kDoneMagic, wire::kCommitFailed);
      throw;
    }
  }
  return rx;
}

}  // namespace

MigrationReport RunDestination(Listener& listener, const DestinationOptions& opts) {
  CheckOutputPath(opts.output);
  const auto t0 = Clock::now();
  PhaseClock phases;
  phases.Begin("setup");
  AcceptedSession session = AcceptSession(listener, opts, t0 + opts.accept_timeout);
  // From now until we return, later sources hear "busy" at once.
  // Optional: a destination short of descriptors or threads still runs the
  // migration it has accepted; later sources then wait in the backlog.
  std::optional<BusyResponder> busy;
  try {
    busy.emplace(listener, BusyOptions(opts), wire::UuidString(session.first.session));
  } catch (const std::exception& e) {
    if (opts.log) opts.log(std::string("later sources will not be told that a migration is running: ") + e.what());
  }
  const wire::Geometry g{session.first.image_size, session.first.page_size};
  DigestAlgorithm alg = DigestAlgorithm::kXxh3;
  DigestAlgorithmFromWire(session.first.digest, &alg);  // validated by DecodeHello
  if (opts.progress) opts.progress->total_bytes = g.image_size;
  TempImage image(opts.output, g.image_size, g.padded_size(), opts.temp_file_hook, opts.memory);
  PageDigests digests(alg, g.image_size, g.page_size);
  phases.Begin("transfer");
  const std::vector<Receiver> rx = ReceiveIntoImage(session, g, image, digests, opts);
  const std::string digest = VerifyAndCommit(session, image, digests, *rx[0].end_digest, opts.output, phases);
  MigrationReport rep = BuildReport(session, rx);
  rep.digest = digest;
  rep.digest_algorithm = alg;
  rep.phases = phases.Take();
  rep.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  return rep;
}

}  // namespace ktm

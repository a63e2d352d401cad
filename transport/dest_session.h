// The destination's session: accepting the channels of one migration (the
// hello check), and the status replies (ACK, DONE) sent on them. Private to
// transport/.
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "transport/endpoint.h"
#include "transport/migration.h"
#include "transport/protocol.h"

namespace ktm {

// Sends magic + status (an ACK or a DONE). Throws the channel's Error.
void SendU32Pair(Channel& ch, uint32_t magic, uint32_t status);

// Best effort: the peer may already be gone, and the error that matters is
// the one being reported.
void TrySendU32Pair(Channel& ch, uint32_t magic, uint32_t status);

struct AcceptedSession {
  wire::Hello first;
  std::vector<OpenedChannel> by_id;  // indexed by channel id
};

// Phase 1: accept until every channel of one session has introduced itself.
// Connections progress concurrently (handshake and hello each on their own
// thread, each with its own deadline), so strays cannot stall the real
// source. Anything else (failed handshake, bad hello, foreign session,
// duplicate channel id) is a stray: answered if possible, logged, and
// dropped; no page is read from it. Throws Error(kTimeout) at `deadline`,
// and CheckImageFits' Error(kLocalIo) for an image that cannot be stored.
AcceptedSession AcceptSession(Listener& listener, const DestinationOptions& opts,
                              std::chrono::steady_clock::time_point deadline);

}  // namespace ktm

// The destination's receive loop: one receiver thread per channel reads
// packets, writes their pages to the image, keeps each page's digest, and
// meets the other channels at every iteration barrier. Private to
// transport/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "transport/dest_session.h"
#include "transport/image_store.h"
#include "transport/migration.h"
#include "transport/protocol.h"
#include "util/image_digest.h"

namespace ktm {

// One channel's receiver: what it was given and what it counted.
struct Receiver {
  int id = 0;
  Channel* ch = nullptr;
  std::string peer;
  uint64_t pages = 0, zero_pages = 0, data_bytes = 0;
  uint32_t iterations = 0;
  std::optional<ImageHash> end_digest;  // from END, on channel 0
};

// Phase 2: one receiver thread per channel until the final barrier (and END
// on channel 0). The first failure tells the source why (a DONE status on
// every channel), aborts every receiver and is thrown; the caller's
// TempImage then removes the file. Throws Error(kPeer) if END never came.
std::vector<Receiver> ReceiveImage(AcceptedSession& session, const wire::Geometry& g, const ImageTarget& image,
                                   PageDigests& digests, Progress* progress);

}  // namespace ktm

// The destination's last step before success: the end-to-end digest check,
// the commit under the final name, and DONE to the source. Private to
// transport/.
#pragma once

#include <string>

#include "transport/dest_session.h"
#include "transport/image_store.h"
#include "transport/phase_clock.h"
#include "util/image_digest.h"

namespace ktm {

// Phase 3: the end-to-end check before the image may appear under its final
// name, the commit, and DONE to the source (kDigestMismatch or
// kCommitFailed when either fails). Returns the image digest in hex. Throws
// Error(kIntegrity) on a mismatch, the commit's Error(kLocalIo).
std::string VerifyAndCommit(AcceptedSession& session, TempImage& image, const PageDigests& digests,
                            const ImageHash& expected, const std::string& output, PhaseClock& phases);

}  // namespace ktm

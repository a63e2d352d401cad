#include "transport/dest_verify.h"

#include "base/error.h"

namespace ktm {

std::string VerifyAndCommit(AcceptedSession& session, TempImage& image, const PageDigests& digests,
                            const ImageHash& expected, const std::string& output, PhaseClock& phases) {
  Channel& ch0 = *session.by_id[0].channel;
  phases.Begin("verify");
  const ImageHash got = digests.Final();
  const std::string digest = DigestHex(digests.algorithm(), got);
  if (got != expected) {
    TrySendU32Pair(ch0, wire::kDoneMagic, wire::kDigestMismatch);
    throw Error(ErrorKind::kIntegrity, EBADMSG,
                "image digest mismatch: received " + digest + ", source had " +
                    DigestHex(digests.algorithm(), expected) + "; the image was discarded");
  }
  phases.Begin("commit");
  try {
    image.Commit(output);
  } catch (const Error&) {
    TrySendU32Pair(ch0, wire::kDoneMagic, wire::kCommitFailed);
    throw;
  }
  SendU32Pair(ch0, wire::kDoneMagic, wire::kOk);
  phases.End();
  // The source answers with close_notify; wait for it so its last read
  // never races our close.
  uint8_t tail;
  try {
    ch0.read_all(&tail, 1);
  } catch (const Error&) {
  }
  return digest;
}

}  // namespace ktm

// Bookkeeping for MSG_ZEROCOPY completions on one socket.
//
// The kernel numbers every successful sendmsg(MSG_ZEROCOPY) on a socket with
// a 32-bit counter (starting at 0) and later reports, on the socket error
// queue, inclusive ranges [ee_info, ee_data] of those numbers whose pages it
// has let go. Ranges may be merged, may arrive out of order, and wrap past
// 2^32. Each range also says whether the kernel avoided the copy or copied
// anyway (SO_EE_CODE_ZEROCOPY_COPIED, e.g. on loopback).
//
// The tracker turns that into 64-bit write ids that never wrap, answers "is
// this id released?", counts zero-copied vs copied sends, and calls the
// release callback once per id range. It does no I/O: SocketChannel feeds it
// the cmsgs it reads, and tests feed it crafted sock_extended_err records.
#pragma once

#include <sys/socket.h>

#include <cstdint>
#include <map>
#include <optional>

#include "channel/channel.h"
#include "base/error.h"

namespace ktm {

class ZeroCopyTracker {
 public:
  // The kernel numbers a socket's sends from 0; `first_id` exists so tests
  // can start near 2^32 and cross the wrap without billions of sends.
  explicit ZeroCopyTracker(uint64_t first_id = 0) : next_id_(first_id), low_water_(first_id) {}

  // Records one successful zero-copy sendmsg and returns its write id.
  uint64_t OnSend();

  // Applies the kernel range [lo, hi] (32-bit, inclusive, may wrap).
  // Throws Error if the range names ids that were never sent or were
  // already released: that would mean the bookkeeping is wrong, and going on
  // could release a buffer early.
  void OnCompletion(uint32_t lo, uint32_t hi, bool copied);

  // Validates one error-queue control message and applies it. Returns an
  // Error (not thrown) when the kernel reported a failure (ee_errno != 0 or
  // a non-zero-copy origin); the caller must surface it to the user.
  std::optional<Error> OnControlMessage(const cmsghdr* cm);

  bool IsReleased(uint64_t id) const;
  bool IsReleased(ZeroCopyIds ids) const;
  uint64_t next_id() const { return next_id_; }
  bool all_released() const { return counters_.outstanding() == 0; }

  // Whether any id released since the last call avoided the copy. Resets.
  bool TakeZeroCopiedSinceLast();

  void set_release_callback(ReleaseCallback cb) { callback_ = std::move(cb); }
  const ZeroCopyCounters& counters() const { return counters_; }
  ZeroCopyCounters& mutable_counters() { return counters_; }

 private:
  void MarkReleased(uint64_t first, uint64_t last);

  uint64_t next_id_;      // id of the next send
  uint64_t low_water_;    // every id below this is released
  // Released ids at or above low_water_, as disjoint [first, last] intervals
  // keyed by first; non-empty only while completions arrive out of order.
  std::map<uint64_t, uint64_t> released_above_;
  bool zero_copied_since_last_ = false;
  ZeroCopyCounters counters_;
  ReleaseCallback callback_;
};

}  // namespace ktm

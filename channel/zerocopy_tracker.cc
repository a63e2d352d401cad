#include "channel/zerocopy_tracker.h"

#include <linux/errqueue.h>
#include <netinet/in.h>

#include <cstring>
#include <iterator>
#include <string>

namespace ktm {

uint64_t ZeroCopyTracker::OnSend() {
  ++counters_.sends;
  return next_id_++;
}

void ZeroCopyTracker::OnCompletion(uint32_t lo, uint32_t hi, bool copied) {
  // Every id the kernel may name lies in [low_water_, next_id_), a window
  // far smaller than 2^32, so the 32-bit value extends uniquely: take the
  // distance from low_water_ modulo 2^32.
  const uint64_t first = low_water_ + static_cast<uint32_t>(lo - static_cast<uint32_t>(low_water_));
  const uint64_t count = static_cast<uint64_t>(static_cast<uint32_t>(hi - lo)) + 1;
  const uint64_t last = first + count - 1;
  if (last >= next_id_) {
    throw Error(ErrorKind::kInternal, "MSG_ZEROCOPY completion [" + std::to_string(lo) + ", " + std::to_string(hi) +
                "] names sends that were never made (only " + std::to_string(next_id_) +
                " sent); refusing to release buffers on a corrupt notification");
  }
  // Overlap with anything already released is a double release.
  auto it = released_above_.upper_bound(last);
  if (it != released_above_.begin() && std::prev(it)->second >= first) {
    throw Error(ErrorKind::kInternal, "MSG_ZEROCOPY completion [" + std::to_string(lo) + ", " + std::to_string(hi) +
                "] repeats sends already released");
  }
  ++counters_.completion_records;
  counters_.released += count;
  if (copied) {
    counters_.copied += count;
  } else {
    counters_.zero_copied += count;
    zero_copied_since_last_ = true;
  }
  MarkReleased(first, last);
  if (callback_) callback_(first, last, copied);
}

void ZeroCopyTracker::MarkReleased(uint64_t first, uint64_t last) {
  // Merge with neighbours so the map stays a set of disjoint maximal runs.
  auto next = released_above_.lower_bound(first);
  if (next != released_above_.end() && next->first == last + 1) {
    last = next->second;
    next = released_above_.erase(next);
  }
  if (next != released_above_.begin()) {
    auto prev = std::prev(next);
    if (prev->second + 1 == first) {
      first = prev->first;
      released_above_.erase(prev);
    }
  }
  if (first == low_water_) {
    low_water_ = last + 1;
  } else {
    released_above_.emplace(first, last);
  }
}

bool ZeroCopyTracker::IsReleased(uint64_t id) const {
  if (id >= next_id_) return false;  // not sent yet: nothing to release
  if (id < low_water_) return true;
  auto it = released_above_.upper_bound(id);
  return it != released_above_.begin() && std::prev(it)->second >= id;
}

bool ZeroCopyTracker::IsReleased(ZeroCopyIds ids) const {
  if (ids.empty()) return true;
  if (ids.end <= low_water_) return true;
  for (uint64_t id = std::max(ids.first, low_water_); id < ids.end;) {
    auto it = released_above_.upper_bound(id);
    if (it == released_above_.begin()) return false;
    --it;
    if (it->second < id) return false;
    id = it->second + 1;
  }
  return true;
}

bool ZeroCopyTracker::TakeZeroCopiedSinceLast() {
  bool v = zero_copied_since_last_;
  zero_copied_since_last_ = false;
  return v;
}

std::optional<Error> ZeroCopyTracker::OnControlMessage(const cmsghdr* cm) {
  const bool ip = (cm->cmsg_level == SOL_IP && cm->cmsg_type == IP_RECVERR);
  const bool ip6 = (cm->cmsg_level == SOL_IPV6 && cm->cmsg_type == IPV6_RECVERR);
  if (!ip && !ip6) {
    return Error(ErrorKind::kInternal, EPROTO, "unexpected control message on the socket error queue (level " +
                             std::to_string(cm->cmsg_level) + ", type " +
                             std::to_string(cm->cmsg_type) + ")");
  }
  if (cm->cmsg_len < CMSG_LEN(sizeof(sock_extended_err))) {
    return Error(ErrorKind::kInternal, EPROTO, "short sock_extended_err on the socket error queue");
  }
  sock_extended_err serr;
  std::memcpy(&serr, CMSG_DATA(cm), sizeof(serr));
  if (serr.ee_errno != 0) {
    return Error(SocketErrorKind(static_cast<int>(serr.ee_errno)), static_cast<int>(serr.ee_errno),
                 std::string("the kernel reported a send failure on the error queue: ") +
                     std::strerror(static_cast<int>(serr.ee_errno)) + " (origin " +
                     std::to_string(serr.ee_origin) + ")");
  }
  if (serr.ee_origin != SO_EE_ORIGIN_ZEROCOPY) {
    return Error(ErrorKind::kInternal, EPROTO, "error-queue record with origin " + std::to_string(serr.ee_origin) +
                             " where only MSG_ZEROCOPY completions were expected");
  }
  OnCompletion(serr.ee_info, serr.ee_data, (serr.ee_code & SO_EE_CODE_ZEROCOPY_COPIED) != 0);
  return std::nullopt;
}

}  // namespace ktm

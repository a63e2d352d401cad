#include "base/parse.h"

#include <charconv>

namespace ktm {

std::optional<uint64_t> ParseUnsigned(std::string_view s, uint64_t min, uint64_t max) {
  uint64_t v = 0;
  const char* end = s.data() + s.size();
  auto [p, ec] = std::from_chars(s.data(), end, v, 10);
  if (s.empty() || ec != std::errc() || p != end || v < min || v > max) return std::nullopt;
  return v;
}

}  // namespace ktm

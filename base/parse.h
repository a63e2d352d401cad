// Checked number parsing: the whole string must be a number in range.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>

namespace ktm {

// Decimal unsigned integer in [min, max]; nullopt for anything else
// (empty, sign, trailing text, overflow, out of range).
std::optional<uint64_t> ParseUnsigned(std::string_view s, uint64_t min = 0, uint64_t max = UINT64_MAX);

}  // namespace ktm

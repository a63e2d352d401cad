// libFuzzer target: the destination's parsing of untrusted bytes (channel
// hello, packet header, offsets). Anything may be rejected with ktm::Error;
// nothing may crash, and whatever is accepted must satisfy the invariants the
// receiver relies on before it writes into the image.
#include <cstdint>
#include <cstring>
#include <vector>

#include "base/error.h"
#include "transport/protocol.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ktm::wire;
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  ++data, --size;
  try {
    if (mode & 1) {
      if (size < kHelloSize) return 0;
      Hello h = DecodeHello(data);
      if (h.channel_id >= h.channel_count || h.page_size < kMinPageSize || (h.page_size & (h.page_size - 1))) {
        __builtin_trap();
      }
      return 0;
    }
    if (size < kHeaderSize) return 0;
    const Geometry g{(1u << 20) + 123, 4096};
    PacketHeader h = DecodeHeader(data, g);
    if (h.page_count > kMaxPagesPerPacket) __builtin_trap();
    if (h.type != kPages && h.type != kZero) return 0;
    const size_t need = size_t{h.page_count} * 8;
    if (size - kHeaderSize < need) return 0;
    std::vector<uint64_t> offsets(h.page_count);
    std::memcpy(offsets.data(), data + kHeaderSize, need);
    ValidateOffsets(data, h, offsets.data(), g);
    for (uint64_t off : offsets) {
      // The receiver writes page_size bytes at each offset of the mapping.
      if (off % g.page_size != 0 || off + g.page_size > g.padded_size()) __builtin_trap();
    }
  } catch (const ktm::Error&) {
  }
  return 0;
}

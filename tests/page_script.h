// A live image whose pages turn from data to zero and back across the
// iterations of one migration, for the destination's zero-page tests (C API
// and transport): whatever a destination held before, every page it leaves
// must equal the source's at the switch-over.
//
// Driven by the source's collect-dirty calls: call 0 reports the initial
// image (every page), calls 1-3 the changes before iterations 1-3, and call
// 4, after the freeze, more changes for the same final pass (iteration 3).
// Calls 1-3 also re-report 100 unchanged pages, more than the transport's
// convergence threshold (64 pages), so the source iterates until the cap of
// 4 iterations the tests set.
//
// Page 1: data, zero, data, zero. Page 3: zero, data, zero, data. Page 6:
// zero, data, -, zero. Page 7: data, zero, zero (resent), data. Page 2 and
// page 9 change only in the final pass (data -> zero, zero -> data).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace ktm::testing {

struct PageScript {
  static constexpr uint32_t kPageSize = 4096;
  static constexpr uint64_t kPages = 512;
  static constexpr uint64_t kBytes = kPages * kPageSize;
  static constexpr uint32_t kIterations = 4;  // the cap the tests set

  // Applies collect-dirty call `call` to `mem` (kBytes, page aligned) and
  // appends the pages it reported, ascending.
  static void Apply(unsigned call, uint8_t* mem, std::vector<uint64_t>* dirty) {
    struct Change {
      uint64_t page;
      int version;  // < 0: the page becomes zero
    };
    std::vector<uint64_t> pages;
    auto set = [&](const Change& c) {
      uint8_t* p = mem + c.page * kPageSize;
      if (c.version < 0) {
        std::memset(p, 0, kPageSize);
      } else {
        for (uint32_t i = 0; i < kPageSize; ++i) p[i] = static_cast<uint8_t>(c.page * 7 + c.version * 31 + i + 1) | 1;
      }
      pages.push_back(c.page);
    };
    switch (call) {
      case 0:  // a third of the pages zero in the first iteration
        for (uint64_t i = 0; i < kPages; ++i) set({i, i % 3 == 0 ? -1 : 0});
        break;
      case 1:
        for (Change c : {Change{1, -1}, Change{3, 1}, Change{6, 1}, Change{7, -1}}) set(c);
        break;
      case 2:
        for (Change c : {Change{1, 2}, Change{3, -1}, Change{7, -1}, Change{10, 2}}) set(c);
        break;
      case 3:
        for (Change c : {Change{1, -1}, Change{6, -1}, Change{3, 3}}) set(c);
        break;
      case 4:  // after the freeze
        for (Change c : {Change{7, 4}, Change{2, -1}, Change{9, 4}}) set(c);
        return Finish(pages, dirty);
      default:
        return;
    }
    if (call > 0) {
      for (uint64_t i = 400; i < 500; ++i) pages.push_back(i);  // rewritten, unchanged
    }
    Finish(pages, dirty);
  }

 private:
  static void Finish(std::vector<uint64_t>& pages, std::vector<uint64_t>* dirty) {
    std::sort(pages.begin(), pages.end());
    pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
    dirty->insert(dirty->end(), pages.begin(), pages.end());
  }
};

}  // namespace ktm::testing

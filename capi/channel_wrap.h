// In-process hook for tests: the C API over a channel opened by C++ code.
//
// ktm_channel_connect/accept cannot pick the io_uring backend, which is
// where the kernel really reports completions out of order; tests wrap such
// a channel to check the C API's release contract against it. Not part of
// the C API (the shared library exports ktm_* only, see ktls_migrate.map).
#pragma once

#include <memory>

#include "channel/channel.h"
#include "ktls_migrate.h"

namespace ktm {

// Takes ownership of `ch`; free the result with ktm_channel_free.
ktm_channel* WrapChannelForCApi(std::unique_ptr<Channel> ch, bool zero_copy);

}  // namespace ktm

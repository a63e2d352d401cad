// Paths and directories of the local file system.
#pragma once

#include <string>

#include "base/unique_fd.h"

namespace ktm {

// The directory part of `path`: "." when it has no slash, "/" for "/name",
// otherwise everything before the last slash.
std::string DirectoryOf(const std::string& path);

// Opens the directory `dir` so that it can be fsync'ed (O_RDONLY |
// O_DIRECTORY: Linux has no other way to sync a directory entry). Throws
// Error(kLocalIo) naming `dir` and saying why it is needed: a file renamed
// into `dir` survives a crash only once `dir` has been synced.
UniqueFd OpenDirectoryForSync(const std::string& dir);

}  // namespace ktm

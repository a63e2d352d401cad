#include "base/path.h"

#include <fcntl.h>

#include <cerrno>

#include "base/error.h"

namespace ktm {

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

UniqueFd OpenDirectoryForSync(const std::string& dir) {
  UniqueFd fd(open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) {
    ThrowErrno(ErrorKind::kLocalIo, errno,
               "cannot open the output directory " + dir +
                   " for reading; the commit must fsync it so that the image's name survives a crash");
  }
  return fd;
}

}  // namespace ktm

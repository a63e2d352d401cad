#include "certs/files.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "base/error.h"

namespace ktm {

std::string ReadFile(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot read " + path);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void WriteFile(const std::string& path, const std::string& data, unsigned mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot create " + path);
  // open() honours the umask; a key must end up exactly `mode`.
  fchmod(fd, mode);
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      ThrowErrno(ErrorKind::kLocalIo, e, "cannot write " + path);
    }
    off += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) ThrowErrno(ErrorKind::kLocalIo, errno, "cannot write " + path);
}

std::string FormatTime(time_t t) {
  char buf[64];
  tm tmv{};
  gmtime_r(&t, &tmv);
  strftime(buf, sizeof(buf), "%Y-%m-%d %H:%M:%S UTC", &tmv);
  return buf;
}

}  // namespace ktm

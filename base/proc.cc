#include "base/proc.h"

#include <fstream>

namespace ktm {

std::string ReadProcValue(const char* path) {
  std::ifstream f(path);
  std::string v;
  if (!(f >> v)) return "unknown";
  return v;
}

}  // namespace ktm

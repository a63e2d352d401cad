#include "base/proc.h"

#include <cstdio>
#include <fstream>
#include <sstream>

namespace ktm {

std::string ReadProcValue(const char* path) {
  std::ifstream f(path);
  std::string v;
  if (!(f >> v)) return "unknown";
  return v;
}


bool TcpPortListening(int port) {
  char want[8];
  std::snprintf(want, sizeof(want), ":%04X", port);
  for (const char* f : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(f);
    std::string line;
    std::getline(in, line);  // header
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string slot, local, remote, state;
      ls >> slot >> local >> remote >> state;
      if (state == "0A" && local.size() > 5 && local.compare(local.size() - 5, 5, want) == 0) return true;
    }
  }
  return false;
}

}  // namespace ktm

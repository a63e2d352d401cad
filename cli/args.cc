#include "cli/args.h"

#include <cmath>
#include <cstdlib>

#include "base/error.h"
#include "base/parse.h"

namespace ktm::cli {

Args::Args(int argc, char** argv, int first, const std::set<std::string>& with_value,
           const std::set<std::string>& booleans) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0) throw Error(ErrorKind::kUsage, EINVAL, "unexpected argument '" + a + "' (see --help)");
    std::string name = a.substr(2), value;
    bool inline_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    if (booleans.count(name)) {
      if (inline_value) throw Error(ErrorKind::kUsage, EINVAL, "--" + name + " takes no value");
      flags_.insert(name);
    } else if (with_value.count(name)) {
      if (!inline_value) {
        if (i + 1 >= argc) throw Error(ErrorKind::kUsage, EINVAL, "--" + name + " needs a value");
        value = argv[++i];
      }
      values_.emplace(name, value);
    } else {
      throw Error(ErrorKind::kUsage, EINVAL, "unknown option --" + name + " (see --help)");
    }
  }
}

std::string Args::get(const std::string& name, const std::string& def) const {
  auto it = values_.find(name);
  return it == values_.end() ? def : it->second;
}

std::vector<std::string> Args::all(const std::string& name) const {
  std::vector<std::string> out;
  auto [lo, hi] = values_.equal_range(name);
  for (auto it = lo; it != hi; ++it) out.push_back(it->second);
  return out;
}

uint64_t Args::number(const std::string& name, uint64_t def, uint64_t min, uint64_t max) const {
  if (!has(name)) return def;
  const std::string v = get(name);
  if (std::optional<uint64_t> n = ParseUnsigned(v, min, max)) return *n;
  throw Error(ErrorKind::kUsage, EINVAL,
              "bad --" + name + " '" + v + "': expected a whole number from " + std::to_string(min) + " to " +
                  std::to_string(max));
}

uint64_t ParseSize(const std::string& s, const char* what) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  std::string suffix = end ? std::string(end) : "";
  double mult = 1;
  if (suffix == "K" || suffix == "k" || suffix == "KiB") mult = 1024.0;
  else if (suffix == "M" || suffix == "m" || suffix == "MiB") mult = 1024.0 * 1024;
  else if (suffix == "G" || suffix == "g" || suffix == "GiB") mult = 1024.0 * 1024 * 1024;
  else if (!suffix.empty()) mult = -1;
  if (end == s.c_str() || mult < 0 || !(v >= 0) || std::isinf(v) || v * mult >= 1.8e19) {
    throw Error(ErrorKind::kUsage, EINVAL, std::string("bad ") + what + " '" + s + "': expected a number with optional K, M or G");
  }
  return static_cast<uint64_t>(v * mult);
}

}  // namespace ktm::cli

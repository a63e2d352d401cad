// A small --flag parser for tls-migrate: "--name value", "--name=value" and
// boolean "--name". Unknown flags are errors that say what is accepted.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace ktm::cli {

class Args {
 public:
  // `with_value` and `booleans` list the accepted flags (without "--").
  Args(int argc, char** argv, int first, const std::set<std::string>& with_value,
       const std::set<std::string>& booleans);

  bool has(const std::string& name) const { return values_.count(name) > 0; }
  std::string get(const std::string& name, const std::string& def = "") const;
  std::vector<std::string> all(const std::string& name) const;
  // The flag's value as a whole number in [min, max] (`def` when absent).
  // Anything else is Error(kUsage) naming the flag and the accepted range.
  uint64_t number(const std::string& name, uint64_t def, uint64_t min, uint64_t max) const;
  bool flag(const std::string& name) const { return flags_.count(name) > 0; }

 private:
  std::multimap<std::string, std::string> values_;
  std::set<std::string> flags_;
};

// "256M", "4G", "65536", "1.5G" -> bytes. Throws on garbage.
uint64_t ParseSize(const std::string& s, const char* what);

}  // namespace ktm::cli

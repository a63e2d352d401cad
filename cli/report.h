// Human and JSON renderings of a migration report, shared by the commands.
#pragma once

#include <string>

#include "transport/migration.h"

namespace ktm::cli {

struct SideCpu {
  double user = 0, sys = 0;
  double total() const { return user + sys; }
};

SideCpu SelfCpu();                 // this process so far (all threads)
std::string Human(double bytes);   // "1.5 GiB"
std::string JsonEscape(const std::string& s);
std::string ReportJson(const char* role, const MigrationReport& r, const SideCpu* cpu);
void PrintReport(const char* role, const MigrationReport& r, const SideCpu* cpu);

}  // namespace ktm::cli

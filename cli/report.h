// Human and JSON renderings of a migration report, shared by the commands.
// All JSON the CLI writes goes through nlohmann::json.
#pragma once

#include <nlohmann/json.hpp>

#include <string>

#include "transport/migration.h"

namespace ktm::cli {

struct SideCpu {
  double user = 0, sys = 0;
  double total() const { return user + sys; }
};

SideCpu SelfCpu();                 // this process so far (all threads)
std::string Human(double bytes);   // "1.5 GiB"
nlohmann::json ReportJson(const char* role, const MigrationReport& r, const SideCpu* cpu);
// The key lifetime lines of a TLS channel (key updates each way, the limit
// in force, whether the key can change and why, no-pad receive); nothing
// for plaintext channels.
void PrintKeyLifetime(const ChannelStats& st);
void PrintReport(const char* role, const MigrationReport& r, const SideCpu* cpu);

// Writes `j` to `path` ("-" = stdout). Throws Error(kLocalIo) naming the file.
void WriteJsonFile(const std::string& path, const nlohmann::json& j);

}  // namespace ktm::cli

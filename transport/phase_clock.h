// Wall time and process CPU per phase of a migration (MigrationReport::phases).
#pragma once

#include <sys/resource.h>

#include <chrono>
#include <string>
#include <vector>

#include "transport/migration.h"

namespace ktm {

class PhaseClock {
 public:
  using Clock = std::chrono::steady_clock;

  // Ends the running phase (if any) and starts `name`.
  void Begin(std::string name) {
    End();
    name_ = std::move(name);
    start_ = Clock::now();
    cpu_ = Cpu();
    running_ = true;
  }
  // Ends the running phase; a no-op when none runs.
  void End() {
    if (!running_) return;
    running_ = false;
    const auto [u, s] = Cpu();
    phases_.push_back({name_, std::chrono::duration<double>(Clock::now() - start_).count(), u - cpu_.first,
                       s - cpu_.second});
  }
  std::vector<PhaseTime> Take() {
    End();
    return std::move(phases_);
  }

 private:
  static std::pair<double, double> Cpu() {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    return {ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6, ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6};
  }
  std::string name_;
  Clock::time_point start_;
  std::pair<double, double> cpu_;
  bool running_ = false;
  std::vector<PhaseTime> phases_;
};

}  // namespace ktm

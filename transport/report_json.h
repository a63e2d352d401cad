// A migration report as JSON: the one rendering the CLI's --json and the C
// API's ktm_report_json() share. (Internal: needs nlohmann-json; not
// installed with the public headers.)
#pragma once

#include <nlohmann/json.hpp>

#include "transport/migration.h"

namespace ktm {

// Session, sizes, counts, times, digest, phases, downtime (source), and per
// channel its path and counters.
nlohmann::json MigrationReportJson(const MigrationReport& r);

}  // namespace ktm

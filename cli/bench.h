#pragma once

namespace ktm::cli {
// `tls-migrate bench`: every transport mode side by side in one run.
int CmdBench(int argc, char** argv);
}  // namespace ktm::cli

// The subcommands of tls-migrate, one file each (cli/cmd_*.cc), each with
// its own help text and flags. Each takes main's argc/argv (argv[1] is the
// command's name) and returns the exit code; errors are thrown as
// ktm::Error, which main() turns into a message and an exit code.
#pragma once

namespace ktm::cli {

int CmdSend(int argc, char** argv);    // cli/cmd_send.cc
int CmdRecv(int argc, char** argv);    // cli/cmd_recv.cc
int CmdCerts(int argc, char** argv);   // cli/cmd_certs.cc
int CmdProbe(int argc, char** argv);   // cli/cmd_probe.cc
int CmdDemo(int argc, char** argv);    // cli/cmd_demo.cc
int CmdBench(int argc, char** argv);   // cli/cmd_bench.cc
int CmdTunnel(int argc, char** argv);  // cli/cmd_tunnel.cc

}  // namespace ktm::cli

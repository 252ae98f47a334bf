// rankscope: design-space exploration of low-rank decompositions of transformer models.
// One subcommand per file (cmd_*.cpp); errors are caught here, once, as one line and exit 1.
#include <cstdlib>
#include <cstring>
#include <exception>
#include <unistd.h>
#include <iostream>
#include <string>

#include "cli/options.hpp"
#include "core/error.hpp"

namespace {

void print_overview(std::ostream& os) {
  os << "usage: rankscope COMMAND [options]   (rankscope COMMAND --help for its options)\n\ncommands:\n";
  for (const auto& c : rankscope::cli::commands()) {
    os << "  " << c.name << std::string(12 - std::min<size_t>(c.name.size(), 11), ' ') << c.summary << "\n";
  }
}

}  // namespace

int main(int argc, char** argv) {
  using rankscope::cli::commands;
  if (argc < 2) {
    std::cerr << "rankscope: missing command (usage: rankscope COMMAND [options]; see rankscope --help)\n";
    return 2;
  }
  const std::string name = argv[1];
  // Sweep workers often share a machine (several processes on one database). OpenMP threads that
  // spin while idle then steal each other's cores: the test suite's sweeps took 55 s instead of
  // 12 s. A sweep therefore runs with idle threads sleeping unless the user chose a policy; the
  // runtime reads OMP_WAIT_POLICY when it loads, so the process re-executes itself once.
  if (name == "sweep" && std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    execv("/proc/self/exe", argv);  // returns only on failure: go on with the default policy
  }
  if (name == "--help" || name == "-h" || name == "help") {
    print_overview(std::cout);
    return 0;
  }
  for (const auto& command : commands()) {
    if (command.name != name) continue;
    rankscope::cli::Params params;
    if (const auto code = rankscope::cli::parse_command_line(command, argc - 1, argv + 1, params)) return *code;
    try {
      return command.run(params);
    } catch (const rankscope::Error& e) {
      std::cerr << "rankscope " << name << ": error: " << e.what() << "\n";
    } catch (const std::exception& e) {
      std::cerr << "rankscope " << name << ": error: " << e.what() << "\n";
    }
    return 1;
  }
  std::cerr << "rankscope: unknown command '" << name << "' (see rankscope --help)\n";
  return 2;
}

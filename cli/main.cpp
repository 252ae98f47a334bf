// rankscope: design-space exploration of low-rank decompositions of transformer models.
// One subcommand per file (cmd_*.cpp); errors are caught here, once, as one line and exit 1.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <unistd.h>
#include <iostream>
#include <string>
#include <vector>

#include "cli/options.hpp"
#include "core/base/error.hpp"
#include "core/base/suggest.hpp"

#ifndef RANKSCOPE_VERSION
#error "RANKSCOPE_VERSION (CMake's PROJECT_VERSION) must be defined"
#endif

namespace {

void print_overview(std::ostream& os) {
  os << "usage: rankscope COMMAND [options]   (rankscope COMMAND --help for its options)\n"
     << "       rankscope --version\n\ncommands:\n";
  for (const auto& c : rankscope::cli::commands()) {
    os << "  " << c.name << std::string(12 - std::min<size_t>(c.name.size(), 11), ' ') << c.summary << "\n";
  }
}

// OpenMP threads that spin while they wait steal the cores of everything else on the machine:
// with one competing busy loop on a loaded 2-core machine, `eval --tasks arc_easy --limit 100`
// took 102 s instead of 5.1 s, `generate` ran 45x slower and a 16-configuration sweep 4.9x
// (bench/threads, docs/benchmarks.md). Idle threads therefore sleep (OMP_WAIT_POLICY=PASSIVE)
// unless the user chose a policy or a spin count.
//
// libgomp reads the variable once, in its own initialiser, before any code of this executable
// runs; setting it from a constructor, or even from .preinit_array (which runs before libgomp's
// initialiser), does not work: libc's initialiser resets `environ` to the original block and the
// setenv is lost (tried with glibc 2.36 and GCC 12's libgomp: the spin count stays at 300000).
// So the process re-executes itself once with the variable set: 6 ms on start-up (35 ms on a
// machine busy compiling; bench/threads), against seconds lost to spinning. Returns only when no re-exec is
// needed or it failed (no /proc: the default policy then).
void sleep_idle_openmp_threads(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  execv("/proc/self/exe", argv);
}

}  // namespace

int main(int argc, char** argv) {
  using rankscope::cli::commands;
  if (argc < 2) {
    std::cerr << "rankscope: missing command (usage: rankscope COMMAND [options]; see rankscope --help)\n";
    return 2;
  }
  const std::string name = argv[1];
  if (name == "--help" || name == "-h" || name == "help") {
    print_overview(std::cout);
    return 0;
  }
  if (name == "--version" || name == "version") {
    std::cout << "rankscope " << RANKSCOPE_VERSION << "\n";
    return 0;
  }
  std::vector<std::string> names;
  for (const auto& command : commands()) names.push_back(command.name);
  if (std::find(names.begin(), names.end(), name) == names.end()) {
    std::cerr << "rankscope: unknown command '" << name << "'" << rankscope::did_you_mean(name, names)
              << " (see rankscope --help)\n";
    return 2;
  }
  sleep_idle_openmp_threads(argv);
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
  return 2;
}

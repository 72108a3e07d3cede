// duquant inspect (being written).
#include "cli/commands.hpp"

namespace duquant::cli {

Action register_inspect(CLI::App& app) {
  CLI::App* c = app.add_subcommand("inspect", "(not yet available)");
  return [c]() { return c->parsed() ? 2 : -1; };
}

}  // namespace duquant::cli

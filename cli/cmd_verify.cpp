// duquant verify (being written).
#include "cli/commands.hpp"

namespace duquant::cli {

Action register_verify(CLI::App& app) {
  CLI::App* c = app.add_subcommand("verify", "(not yet available)");
  return [c]() { return c->parsed() ? 2 : -1; };
}

}  // namespace duquant::cli

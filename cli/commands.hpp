// The subcommands. Each registers its flags on the main app and returns the function that runs
// it (which returns the exit code, or throws duquant::Error).
#pragma once

#include <CLI/CLI.hpp>

#include <functional>

namespace duquant::cli {

using Action = std::function<int()>;

Action register_list_linears(CLI::App& app);
Action register_pack(CLI::App& app);
Action register_presets(CLI::App& app);
Action register_synth(CLI::App& app);
Action register_version(CLI::App& app);
Action register_verify(CLI::App& app);
Action register_inspect(CLI::App& app);
Action register_import(CLI::App& app);
Action register_bake(CLI::App& app);

}  // namespace duquant::cli

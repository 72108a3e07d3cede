// Flags shared by the commands that select layers and quantize them (list-linears, pack, verify,
// inspect): selection, bit widths, the transform's settings and checkpoint naming.
#pragma once

#include <CLI/CLI.hpp>

#include <optional>
#include <string>
#include <vector>

#include "config/quant_config.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "select/checkpoint_names.hpp"
#include "select/selection.hpp"

namespace duquant::cli {

struct ConfigFlags {
  std::optional<std::string> preset;
  std::optional<std::string> config_file;
  std::optional<std::string> env_prefix;
  std::optional<std::string> runtime;
  std::optional<std::string> strip_prefix, add_prefix;
  std::vector<std::string> not_linear;
  std::optional<std::string> scope, include, exclude, layers, wbits, wbits_default, abits, block, block_out, permute,
      row_rot, lambda_smooth, act_pct, calib_steps;
  std::vector<std::string> wbits_rules;
  bool no_permute = false;
  bool include_action_head = false;
};

// Registers the selection and quantization flags on `command`.
void add_config_flags(CLI::App& command, ConfigFlags& flags);

// Applies preset, configuration file, environment and flags in that order and validates the
// result. Environment warnings and overridden runtime claims are printed to stderr.
RunConfig build_config(const ConfigFlags& flags);

// Prints "duquant: warning: <text>" to stderr.
void warn(const std::string& text);
// Prints "duquant: notice: <text>" to stderr.
void notice(const std::string& text);

// Opens a checkpoint with the run's naming (checkpoint_names.hpp), printing the notice that says
// how its names are read.
OpenedCheckpoint open_named_checkpoint(const std::string& path, const RunConfig& config);

// Warns about --layers names that are no linear layer, --wbits names that select nothing, and
// selected layers whose dtype cannot be quantized.
void warn_about_selection(const Selection& selection, const formats::Checkpoint& checkpoint);

// --threads N: 0 (the default) keeps every core; otherwise 1 to kMaxThreads, or a usage error
// (exit 2) naming `flag` before any work (a huge count would exhaust memory in the OpenMP runtime).
inline constexpr int kMaxThreads = 1024;
void apply_threads(int threads, const char* flag);

}  // namespace duquant::cli

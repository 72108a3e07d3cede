#include "cli/options.hpp"

#include <omp.h>

#include <fmt/format.h>

#include <cstdio>

#include "config/presets.hpp"
#include "config/settings.hpp"
#include "duquant/error.hpp"

extern char** environ;

namespace duquant::cli {

void warn(const std::string& text) { fmt::print(stderr, "duquant: warning: {}\n", text); }
void notice(const std::string& text) { fmt::print(stderr, "duquant: notice: {}\n", text); }

OpenedCheckpoint open_named_checkpoint(const std::string& path, const RunConfig& config) {
  return open_checkpoint(path, config.naming, std::nullopt, notice, warn);
}

void warn_about_selection(const Selection& selection, const formats::Checkpoint& checkpoint) {
  for (const auto& name : selection.layers_not_found)
    warn(fmt::format("--layers names '{}', which is no linear layer of the checkpoint", name));
  for (const auto& name : selection.wbits_unused)
    warn(fmt::format("--wbits names '{}', which is not a selected layer", name));
  for (const auto& name : selection.skipped_dtype)
    warn(fmt::format("'{}' is selected but stored as {}, which is not quantized", name,
                     formats::dtype_name(checkpoint.find(name + ".weight")->dtype)));
}

void add_config_flags(CLI::App& c, ConfigFlags& f) {
  const char* sel = "Selection";
  const char* quant = "Quantization";
  c.add_option("--preset", f.preset, "Start from a named configuration (see `duquant presets`)")->group(sel);
  c.add_option("--config", f.config_file,
               "Configuration file: a pack's manifest.json (repeats its run) or its \"config\" object")
      ->group(sel);
  c.add_option("--env-prefix", f.env_prefix,
               "Also read the runtime's variables: OPENPI_DUQUANT_ or GR00T_DUQUANT_ (flags win)")
      ->group(sel);
  c.add_option("--runtime", f.runtime,
               "Target runtime: openpi or gr00t (default selection, action-head rule, log tag; also set by "
               "--preset, --config or --env-prefix)")
      ->group(sel);
  c.add_option("--strip-prefix", f.strip_prefix,
               "Remove this prefix from stored names (default: a known layout's prefix, e.g. LeRobot's 'model.'; "
               "'' keeps the names as stored)")
      ->group(sel);
  c.add_option("--add-prefix", f.add_prefix, "Put this prefix before stored names (a checkpoint of a submodule)")
      ->group(sel);
  c.add_option("--not-linear", f.not_linear,
               "Regular expression: 2-D .weight tensors whose module matches are no linear layer; repeatable")
      ->group(sel);
  c.add_option("--scope", f.scope, "Module name prefix (runtime: SCOPE)")->group(sel);
  c.add_option("--include", f.include, "Regular expression, Python re.search semantics (INCLUDE)")->group(sel);
  c.add_option("--exclude", f.exclude, "Regular expression, Python re.search semantics (EXCLUDE)")->group(sel);
  c.add_option("--layers", f.layers, "Comma-separated exact module names; replaces include/exclude (LAYERS)")
      ->group(sel);
  c.add_flag("--include-action-head", f.include_action_head, "Do not skip action_out_proj (INCLUDE_ACTION_HEAD)")
      ->group(sel);
  c.add_option("--wbits-default", f.wbits_default, "Weight bits, 2-8 (WBITS_DEFAULT, default 4)")->group(quant);
  c.add_option("--wbits", f.wbits, "Per-layer weight bits 'name:bits,name:bits' (WBITS)")->group(quant);
  c.add_option("--wbits-rule", f.wbits_rules,
               "Weight bits by regular expression 'REGEX=bits'; repeatable, first match wins")
      ->group(quant);
  c.add_option("--abits", f.abits, "Activation bits, 2-16 (ABITS, default 8)")->group(quant);
  c.add_option("--block", f.block, "Input block size (BLOCK, default 16)")->group(quant);
  c.add_option("--block-out", f.block_out, "Output block size (BLOCK_OUT, default: --block)")->group(quant);
  c.add_option("--permute", f.permute, "Zigzag permutation 1|0 (PERMUTE, default 1)")->group(quant);
  c.add_flag("--no-permute", f.no_permute, "Same as --permute 0")->group(quant);
  c.add_option("--row-rot", f.row_rot, "Output rotations: restore|0|propagate (ROW_ROT, default restore)")
      ->group(quant);
  c.add_option("--lambda-smooth", f.lambda_smooth, "Energy smoothing 0-1 (LS, default 0.15)")->group(quant);
  c.add_option("--act-pct", f.act_pct, "Activation percentile (ACT_PCT, default 99.9)")->group(quant);
  c.add_option("--calib-steps", f.calib_steps, "Calibration calls (CALIB_STEPS, default 32)")->group(quant);
}

RunConfig build_config(const ConfigFlags& f) {
  Settings settings;
  if (f.preset) apply_preset(find_preset(*f.preset), settings);
  if (f.config_file) apply_config_file(*f.config_file, settings);
  if (f.env_prefix)
    for (const std::string& w : apply_environment(*f.env_prefix, environ, settings)) warn(w);
  if (f.runtime) settings.claim_runtime(parse_runtime(*f.runtime, "--runtime"), RuntimeSource::flag, "--runtime");
  auto flag = [&](Knob knob, const std::optional<std::string>& value) {
    if (value) settings.set(knob, *value, std::string(knob_info(knob).flag));
  };
  flag(Knob::scope, f.scope);
  flag(Knob::include, f.include);
  flag(Knob::exclude, f.exclude);
  flag(Knob::layers, f.layers);
  flag(Knob::wbits, f.wbits);
  flag(Knob::wbits_default, f.wbits_default);
  flag(Knob::abits, f.abits);
  flag(Knob::block, f.block);
  flag(Knob::block_out, f.block_out);
  DQ_CHECK(!(f.permute && f.no_permute), usage, "--permute and --no-permute given together");
  flag(Knob::permute, f.permute);
  if (f.no_permute) settings.set(Knob::permute, "0", "--no-permute");
  flag(Knob::row_rot, f.row_rot);
  flag(Knob::lambda_smooth, f.lambda_smooth);
  flag(Knob::act_pct, f.act_pct);
  flag(Knob::calib_steps, f.calib_steps);
  if (f.include_action_head) settings.set(Knob::include_action_head, "1", "--include-action-head");
  for (const std::string& rule : f.wbits_rules) settings.add_wbits_rule(rule, "--wbits-rule");
  flag(Knob::strip_prefix, f.strip_prefix);
  flag(Knob::add_prefix, f.add_prefix);
  for (const std::string& pattern : f.not_linear) settings.add_not_linear(pattern, "--not-linear");
  RunConfig config = resolve(settings);
  for (const std::string& w : overridden_runtime_claims(settings)) warn(w);
  return config;
}

void apply_threads(int threads, const char* flag) {
  DQ_CHECK(threads >= 0 && threads <= kMaxThreads, usage,
           "{}: {} threads; give 1 to {} (or leave it out for every core)", flag, threads, kMaxThreads);
  if (threads > 0) omp_set_num_threads(threads);
}

}  // namespace duquant::cli

// Configuration knobs and where their values come from.
//
// Every knob has a flag and a runtime environment-variable name (reference section 5). Values
// are collected as strings in layers -- defaults < preset < environment (--env-prefix) < flags --
// and then parsed and validated once by resolve(), so a value means the same whatever its source
// and every error names the source ("--block", "OPENPI_DUQUANT_BLOCK", "preset 'openpi-dit'").
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/quant_config.hpp"

namespace duquant {

enum class Knob {
  scope,
  include,
  exclude,
  layers,
  include_action_head,
  wbits_default,
  wbits,
  wbits_rules,
  abits,
  block,
  block_out,
  permute,
  row_rot,
  lambda_smooth,
  act_pct,
  calib_steps,
  strip_prefix,
  add_prefix,
  not_linear,
};

struct KnobInfo {
  Knob knob;
  std::string_view env;   // suffix after the prefix: "BLOCK" -> OPENPI_DUQUANT_BLOCK (empty: flag only)
  std::string_view flag;  // "--block"
};
const std::vector<KnobInfo>& knob_table();
const KnobInfo& knob_info(Knob knob);

struct Setting {
  std::string value;
  std::string source;
};

// Who named the target runtime, from the weakest to the strongest (docs/selection.md): the
// environment prefix, a preset, a configuration file, the --runtime flag.
enum class RuntimeSource { env_prefix = 0, preset = 1, config = 2, flag = 3 };
struct RuntimeClaim {
  Runtime runtime;
  RuntimeSource rank;
  std::string source;  // "--env-prefix GR00T_DUQUANT_", "preset 'openpi-dit'", "m.json: runtime", "--runtime"
};

class Settings {
 public:
  // A later set() of the same knob replaces the earlier one (callers apply sources in order).
  void set(Knob knob, std::string value, std::string source);
  // --wbits-rule may be given many times: rules accumulate in order.
  void add_wbits_rule(std::string rule, std::string source);
  // --not-linear accumulates too.
  void add_not_linear(std::string pattern, std::string source);
  const Setting* get(Knob knob) const;
  const std::vector<Setting>& wbits_rules() const noexcept { return wbits_rules_; }
  const std::vector<Setting>& not_linear() const noexcept { return not_linear_; }

  // Every source that named a runtime; resolve() picks the strongest.
  void claim_runtime(Runtime runtime, RuntimeSource rank, std::string source);
  const std::vector<RuntimeClaim>& runtime_claims() const noexcept { return runtime_claims_; }
  std::string preset;

 private:
  std::map<Knob, Setting> values_;
  std::vector<Setting> wbits_rules_;
  std::vector<Setting> not_linear_;
  std::vector<RuntimeClaim> runtime_claims_;
};

// "openpi" or "gr00t"; anything else throws duquant::Error (usage) naming `source`.
Runtime parse_runtime(std::string_view text, const std::string& source);

// The runtime claims that resolve() overrides, as warnings ("--env-prefix GR00T_DUQUANT_ implies
// gr00t; preset 'openpi-dit' targets openpi, which wins"). Conflicts between two explicit sources
// (--runtime, a configuration file) are errors of resolve() instead.
std::vector<std::string> overridden_runtime_claims(const Settings& settings);

// Reads `prefix`* variables from `environ` into `settings`. Returns warnings (variables the
// runtime reads but the packer does not need, and unknown names) for the caller to print.
// An unknown prefix throws duquant::Error (usage).
std::vector<std::string> apply_environment(std::string_view prefix, char** environ, Settings& settings);

// Applies a configuration file: the "config" object of a pack's manifest.json, or such an object
// alone (keys as in `list-linears --json`'s config). Unknown keys are errors naming the file.
// Sources read "<file>: <key>".
void apply_config_file(const std::string& path, Settings& settings);
// The same for a configuration already read; `path` names it in messages.
void apply_config_text(std::string_view text, const std::string& path, Settings& settings);

// Parses and validates every value into a RunConfig (regular expressions are compiled to check
// them). The runtime is the strongest claim's (openpi when none); include and exclude default to
// that runtime's. Throws duquant::Error (usage) naming the source and the value, or both sources
// of two explicit claims that disagree.
RunConfig resolve(const Settings& settings);

}  // namespace duquant

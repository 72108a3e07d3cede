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

#include "duquant/quant_config.hpp"

namespace duquant {

enum class Knob {
  scope, include, exclude, layers, include_action_head,
  wbits_default, wbits, wbits_rules, abits,
  block, block_out, permute, row_rot, lambda_smooth, act_pct, calib_steps,
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

class Settings {
 public:
  // A later set() of the same knob replaces the earlier one (callers apply sources in order).
  void set(Knob knob, std::string value, std::string source);
  // --wbits-rule may be given many times: rules accumulate in order.
  void add_wbits_rule(std::string rule, std::string source);
  const Setting* get(Knob knob) const;
  const std::vector<Setting>& wbits_rules() const noexcept { return wbits_rules_; }

  std::optional<Runtime> runtime;  // set by a preset or by --env-prefix
  std::string preset;

 private:
  std::map<Knob, Setting> values_;
  std::vector<Setting> wbits_rules_;
};

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
// them). Throws duquant::Error (usage) naming the source and the value.
RunConfig resolve(const Settings& settings);

}  // namespace duquant

#include "duquant/presets.hpp"

#include <fmt/format.h>

#include <string>

#include "duquant/error.hpp"

namespace duquant {
namespace {

constexpr std::string_view kExpertScope = "paligemma_with_expert.gemma_expert.model.";
constexpr std::string_view kLlmScope = "paligemma_with_expert.paligemma.model.language_model.";

}  // namespace

const std::vector<Preset>& presets() {
  static const std::vector<Preset> table{
      {"openpi-dit-qkvo", "pi0/pi0.5 action expert, attention projections only (q/k/v/o)", Runtime::openpi,
       {{Knob::scope, kExpertScope}, {Knob::include, ".*(q_proj|k_proj|v_proj|o_proj).*"}}, 72},
      {"openpi-dit", "pi0/pi0.5 action expert, attention and MLP", Runtime::openpi,
       {{Knob::scope, kExpertScope}}, 126},
      {"openpi-llm", "pi0/pi0.5 PaliGemma language model, attention and MLP", Runtime::openpi,
       {{Knob::scope, kLlmScope}}, 126},
      {"openpi-full", "pi0/pi0.5 language model and action expert, attention and MLP", Runtime::openpi,
       {{Knob::scope, "paligemma_with_expert."},
        {Knob::include, ".*(language_model|gemma_expert)\\..*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj).*"}},
       252},
      {"openpi-llm-dit-mlp", "pi0/pi0.5 language model (all) and action expert MLP", Runtime::openpi,
       {{Knob::scope, "paligemma_with_expert."},
        {Knob::include,
         ".*(language_model\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
         "gemma_expert\\..*\\.mlp\\.(gate_proj|up_proj|down_proj)).*"}},
       180},
      {"gr00t-llm-dit-mlp", "GR00T N1.5 backbone language model (all) and action-head MLP", Runtime::gr00t,
       {{Knob::scope, ""},
        {Knob::include,
         ".*(backbone\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
         "action_head\\..*\\.mlp\\.(gate_proj|up_proj|down_proj)).*"},
        {Knob::exclude,
         "(?:^|\\.)(vision|radio|norm|ln|layernorm|embed|lm_head)(?:\\.|$)|action_head\\..*\\.self_attn\\."}},
       -1},
  };
  return table;
}

const Preset& find_preset(std::string_view name) {
  for (const Preset& p : presets())
    if (p.name == name) return p;
  std::string known;
  for (const Preset& p : presets()) known += (known.empty() ? "" : ", ") + std::string(p.name);
  fail(ErrorKind::usage, "--preset: unknown preset '{}' (known: {})", name, known);
}

void apply_preset(const Preset& preset, Settings& settings) {
  const std::string source = fmt::format("preset '{}'", preset.name);
  for (const auto& [knob, value] : preset.knobs) settings.set(knob, std::string(value), source);
  settings.runtime = preset.runtime;
  settings.preset = std::string(preset.name);
}

}  // namespace duquant

#include "config/presets.hpp"

#include <fmt/format.h>

#include <string>

#include "duquant/error.hpp"

namespace duquant {
namespace {

constexpr std::string_view kExpertScope = "paligemma_with_expert.gemma_expert.model.";
constexpr std::string_view kLlmScope = "paligemma_with_expert.paligemma.model.language_model.";
constexpr std::string_view kPi = "pi0/pi0.5";
constexpr std::string_view kGr00t = "GR00T N1.5";

}  // namespace

const std::vector<Preset>& presets() {
  static const std::vector<Preset> table{
      {"openpi-dit-qkvo",
       "pi0/pi0.5 action expert, attention projections only (q/k/v/o)",
       Runtime::openpi,
       kPi,
       {{Knob::scope, kExpertScope}, {Knob::include, ".*(q_proj|k_proj|v_proj|o_proj).*"}},
       72,
       0},
      {"openpi-dit",
       "pi0/pi0.5 action expert, attention and MLP",
       Runtime::openpi,
       kPi,
       {{Knob::scope, kExpertScope}},
       126,
       0},
      {"openpi-llm",
       "pi0/pi0.5 PaliGemma language model, attention and MLP",
       Runtime::openpi,
       kPi,
       {{Knob::scope, kLlmScope}},
       126,
       0},
      {"openpi-full",
       "pi0/pi0.5 language model and action expert, attention and MLP",
       Runtime::openpi,
       kPi,
       {{Knob::scope, "paligemma_with_expert."},
        {Knob::include,
         ".*(language_model|gemma_expert)\\..*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj).*"}},
       252,
       0},
      {"openpi-llm-dit-mlp",
       "pi0/pi0.5 language model (all) and action expert MLP",
       Runtime::openpi,
       kPi,
       {{Knob::scope, "paligemma_with_expert."},
        {Knob::include,
         ".*(language_model\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
         "gemma_expert\\..*\\.mlp\\.(gate_proj|up_proj|down_proj)).*"}},
       180,
       0},
      {"gr00t-llm-dit",
       "GR00T N1.5 language model (all) and every DiT attention and feed-forward linear (the GR00T "
       "port's defaults)",
       Runtime::gr00t,
       kGr00t,
       {{Knob::scope, ""}, {Knob::include, kGr00tDefaultInclude}, {Knob::exclude, kGr00tDefaultExclude}},
       0,
       180},
      {"gr00t-llm-dit-mlp",
       "GR00T N1.5 language model (all) and DiT feed-forward (ff.net.0.proj, ff.net.2), as the "
       "published QuantVLA run script selects them",
       Runtime::gr00t,
       kGr00t,
       {{Knob::scope, ""},
        {Knob::include,
         ".*(backbone\\.eagle_model\\.language_model\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
         "action_head\\.model\\.transformer_blocks\\.\\d+\\.ff\\.net\\.(0\\.proj|2)).*"},
        {Knob::exclude, "(?:^|\\.)(vision|radio|norm|ln|layernorm|embed|lm_head|attn1)(?:\\.|$)"}},
       0,
       116},
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
  settings.claim_runtime(preset.runtime, RuntimeSource::preset, source);
  settings.preset = std::string(preset.name);
}

}  // namespace duquant

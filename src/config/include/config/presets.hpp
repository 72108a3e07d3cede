// Named configurations from the field's existing run scripts, so `--preset NAME` reproduces a
// known setup. A preset sets knobs before the environment and flags, which may override it.
#pragma once

#include <string_view>
#include <utility>
#include <vector>

#include "config/settings.hpp"

namespace duquant {

struct Preset {
  std::string_view name;
  std::string_view description;
  Runtime runtime;
  std::string_view model;  // the model whose names it is written for: "pi0/pi0.5" or "GR00T N1.5"
  std::vector<std::pair<Knob, std::string_view>> knobs;
  int pi05_layers;   // layers it selects on a full pi0.5 checkpoint (tests hold these)
  int gr00t_layers;  // layers it selects on a full GR00T N1.5 checkpoint
};

const std::vector<Preset>& presets();
// The preset of that name; an unknown name throws duquant::Error (usage) listing the known ones.
const Preset& find_preset(std::string_view name);
// Applies the preset's knobs to `settings` with source "preset '<name>'".
void apply_preset(const Preset& preset, Settings& settings);

}  // namespace duquant

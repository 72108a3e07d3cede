// The resolved configuration as JSON: what list-linears --json and the manifest's "config" hold.
#pragma once

#include <nlohmann/json.hpp>

#include "config/quant_config.hpp"

namespace duquant {

// Every knob, resolved: runtime, preset, scope, include/exclude, layers, the bit widths and their
// rules, the transform's settings, calibration, and the naming prefixes.
nlohmann::ordered_json config_json(const RunConfig& config);

}  // namespace duquant

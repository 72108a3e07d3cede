// The calibration part of `duquant pack`, decided before any layer is packed: which dump calls each
// selected layer uses, which layers the dump lacks, and the smoothing scale of every group
// (docs/calibration.md).
#pragma once

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "duquant/pack.hpp"
#include "formats/calib_dump.hpp"
#include "math/smoothing.hpp"
#include "pack/pack_layer.hpp"
#include "select/selection.hpp"

namespace duquant {

struct CalibrationPlan {
  std::optional<formats::CalibDump> dump;
  std::vector<std::string> missing;                  // selected layers without calls (own or their group's)
  std::vector<SmoothGroup> groups;                   // with smoothing: the groups of the selected layers
  std::map<std::string, std::size_t> group_of;       // selected layer -> index into `groups`
  std::map<std::string, std::vector<float>> scales;  // group key -> s, for the groups that are smoothed
  std::map<std::string, std::string> source_of;      // selected layer -> the dump layer whose calls it uses

  // The layer's calibration input (empty when there is no dump or no calls for it).
  LayerCalibration for_layer(const LinearLayer& layer) const;
  // The group key of a smoothed layer, or nullptr.
  const SmoothGroup* smoothing_group(const std::string& layer) const;
};

// Opens and checks the dump against the selection (every call's width against the layer's
// in_features: duquant::Error, format, naming both), reports missing layers through `o.warn` (an
// error with `o.strict`), and with `o.smooth_alpha` computes each group's s from the first
// `calib_steps` calls of its first member in the dump and all its members' weights. With
// `o.fold_smoothing`, groups whose input has no norm to fold into are not smoothed (s = 1).
CalibrationPlan plan_calibration(const PackOptions& o, const formats::Checkpoint& ckpt,
                                 const std::vector<LinearLayer>& linears, const Selection& selection);

}  // namespace duquant

// Which linear layers a configuration selects, exactly as the runtime decides (reference
// section 5): a layer is selected when its name starts with the scope and it is in LAYERS (when
// given) or else matches INCLUDE and does not match EXCLUDE (Python re.search semantics); layers
// named action_out_proj are skipped unless include_action_head is on. Each selected layer gets its
// weight bits: an exact WBITS entry, else the first matching rule, else the default.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/quant_config.hpp"
#include "select/linear_layers.hpp"

namespace duquant {

struct SelectedLayer {
  const LinearLayer* layer = nullptr;
  int wbits = 0;
};

struct Selection {
  std::vector<SelectedLayer> layers;  // in module order
  std::size_t linear_count = 0;       // linear layers in the checkpoint
  std::vector<std::string> skipped_action_head;
  std::vector<std::string> skipped_dtype;     // selected by name but not F32/F16/BF16
  std::vector<std::string> layers_not_found;  // LAYERS entries that are no linear layer
  std::vector<std::string> wbits_unused;      // WBITS names that name no selected layer
};

// `linears` must outlive the returned selection (it points into it). `runtime` decides the
// action-head rule.
Selection select_layers(const std::vector<LinearLayer>& linears, const SelectionConfig& config, int wbits_default,
                        Runtime runtime = Runtime::openpi);
// The same, with everything from `config`.
Selection select_layers(const std::vector<LinearLayer>& linears, const RunConfig& config);

// Largest width (in or out features) of a layer that can be selected: far above any real model's
// (a 257,152-token vocabulary), small enough that every size derived from it fits its type.
inline constexpr std::uint64_t kMaxLayerWidth = std::uint64_t{1} << 24;

// Members of the layer's `<module>.npz` as `duquant pack` writes it (pack-format.md): weight_scale,
// meta, perm, one Rin_b per input block, R_in_blocks, one Rout_b per output block, R_out_blocks,
// act_scale and smooth_scale.
std::uint64_t pack_npz_members(std::uint64_t in_features, std::uint64_t out_features, const QuantConfig& q,
                               bool calibrated = false, bool smoothed = false);

// The shape rules of a selected layer, checked where it is selected, before any work: both widths
// at least 1 (format error, exit 3: a linear layer with no input or no output is no layer) and at
// most kMaxLayerWidth (format error), and an npz of at most formats::kMaxNpzMembers members
// (usage error, exit 2: the block sizes ask for more). Messages name `label`, the layer, its shape.
void check_selected_shapes(const Selection& selection, const QuantConfig& q, const std::string& label,
                           bool calibrated = false, bool smoothed = false);

// True for a module the runtime skips unless INCLUDE_ACTION_HEAD is on. OpenPI: `action_out_proj`
// at top level or as the last component of a dotted name. GR00T: every name that contains
// `action_head` but does not start with `action_head.model.`, and every name ending in
// `action_out_proj`.
bool is_action_head(const std::string& name, Runtime runtime = Runtime::openpi);

}  // namespace duquant

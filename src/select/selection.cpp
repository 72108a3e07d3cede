#include "select/selection.hpp"

#include <algorithm>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

#include "base/regex.hpp"
#include "duquant/error.hpp"
#include "formats/npz.hpp"

namespace duquant {

bool is_action_head(const std::string& name, Runtime runtime) {
  constexpr std::string_view head = "action_out_proj";
  const bool ends_in_head =
      name.size() >= head.size() && name.compare(name.size() - head.size(), head.size(), head) == 0;
  if (runtime == Runtime::gr00t)
    return ends_in_head || (name.find("action_head") != std::string::npos && name.rfind("action_head.model.", 0) != 0);
  if (name == head) return true;
  return name.size() > head.size() && name.compare(name.size() - head.size(), head.size(), head) == 0 &&
         name[name.size() - head.size() - 1] == '.';
}

Selection select_layers(const std::vector<LinearLayer>& linears, const RunConfig& config) {
  return select_layers(linears, config.selection, config.quant.wbits_default, config.runtime);
}

Selection select_layers(const std::vector<LinearLayer>& linears, const SelectionConfig& config, int wbits_default,
                        Runtime runtime) {
  const Regex include(config.include, "include");
  const Regex exclude(config.exclude, "exclude");
  std::vector<std::pair<Regex, int>> rules;
  for (const auto& [pattern, bits] : config.wbits_rules) rules.emplace_back(Regex(pattern, "--wbits-rule"), bits);
  const std::unordered_set<std::string> wanted(config.layers.begin(), config.layers.end());
  std::unordered_map<std::string_view, int> exact_bits;  // the first entry of a name wins
  for (const auto& [name, bits] : config.wbits) exact_bits.try_emplace(name, bits);

  Selection sel;
  sel.linear_count = linears.size();
  std::unordered_set<std::string_view> seen;
  for (const LinearLayer& layer : linears) {
    seen.insert(layer.name);
    if (layer.name.compare(0, config.scope.size(), config.scope) != 0) continue;
    if (!wanted.empty()) {
      if (wanted.count(layer.name) == 0) continue;
    } else if (!include.search(layer.name) || exclude.search(layer.name)) {
      continue;
    }
    if (is_action_head(layer.name, runtime) && !config.include_action_head) {
      sel.skipped_action_head.push_back(layer.name);
      continue;
    }
    if (!layer.quantizable()) {
      sel.skipped_dtype.push_back(layer.name);
      continue;
    }
    int bits = wbits_default;
    if (const auto exact = exact_bits.find(layer.name); exact != exact_bits.end()) {
      bits = exact->second;
    } else {
      for (const auto& [rule, rule_bits] : rules) {
        if (rule.search(layer.name)) {
          bits = rule_bits;
          break;
        }
      }
    }
    sel.layers.push_back({&layer, bits});
  }
  for (const std::string& name : config.layers)
    if (seen.count(name) == 0) sel.layers_not_found.push_back(name);
  std::unordered_set<std::string_view> selected;
  for (const SelectedLayer& s : sel.layers) selected.insert(s.layer->name);
  for (const auto& entry : config.wbits)
    if (selected.count(entry.first) == 0) sel.wbits_unused.push_back(entry.first);
  return sel;
}

std::uint64_t pack_npz_members(std::uint64_t in_features, std::uint64_t out_features, const QuantConfig& q,
                               bool calibrated, bool smoothed) {
  const auto blocks = [](std::uint64_t width, int block) {
    const auto b = static_cast<std::uint64_t>(std::max(block, 1));
    return width / b + (width % b != 0 ? 1 : 0);
  };
  std::uint64_t n = 2;                                                          // weight_scale, meta
  n += q.permute ? 1 : 0;                                                       // perm
  n += blocks(in_features, q.block) + 1;                                        // Rin_b, R_in_blocks
  n += (q.row_rot == RowRot::off ? 0 : blocks(out_features, q.block_out)) + 1;  // Rout_b, R_out_blocks
  n += (calibrated ? 1 : 0) + (smoothed ? 1 : 0);                               // act_scale, smooth_scale
  return n;
}

void check_selected_shapes(const Selection& selection, const QuantConfig& q, const std::string& label, bool calibrated,
                           bool smoothed) {
  for (const SelectedLayer& s : selection.layers) {
    const LinearLayer& l = *s.layer;
    DQ_CHECK(l.out_features >= 1 && l.in_features >= 1, format,
             "{}: layer '{}': weight shape [{}, {}] has no {}; a linear layer needs at least one input and one output",
             label, l.name, l.out_features, l.in_features,
             l.in_features == 0 ? "input (in_features 0)" : "output (out_features 0)");
    DQ_CHECK(l.out_features <= kMaxLayerWidth && l.in_features <= kMaxLayerWidth, format,
             "{}: layer '{}': weight shape [{}, {}] is wider than the {} features a layer may have", label, l.name,
             l.out_features, l.in_features, kMaxLayerWidth);
    const std::uint64_t members = pack_npz_members(l.in_features, l.out_features, q, calibrated, smoothed);
    DQ_CHECK(
        members <= formats::kMaxNpzMembers, usage,
        "{}: layer '{}' [{}, {}]: its npz would hold {} members with block {} and block_out {}, more than the {} an "
        "npz can hold; use a larger --block / --block-out",
        label, l.name, l.out_features, l.in_features, members, q.block, q.block_out, formats::kMaxNpzMembers);
  }
}

}  // namespace duquant

#include "report/dryrun_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <string_view>
#include <unordered_map>

#include "config/config_json.hpp"
#include "config/presets.hpp"
#include "packfmt/layout.hpp"

namespace duquant {

std::string dryrun_text(const Selection& selection, const RunConfig& config) {
  const std::string_view tag = runtime_log_tag(config.runtime);
  const QuantConfig& q = config.quant;
  std::string out;
  out += fmt::format("[{}] SCOPE filter: '{}'\n", tag, config.selection.scope);
  out += fmt::format("[{}] Matched Linear layers: {}\n", tag, selection.layers.size());
  for (const SelectedLayer& s : selection.layers) {
    out += fmt::format("[{}][DRYRUN] {}: Linear({}->{}) W{} A{} perm={} block_in={} block_out={} row_rot={}\n", tag,
                       s.layer->name, s.layer->in_features, s.layer->out_features, s.wbits, q.abits,
                       q.permute ? "True" : "False", q.block, q.block_out, row_rot_name(q.row_rot));
  }
  out += fmt::format("[{}] Dry-run total layers listed: {}\n", tag, selection.layers.size());
  return out;
}

std::string no_match_text(const std::vector<LinearLayer>& linears, const RunConfig& config, const LayoutGuess& layout,
                          const NameMapping& names) {
  const std::string_view tag = runtime_log_tag(config.runtime);
  std::string scope = config.selection.scope;
  if (!scope.empty() && scope.back() == '.') scope.pop_back();
  std::string out =
      fmt::format("[{}] No Linear layers matched. Total Linear layers in the checkpoint: {}\n", tag, linears.size());
  const std::size_t shown = std::min<std::size_t>(10, linears.size());
  out += fmt::format("[{}] First {} Linear layer names:\n", tag, shown);
  for (std::size_t i = 0; i < shown; ++i) out += fmt::format("[{}]   {}\n", tag, linears[i].name);
  const auto starting = std::count_if(linears.begin(), linears.end(), [&](const LinearLayer& l) {
    return l.name.compare(0, scope.size(), scope) == 0;
  });
  out += fmt::format("[{}] Linear layers whose names start with '{}': {}\n", tag, scope, starting);
  // Beyond the runtime's lines: what is wrong.
  std::string looks;
  if (layout.model.empty() && layout.prefixes.empty()) {
    looks =
        "no known model's names (pi0/pi0.5: paligemma_with_expert.*; GR00T N1.5: backbone.eagle_model.*, "
        "action_head.model.*)";
  } else if (!layout.prefix) {
    looks = ambiguous_layout_text(layout);
  } else {
    looks =
        fmt::format("{} names{}", layout.model,
                    layout.prefix->empty() ? std::string(" with no prefix")
                                           : fmt::format(" under '{}' ({}'s layout)", *layout.prefix, layout.layout));
    if (!names.identity()) {
      looks += ", read";
      if (!names.checkpoint_prefix.empty()) looks += fmt::format(" without '{}'", names.checkpoint_prefix);
      if (!names.runtime_prefix.empty())
        looks += fmt::format("{} with '{}' before them", names.checkpoint_prefix.empty() ? "" : " and",
                             names.runtime_prefix);
    } else if (!layout.prefix->empty())
      looks += ", read as stored (the prefix is kept)";
  }
  out += fmt::format("duquant: the checkpoint holds {}\n", looks);
  if (!config.preset.empty()) {
    for (const Preset& p : presets())
      if (p.name == config.preset) {
        out += fmt::format("duquant: preset '{}' is written for {} names ({} runtime)", p.name, p.model,
                           runtime_name(p.runtime));
        if (!layout.model.empty() && layout.model.find(p.model == "GR00T N1.5" ? "GR00T" : "pi0") == std::string::npos)
          out += fmt::format(": this checkpoint is {}; see `duquant presets`", layout.model);
        out += "\n";
      }
  }
  return out;
}

nlohmann::ordered_json selection_json(const Selection& selection, const RunConfig& config,
                                      const OpenedCheckpoint* opened, const std::string& source) {
  // The sizes come from the pack's layout (packfmt/layout.hpp), for an uncalibrated pack.
  std::vector<LayerLayout> layouts;
  for (const SelectedLayer& s : selection.layers) layouts.push_back(layer_layout(*s.layer, s.wbits));
  ManifestCheckpoint ck;
  if (opened != nullptr) {
    ck.source = std::filesystem::path(source).filename().string();
    for (const auto& f : opened->checkpoint.files())
      ck.files.push_back({f.path.filename().string(), f.size, f.header_bytes});
    ck.names = names_json(opened->names);
  }
  const PackSize size = pack_size(layouts, config, ck);

  nlohmann::ordered_json j;
  j["config"] = config_json(config);
  j["layers"] = nlohmann::ordered_json::array();
  std::uint64_t params = 0, bytes = 0;
  for (std::size_t k = 0; k < selection.layers.size(); ++k) {
    const SelectedLayer& s = selection.layers[k];
    const LinearLayer& l = *s.layer;
    const std::uint64_t layer_bytes = l.weight->nbytes + (l.bias ? l.bias->nbytes : 0);
    nlohmann::ordered_json e;
    e["name"] = l.name;
    e["shape"] = {l.out_features, l.in_features};
    e["dtype"] = formats::dtype_name(l.weight->dtype);
    e["wbits"] = s.wbits;
    e["abits"] = config.quant.abits;
    e["bias"] = l.bias != nullptr;
    e["bytes"] = layer_bytes;
    e["tensor_bytes"] = size.layer_tensor_bytes[k];
    e["npz_bytes"] = size.layer_npz_bytes[k];
    e["packed_bytes"] = size.layer_tensor_bytes[k] + size.layer_npz_bytes[k];
    j["layers"].push_back(std::move(e));
    params += l.weight->numel + (l.bias ? l.bias->numel : 0);
    bytes += layer_bytes;
  }
  j["totals"] = {{"layers", selection.layers.size()},
                 {"linear_layers_in_checkpoint", selection.linear_count},
                 {"parameters", params},
                 {"bytes", bytes},
                 {"tensor_bytes", size.tensor_bytes},
                 {"npz_bytes", size.npz_bytes},
                 {"safetensors_bytes", size.safetensors_bytes},
                 {"manifest_bytes", size.manifest_bytes},
                 {"packed_bytes", size.total()}};
  j["skipped"] = {{"action_head", selection.skipped_action_head},
                  {"not_float", selection.skipped_dtype},
                  {"layers_not_found", selection.layers_not_found},
                  {"wbits_unused", selection.wbits_unused}};
  return j;
}

}  // namespace duquant

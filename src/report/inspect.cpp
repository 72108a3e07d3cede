// inspect: layer groups, block types, head dimensions and the checkpoint report.
#include "duquant/inspect.hpp"

#include <fmt/format.h>

#include <fstream>
#include <iterator>

#include "config/presets.hpp"
#include "config/settings.hpp"
#include "duquant/error.hpp"
#include "formats/strict_json.hpp"
#include "packfmt/layout.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"

namespace duquant {
namespace {

bool contains(std::string_view s, std::string_view part) { return s.find(part) != std::string_view::npos; }
bool starts_with(std::string_view s, std::string_view p) { return s.substr(0, p.size()) == p; }

std::string_view last_component(std::string_view module) {
  const auto dot = module.rfind('.');
  return dot == std::string_view::npos ? module : module.substr(dot + 1);
}

// The head dimension a config object states: head_dim, attention_head_dim, or hidden_size /
// num_attention_heads when that divides.
std::optional<std::int64_t> head_dim_of(const nlohmann::json& obj) {
  for (const char* key : {"head_dim", "attention_head_dim"}) {
    const auto it = obj.find(key);
    if (it != obj.end() && it->is_number_integer() && it->get<std::int64_t>() > 0) return it->get<std::int64_t>();
  }
  const auto h = obj.find("hidden_size"), n = obj.find("num_attention_heads");
  if (h != obj.end() && n != obj.end() && h->is_number_integer() && n->is_number_integer()) {
    const auto hv = h->get<std::int64_t>(), nv = n->get<std::int64_t>();
    if (hv > 0 && nv > 0 && hv % nv == 0) return hv / nv;
  }
  return std::nullopt;
}

std::optional<LayerGroup> group_of_config_key(std::string_view key) {
  if (contains(key, "vision")) return LayerGroup::vision;
  if (contains(key, "text") || contains(key, "llm") || contains(key, "language")) return LayerGroup::language_model;
  if (contains(key, "expert") || contains(key, "action")) return LayerGroup::action_expert;
  return std::nullopt;
}

// Nested objects (two levels deep: HF configs nest text_config, GR00T backbone_cfg.llm_config ...).
void collect_nested(const nlohmann::json& obj, int depth, std::optional<LayerGroup> inherited, HeadDims& dims) {
  for (const auto& [key, value] : obj.items()) {
    if (!value.is_object()) continue;
    const std::optional<LayerGroup> g = group_of_config_key(key) ? group_of_config_key(key) : inherited;
    if (g && !dims.by_group.count(*g))
      if (const auto hd = head_dim_of(value)) dims.by_group[*g] = *hd;
    if (depth < 2) collect_nested(value, depth + 1, g, dims);
  }
}

}  // namespace

LayerGroup layer_group(std::string_view m) {
  // pi0.5: paligemma_with_expert.paligemma.model.{vision_tower,multi_modal_projector,language_model}.
  // and paligemma_with_expert.gemma_expert.; GR00T N1.5: backbone.eagle_model.{vision_model,mlp1,
  // language_model}. and action_head.model. (the DiT); everything else is a head or other.
  if (contains(m, "vision_tower.") || contains(m, "vision_model.") || contains(m, "multi_modal_projector") ||
      contains(m, "eagle_model.mlp1"))
    return LayerGroup::vision;
  if (contains(m, "language_model.")) return LayerGroup::language_model;
  if (contains(m, "gemma_expert.") || starts_with(m, "action_head.model.")) return LayerGroup::action_expert;
  return LayerGroup::other;
}

std::string_view group_key(LayerGroup g) noexcept {
  switch (g) {
    case LayerGroup::vision: return "vision";
    case LayerGroup::language_model: return "language_model";
    case LayerGroup::action_expert: return "action_expert";
    case LayerGroup::other: break;
  }
  return "other";
}

std::string_view group_title(LayerGroup g) noexcept {
  switch (g) {
    case LayerGroup::vision: return "vision";
    case LayerGroup::language_model: return "language model";
    case LayerGroup::action_expert: return "action expert";
    case LayerGroup::other: break;
  }
  return "heads/other";
}

std::string block_type(std::string_view module) {
  std::string_view last = last_component(module);
  if (last.size() > 5 && last.substr(last.size() - 5) == "_proj") last.remove_suffix(5);
  return std::string(last);
}

HeadAxis head_axis(std::string_view module) {
  const std::string_view last = last_component(module);
  if (last == "q_proj" || last == "k_proj" || last == "v_proj") return HeadAxis::rows;
  if (last == "o_proj" || (last == "out_proj" && contains(module, "attn."))) return HeadAxis::columns;
  // diffusers-style attention (GR00T's DiT): attn1.to_q/to_k/to_v, attn1.to_out.0
  if (contains(module, "attn1.")) {
    if (last == "to_q" || last == "to_k" || last == "to_v") return HeadAxis::rows;
    if (module.size() >= 9 && module.substr(module.size() - 9) == ".to_out.0") return HeadAxis::columns;
  }
  return HeadAxis::none;
}

std::optional<std::int64_t> HeadDims::of(std::string_view module) const {
  const auto it = by_group.find(layer_group(module));
  if (it != by_group.end()) return it->second;
  return all;
}

HeadDims head_dims_from_config(const std::filesystem::path& checkpoint) {
  namespace fs = std::filesystem;
  HeadDims dims;
  std::error_code ec;
  const fs::path dir = fs::is_directory(checkpoint, ec) ? checkpoint : checkpoint.parent_path();
  const fs::path file = (dir.empty() ? fs::path(".") : dir) / "config.json";
  if (!fs::is_regular_file(file, ec)) return dims;
  std::ifstream in(file, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  if (!in && !in.eof()) {
    dims.warnings.push_back(fmt::format("{}: cannot be read; head dimension unknown", file.string()));
    return dims;
  }
  try {
    const nlohmann::json j = formats::parse_strict_json(text, file.string(), 64);
    if (!j.is_object()) {
      dims.warnings.push_back(fmt::format("{}: not a JSON object; head dimension unknown", file.string()));
      return dims;
    }
    dims.all = head_dim_of(j);
    collect_nested(j, 0, std::nullopt, dims);
    if (dims.known()) dims.source = file.string();
  } catch (const Error& e) {
    dims.warnings.push_back(fmt::format("{} (head dimension unknown)", e.what()));
  }
  return dims;
}

// Both from the pack's layout (packfmt/layout.hpp): the layer's tensors without a bias, plus the
// bias as stored.
std::uint64_t packed_layer_bytes(std::uint64_t o, std::uint64_t i, int wbits, const QuantConfig& q,
                                 std::uint64_t bias_bytes) {
  LayerLayout l;
  l.out_features = o;
  l.in_features = i;
  l.wbits = wbits;
  return layer_tensor_bytes(l, q) + bias_bytes;
}

std::uint64_t conformance_bytes(std::uint64_t o, std::uint64_t i) {
  LayerLayout l;
  l.out_features = o;
  l.in_features = i;
  std::uint64_t n = 0;
  for (const formats::TensorSpec& t : layer_tensor_specs(l, QuantConfig{}))
    if (is_conformance_tensor(t, l)) n += t.nbytes();
  return n;
}

CheckpointReport inspect_checkpoint(const formats::Checkpoint& ckpt, HeadDims head_dims) {
  CheckpointReport r;
  r.source = ckpt.source().string();
  r.files = ckpt.files().size();
  r.tensors = ckpt.tensors().size();
  for (const formats::CheckpointFile& f : ckpt.files()) {
    if (r.baked || !f.metadata.count("duquant.baked")) continue;
    auto value = [&](const char* key) {
      const auto it = f.metadata.find(key);
      return it == f.metadata.end() ? std::string() : it->second;
    };
    r.baked = CheckpointReport::Baked{value("duquant.pack"), value("duquant.pack_manifest_xxh128"),
                                      value("duquant.bake_dtype"), value("duquant.activations")};
  }
  const std::vector<LinearLayer> linears = find_linear_layers(ckpt);
  r.linears = linears.size();
  for (const LinearLayer& l : linears) r.linear_names.push_back(l.name);
  for (LayerGroup g : kLayerGroups) r.groups.push_back(GroupStats{g, 0, 0, 0, 0, {}});
  for (const LinearLayer& l : linears) {
    GroupStats& s = r.groups[static_cast<std::size_t>(layer_group(l.name))];
    ++s.layers;
    if (head_axis(l.name) != HeadAxis::none) ++s.attention_layers;
    s.parameters += l.weight->numel + (l.bias ? l.bias->numel : 0);
    s.bytes += l.weight->nbytes + (l.bias ? l.bias->nbytes : 0);
    ++s.dtypes[std::string(formats::dtype_name(l.weight->dtype))];
  }
  for (const Preset& p : presets()) {
    Settings settings;
    apply_preset(p, settings);
    const RunConfig config = resolve(settings);
    const Selection sel = select_layers(linears, config);
    PresetEstimate e;
    e.name = std::string(p.name);
    e.description = std::string(p.description);
    e.block = config.quant.block;
    e.block_out = config.quant.block_out;
    e.wbits_default = config.quant.wbits_default;
    std::size_t split = 0;
    std::string example;
    for (const SelectedLayer& s : sel.layers) {
      const LinearLayer& l = *s.layer;
      if (!l.quantizable()) continue;  // pack skips what it cannot quantize
      // pack refuses the whole selection (check_selected_shapes, warned about below): no estimate
      if (l.out_features == 0 || l.in_features == 0 || l.out_features > kMaxLayerWidth ||
          l.in_features > kMaxLayerWidth)
        continue;
      const std::uint64_t bias = l.bias ? l.bias->nbytes : 0;
      ++e.layers;
      e.selected.emplace_back(l.name, s.wbits);
      e.bytes_in += l.weight->nbytes + bias;
      e.packed_bytes += packed_layer_bytes(l.out_features, l.in_features, s.wbits, config.quant, bias);
      e.conformance_bytes += conformance_bytes(l.out_features, l.in_features);
      const auto hd = head_dims.of(l.name);
      if (hd && head_axis(l.name) == HeadAxis::rows && config.quant.row_rot != RowRot::off &&
          *hd % config.quant.block_out != 0 && split++ == 0)
        example = fmt::format("{} (head_dim {})", l.name, *hd);
    }
    try {
      check_selected_shapes(sel, config.quant, r.source);
    } catch (const Error& refused) {
      r.warnings.push_back(
          fmt::format("preset '{}': `duquant pack` would refuse this selection: {}", p.name, refused.what()));
    }
    if (split > 0)
      r.warnings.push_back(
          fmt::format("preset '{}': block_out {} does not divide the head dimension of {} q/k/v "
                      "layer{}, e.g. {}: output rotations would mix rows of two heads",
                      p.name, config.quant.block_out, split, split == 1 ? "" : "s", example));
    r.presets.push_back(std::move(e));
  }
  r.warnings.insert(r.warnings.begin(), head_dims.warnings.begin(), head_dims.warnings.end());
  r.head_dims = std::move(head_dims);
  return r;
}

}  // namespace duquant

#include "math/smoothing.hpp"

#include <algorithm>
#include <cmath>
#include <string_view>
#include <unordered_map>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"

namespace duquant {

namespace {

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Where a layer's input comes from when it shares it with siblings: the block prefix, the module
// path inside the block (".self_attn." or ".mlp."), the sibling leaf names and the kind of block.
struct SharedInput {
  std::string block;                       // name prefix before ".self_attn." / ".mlp."
  std::string_view sub;                    // ".self_attn." or ".mlp."
  std::vector<std::string_view> siblings;  // leaf names of the linears that read the input
  bool attention = false;                  // q/k/v (else an MLP input)
  bool siglip_mlp = false;                 // fc1
};

std::optional<SharedInput> shared_input(std::string_view name) {
  struct Rule {
    std::string_view sub, leaf;
    std::vector<std::string_view> siblings;
    bool attention, siglip_mlp;
  };
  static const std::vector<Rule> rules = {
      {".self_attn.", "q_proj", {"q_proj", "k_proj", "v_proj"}, true, false},
      {".self_attn.", "k_proj", {"q_proj", "k_proj", "v_proj"}, true, false},
      {".self_attn.", "v_proj", {"q_proj", "k_proj", "v_proj"}, true, false},
      {".mlp.", "gate_proj", {"gate_proj", "up_proj"}, false, false},
      {".mlp.", "up_proj", {"gate_proj", "up_proj"}, false, false},
      {".mlp.", "fc1", {"fc1"}, false, true},
  };
  for (const Rule& r : rules) {
    const std::size_t suffix = r.sub.size() + r.leaf.size();
    if (name.size() <= suffix) continue;  // the block prefix must not be empty
    if (!ends_with(name, r.leaf) || name.compare(name.size() - suffix, r.sub.size(), r.sub) != 0) continue;
    return SharedInput{std::string(name.substr(0, name.size() - suffix)), r.sub, r.siblings, r.attention, r.siglip_mlp};
  }
  return std::nullopt;
}

bool float_dtype(const formats::TensorRef* t) { return t != nullptr && formats::converts_to_f32(t->dtype); }

bool is_vector(const formats::TensorRef* t, std::uint64_t n) {
  return float_dtype(t) && t->shape.size() == 1 && t->shape[0] == n;
}

bool has_prefix_tensor(const formats::Checkpoint& ckpt, const std::string& prefix) {
  return ckpt.find(prefix + ".weight") != nullptr || ckpt.find(prefix + ".bias") != nullptr;
}

// Fills key, norm, norm_weight and norm_bias of a shared-input group whose members read
// `in_features` channels.
void describe_norm(const formats::Checkpoint& ckpt, const SharedInput& in, std::uint64_t in_features, SmoothGroup& g) {
  if (in.siglip_mlp || (in.attention && has_prefix_tensor(ckpt, in.block + ".layer_norm1"))) {
    // SigLIP: LayerNorm(x)·w + b. The bias is optional (LayerNorm(bias=False), or a checkpoint
    // that stores none): without one only w is folded and norm_bias stays empty.
    g.key = in.block + (in.siglip_mlp ? ".layer_norm2" : ".layer_norm1");
    const formats::TensorRef* w = ckpt.find(g.key + ".weight");
    const formats::TensorRef* b = ckpt.find(g.key + ".bias");
    if (!is_vector(w, in_features) || (b != nullptr && !is_vector(b, in_features))) return;
    g.norm = NormKind::layer_norm;
    g.norm_weight = w->name;
    if (b != nullptr) g.norm_bias = b->name;
    return;
  }
  // Gemma: the attention input comes from input_layernorm. The MLP input comes from
  // post_attention_layernorm (Gemma 1, PaliGemma, pi0.5) -- unless the block has a
  // pre_feedforward_layernorm (Gemma 2/3 layout), where post_attention_layernorm normalises the
  // attention output instead and the MLP reads pre_feedforward_layernorm.
  if (in.attention) {
    g.key = in.block + ".input_layernorm";
  } else if (has_prefix_tensor(ckpt, in.block + ".pre_feedforward_layernorm")) {
    g.key = in.block + ".pre_feedforward_layernorm";
  } else {
    g.key = in.block + ".post_attention_layernorm";
  }
  const formats::TensorRef* w = ckpt.find(g.key + ".weight");
  const formats::TensorRef* dw = ckpt.find(g.key + ".dense.weight");
  const formats::TensorRef* db = ckpt.find(g.key + ".dense.bias");
  const bool gemma = is_vector(w, in_features);
  const bool ada = float_dtype(dw) && dw->shape.size() == 2 && dw->shape[0] == 3 * in_features && dw->shape[1] > 0 &&
                   is_vector(db, 3 * in_features);
  // Both a plain weight and a modulation: not a form we know how to fold, so no norm.
  if (w != nullptr && (dw != nullptr || db != nullptr)) return;
  if (gemma) {
    g.norm = NormKind::gemma_rms;
    g.norm_weight = w->name;
  } else if (ada) {
    g.norm = NormKind::ada_rms;
    g.norm_weight = dw->name;
    g.norm_bias = db->name;
  }
}

// The group of the linears that read the same input as a selected layer: every sibling that is
// a linear of the checkpoint, in checkpoint order, and the norm that produces the input.
SmoothGroup shared_group(const formats::Checkpoint& ckpt, const std::vector<LinearLayer>& linears,
                         const std::unordered_map<std::string_view, std::size_t>& position, const std::string& name,
                         const SharedInput& in) {
  std::vector<std::size_t> members;
  for (std::string_view leaf : in.siblings) {
    const auto it = position.find(in.block + std::string(in.sub) + std::string(leaf));
    if (it != position.end()) members.push_back(it->second);
  }
  std::sort(members.begin(), members.end());
  DQ_CHECK(!members.empty(), internal, "smoothing groups: selected layer '{}' is not a linear of the checkpoint", name);
  const LinearLayer& first = linears[members.front()];
  SmoothGroup g;
  for (std::size_t m : members) {
    DQ_CHECK(linears[m].in_features == first.in_features, format,
             "smoothing groups: '{}' ({} inputs) and '{}' ({} inputs) read the same input but differ in width",
             first.name, first.in_features, linears[m].name, linears[m].in_features);
    g.layers.push_back(linears[m].name);
  }
  describe_norm(ckpt, in, first.in_features, g);
  return g;
}

}  // namespace

std::vector<SmoothGroup> smoothing_groups(const formats::Checkpoint& ckpt, const std::vector<LinearLayer>& linears,
                                          const std::vector<SelectedLayer>& selected) {
  std::unordered_map<std::string_view, std::size_t> position;  // linear name -> index in `linears`
  for (std::size_t i = 0; i < linears.size(); ++i) position.emplace(linears[i].name, i);

  std::vector<SmoothGroup> out;
  std::unordered_map<std::string, std::size_t> by_key;  // group key -> index in `out`
  for (const SelectedLayer& sel : selected) {
    DQ_CHECK(sel.layer != nullptr, internal, "smoothing groups: a selected layer without its linear layer");
    const std::string& name = sel.layer->name;
    const std::optional<SharedInput> in = shared_input(name);
    // A layer that shares its input with no known sibling is alone, keyed by its own name.
    SmoothGroup g = in ? shared_group(ckpt, linears, position, name, *in) : SmoothGroup{name, {name}, {}, {}, {}};
    const auto found = by_key.find(g.key);
    if (found != by_key.end()) {
      // Already listed through an earlier selected member: it must be the very same group.
      DQ_CHECK(out[found->second].layers == g.layers, internal,
               "smoothing groups: key '{}' names two different groups (first member '{}', then '{}')", g.key,
               out[found->second].layers.front(), g.layers.front());
      continue;
    }
    by_key.emplace(g.key, out.size());
    out.push_back(std::move(g));
  }
  return out;
}

std::vector<float> smoothing_scales(std::span<const float> act_absmax, std::span<const float> weight_absmax,
                                    double alpha) {
  DQ_CHECK(act_absmax.size() == weight_absmax.size(), internal,
           "smoothing scales: {} activation maxima but {} weight maxima", act_absmax.size(), weight_absmax.size());
  DQ_CHECK(alpha >= 0.0 && alpha <= 1.0, usage, "smoothing scales: alpha {} is outside [0, 1]", alpha);
  std::vector<float> s(act_absmax.size());
  for (std::size_t j = 0; j < s.size(); ++j) {
    const double a = act_absmax[j];
    const double w = weight_absmax[j];
    DQ_CHECK(std::isfinite(a) && a >= 0.0, numeric,
             "smoothing scales: activation max of channel {} is {} (must be finite and >= 0)", j, a);
    DQ_CHECK(std::isfinite(w) && w >= 0.0, numeric,
             "smoothing scales: weight max of channel {} is {} (must be finite and >= 0)", j, w);
    const double v = std::pow(a, alpha) / std::pow(std::max(w, 1e-5), 1.0 - alpha);
    s[j] = static_cast<float>(std::max(v, 1e-5));
    DQ_CHECK(std::isfinite(s[j]), numeric,
             "smoothing scales: channel {} (activation max {}, weight max {}, alpha {}) gives scale {}, not a float32",
             j, a, w, alpha, v);
  }
  return s;
}

std::vector<float> smoothed_weight(std::span<const float> w, std::int64_t rows, std::int64_t cols,
                                   std::span<const float> s, formats::DType dtype) {
  DQ_CHECK(rows >= 0 && cols >= 0 && static_cast<std::uint64_t>(rows) * static_cast<std::uint64_t>(cols) == w.size(),
           internal, "smoothed weight: {} values for a [{}, {}] weight", w.size(), rows, cols);
  DQ_CHECK(static_cast<std::int64_t>(s.size()) == cols, internal, "smoothed weight: {} scales for {} columns", s.size(),
           cols);
  using formats::DType;
  DQ_CHECK(dtype == DType::F32 || dtype == DType::F16 || dtype == DType::BF16, internal,
           "smoothed weight: cannot round to {} (F32, F16 or BF16 only)", formats::dtype_name(dtype));
  std::vector<float> out(w.size());
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::size_t row = static_cast<std::size_t>(r) * static_cast<std::size_t>(cols);
    for (std::int64_t j = 0; j < cols; ++j) {
      const auto k = row + static_cast<std::size_t>(j);
      const float p = w[k] * s[static_cast<std::size_t>(j)];
      switch (dtype) {
        case DType::BF16: out[k] = elementwise::bf16_to_f32(elementwise::f32_to_bf16(p)); break;
        case DType::F16: out[k] = elementwise::f16_to_f32(elementwise::f32_to_f16(p)); break;
        default: out[k] = p; break;
      }
    }
  }
  return out;
}

}  // namespace duquant

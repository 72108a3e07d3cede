#include "synth/synth.hpp"

#include <fmt/format.h>
#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <system_error>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"
#include "formats/atomic_file.hpp"
#include "formats/strict_json.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using formats::DType;
using formats::TensorSpec;
using Shape = std::vector<std::uint64_t>;

constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr int kMaxLayers = 1000;
constexpr int kMaxShards = 99;

std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Standard normal from one 64-bit hash (Box-Muller on its two 32-bit halves).
float gaussian(std::uint64_t h) {
  const double u1 = (static_cast<double>(h >> 32) + 1.0) / 4294967297.0;  // (0, 1]
  const double u2 = static_cast<double>(h & 0xffffffffu) / 4294967296.0;
  return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2));
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::uint64_t tensor_key(const SynthOptions& o, std::uint64_t tensor) {
  return splitmix64(splitmix64(o.seed) ^ (tensor * 0x632be59bd9b4e019ull));
}

// ---------------------------------------------------------------------------------------------
// Options

// The widths `--factor` divides (so every one must be a multiple of 16).
constexpr std::uint64_t kPi05Widths[] = {2048, 16384, 256, 1024, 4096, 3072, 1152, 4304};
constexpr std::uint64_t kGr00tWidths[] = {151680, 2048, 1024, 128, 6144, 1152, 4304, 4608, 1536, 3072, 256, 8192};

bool factor_divides_widths(const SynthOptions& o) {
  if (o.factor != 1 && o.factor != 2 && o.factor != 4 && o.factor != 8 && o.factor != 16) return false;
  const auto f = static_cast<std::uint64_t>(o.factor);
  auto divides = [f](std::uint64_t w) { return w % f == 0; };
  return o.model == SynthModel::pi05 ? std::all_of(std::begin(kPi05Widths), std::end(kPi05Widths), divides)
                                     : std::all_of(std::begin(kGr00tWidths), std::end(kGr00tWidths), divides);
}

// A layer count: the model's default when left unset, otherwise 0 to kMaxLayers.
int layer_count(int value, int model_default, const char* option) {
  if (value == SynthOptions::kModelDefault) return model_default;
  DQ_CHECK(value >= 0 && value <= kMaxLayers, usage, "synth {}: {} is not a layer count from 0 to {}", option, value,
           kMaxLayers);
  return value;
}

// An option that only one model has must stay unset for the other.
void only_for(SynthModel model, const SynthOptions& o, int value, const char* option) {
  DQ_CHECK(o.model == model || value == SynthOptions::kModelDefault, usage,
           "synth {}: applies to --model {} only (this is --model {})", option, synth_model_name(model),
           synth_model_name(o.model));
}

void check_prefix(const std::string& p) {
  DQ_CHECK(!p.empty(), usage, "synth --prefix: must not be empty (leave the option out for no prefix)");
  for (char ch : p) {
    const auto c = static_cast<unsigned char>(ch);
    DQ_CHECK(c > 0x20 && c < 0x7f, usage,
             "synth --prefix: '{}' holds byte 0x{:02x}; a prefix is printable ASCII without spaces", p, c);
  }
  DQ_CHECK(p.back() == '.', usage, "synth --prefix: '{}' must end in '.' (as in 'model.' or '_groot_model.')", p);
  DQ_CHECK(p.front() != '.' && p.find("..") == std::string::npos, usage,
           "synth --prefix: '{}' has an empty name part (a leading '.' or '..')", p);
}

// ---------------------------------------------------------------------------------------------
// Tensor lists

// Collects tensor specs in order, every name under one prefix.
class TensorList {
 public:
  TensorList(DType dtype, std::string prefix) : dtype_(dtype), prefix_(std::move(prefix)) {}

  void tensor(const std::string& name, Shape shape) { specs_.push_back({prefix_ + name, dtype_, std::move(shape)}); }
  void vec(const std::string& name, std::uint64_t n) { tensor(name, {n}); }
  // An nn.Linear: `.weight` [out, in] and, with bias, `.bias` [out].
  void linear(const std::string& name, std::uint64_t out, std::uint64_t in, bool bias) {
    tensor(name + ".weight", {out, in});
    if (bias) vec(name + ".bias", out);
  }
  // An nn.LayerNorm with affine parameters: `.weight` and `.bias` [n].
  void layer_norm(const std::string& name, std::uint64_t n) {
    vec(name + ".weight", n);
    vec(name + ".bias", n);
  }
  // GR00T's CategorySpecificLinear (not an nn.Linear): `.W` [embodiments, in, out], `.b` [embodiments, out].
  void category_linear(const std::string& name, std::uint64_t categories, std::uint64_t in, std::uint64_t out) {
    tensor(name + ".W", {categories, in, out});
    tensor(name + ".b", {categories, out});
  }

  std::vector<TensorSpec> take() { return std::move(specs_); }

 private:
  DType dtype_;
  std::string prefix_;
  std::vector<TensorSpec> specs_;
};

void pi05_tensors(const SynthOptions& o, TensorList& t) {
  const std::uint64_t f = static_cast<std::uint64_t>(o.factor);
  const std::uint64_t width = 2048 / f, mlp = 16384 / f, kv = 256 / f;
  const std::string llm = "paligemma_with_expert.paligemma.model.language_model.";
  for (int i = 0; i < o.llm_layers; ++i) {
    const std::string p = llm + fmt::format("layers.{}.", i);
    t.linear(p + "self_attn.q_proj", width, width, false);
    t.linear(p + "self_attn.k_proj", kv, width, false);
    t.linear(p + "self_attn.v_proj", kv, width, false);
    t.linear(p + "self_attn.o_proj", width, width, false);
    t.linear(p + "mlp.gate_proj", mlp, width, false);
    t.linear(p + "mlp.up_proj", mlp, width, false);
    t.linear(p + "mlp.down_proj", width, mlp, false);
    t.vec(p + "input_layernorm.weight", width);
    t.vec(p + "post_attention_layernorm.weight", width);
  }
  t.vec(llm + "norm.weight", width);

  const std::uint64_t ex = 1024 / f, ex_mlp = 4096 / f, ex_q = 2048 / f, ex_mod = 3072 / f;
  const std::string expert = "paligemma_with_expert.gemma_expert.model.";
  for (int i = 0; i < o.expert_layers; ++i) {
    const std::string p = expert + fmt::format("layers.{}.", i);
    t.linear(p + "self_attn.q_proj", ex_q, ex, false);
    t.linear(p + "self_attn.k_proj", kv, ex, false);
    t.linear(p + "self_attn.v_proj", kv, ex, false);
    t.linear(p + "self_attn.o_proj", ex, ex_q, false);
    t.linear(p + "mlp.gate_proj", ex_mlp, ex, false);
    t.linear(p + "mlp.up_proj", ex_mlp, ex, false);
    t.linear(p + "mlp.down_proj", ex, ex_mlp, false);
    t.linear(p + "input_layernorm.dense", ex_mod, ex, true);
    t.linear(p + "post_attention_layernorm.dense", ex_mod, ex, true);
  }
  t.vec(expert + "norm.weight", ex);

  const std::uint64_t vw = 1152 / f, v_mlp = 4304 / f;
  const std::string vision = "paligemma_with_expert.paligemma.model.vision_tower.vision_model.";
  t.tensor(vision + "embeddings.patch_embedding.weight", {vw, 3, 14, 14});
  t.vec(vision + "embeddings.patch_embedding.bias", vw);
  for (int i = 0; i < o.vision_layers; ++i) {
    const std::string p = vision + fmt::format("encoder.layers.{}.", i);
    t.linear(p + "self_attn.q_proj", vw, vw, true);
    t.linear(p + "self_attn.k_proj", vw, vw, true);
    t.linear(p + "self_attn.v_proj", vw, vw, true);
    t.linear(p + "self_attn.out_proj", vw, vw, true);
    t.linear(p + "mlp.fc1", v_mlp, vw, true);
    t.linear(p + "mlp.fc2", vw, v_mlp, true);
    t.vec(p + "layer_norm1.weight", vw);
    t.vec(p + "layer_norm2.weight", vw);
  }
  t.linear("paligemma_with_expert.paligemma.model.multi_modal_projector.linear", width, vw, true);
  t.linear("action_in_proj", ex, 32, true);
  t.linear("action_out_proj", 32, ex, true);
  t.linear("time_mlp_in", ex, ex, true);
  t.linear("time_mlp_out", ex, ex, true);
}

// GR00T N1.5's widths at a factor.
struct Gr00tWidths {
  explicit Gr00tWidths(std::uint64_t f)
      : vocab(151680 / f),
        llm(2048 / f),
        llm_kv(1024 / f),
        head(128 / f),
        llm_mlp(6144 / f),
        vit(1152 / f),
        vit_mlp(4304 / f),
        shuffled(4608 / f),
        dit(1536 / f),
        dit_ff(6144 / f),
        time_in(256 / f),
        hidden(1024 / f),
        vl_ff(8192 / f) {}
  std::uint64_t vocab, llm, llm_kv, head, llm_mlp;  // Qwen3-style language model (12 of its layers)
  std::uint64_t vit, vit_mlp, shuffled;             // SigLIP vision tower; 4x pixel-shuffled connector input
  std::uint64_t dit, dit_ff, time_in, hidden;       // DiT inner width, its FF, timestep channels, head hidden size
  std::uint64_t vl_ff;                              // FF of the VL self-attention blocks (width = llm)
  static constexpr std::uint64_t embodiments = 32, state = 64, action = 32, positions = 1024, future = 32;
};

void gr00t_vision(const SynthOptions& o, const Gr00tWidths& w, TensorList& t) {
  const std::string v = "backbone.eagle_model.vision_model.vision_model.";
  t.tensor(v + "embeddings.patch_embedding.weight", {w.vit, 3, 14, 14});
  t.vec(v + "embeddings.patch_embedding.bias", w.vit);
  t.tensor(v + "embeddings.position_embedding.weight", {Gr00tWidths::positions, w.vit});
  for (int i = 0; i < o.vision_layers; ++i) {
    const std::string p = v + fmt::format("encoder.layers.{}.", i);
    t.linear(p + "self_attn.q_proj", w.vit, w.vit, true);
    t.linear(p + "self_attn.k_proj", w.vit, w.vit, true);
    t.linear(p + "self_attn.v_proj", w.vit, w.vit, true);
    t.linear(p + "self_attn.out_proj", w.vit, w.vit, true);
    t.layer_norm(p + "layer_norm1", w.vit);
    t.linear(p + "mlp.fc1", w.vit_mlp, w.vit, true);
    t.linear(p + "mlp.fc2", w.vit, w.vit_mlp, true);
    t.layer_norm(p + "layer_norm2", w.vit);
  }
  t.layer_norm(v + "post_layernorm", w.vit);
}

void gr00t_language_model(const SynthOptions& o, const Gr00tWidths& w, TensorList& t) {
  const std::string lm = "backbone.eagle_model.language_model.";
  t.tensor(lm + "model.embed_tokens.weight", {w.vocab, w.llm});
  for (int i = 0; i < o.llm_layers; ++i) {
    const std::string p = lm + fmt::format("model.layers.{}.", i);
    t.linear(p + "self_attn.q_proj", w.llm, w.llm, false);
    t.linear(p + "self_attn.k_proj", w.llm_kv, w.llm, false);
    t.linear(p + "self_attn.v_proj", w.llm_kv, w.llm, false);
    t.linear(p + "self_attn.o_proj", w.llm, w.llm, false);
    t.vec(p + "self_attn.q_norm.weight", w.head);
    t.vec(p + "self_attn.k_norm.weight", w.head);
    t.linear(p + "mlp.gate_proj", w.llm_mlp, w.llm, false);
    t.linear(p + "mlp.up_proj", w.llm_mlp, w.llm, false);
    t.linear(p + "mlp.down_proj", w.llm, w.llm_mlp, false);
    t.vec(p + "input_layernorm.weight", w.llm);
    t.vec(p + "post_attention_layernorm.weight", w.llm);
  }
  t.vec(lm + "model.norm.weight", w.llm);
  t.linear(lm + "lm_head", w.vocab, w.llm, false);
}

// The vision-to-language connector: LayerNorm, Linear, GELU, Linear.
void gr00t_connector(const Gr00tWidths& w, TensorList& t) {
  t.layer_norm("backbone.eagle_model.mlp1.0", w.shuffled);
  t.linear("backbone.eagle_model.mlp1.1", w.llm, w.shuffled, true);
  t.linear("backbone.eagle_model.mlp1.3", w.llm, w.llm, true);
}

// The flow-matching DiT: even blocks cross-attend to the VL tokens (to_k/to_v take their width).
void gr00t_dit(const SynthOptions& o, const Gr00tWidths& w, TensorList& t) {
  const std::string m = "action_head.model.";
  t.linear(m + "timestep_encoder.timestep_embedder.linear_1", w.dit, w.time_in, true);
  t.linear(m + "timestep_encoder.timestep_embedder.linear_2", w.dit, w.dit, true);
  for (int i = 0; i < o.dit_layers; ++i) {
    const std::string p = m + fmt::format("transformer_blocks.{}.", i);
    const std::uint64_t kv_in = i % 2 == 0 ? w.llm : w.dit;
    t.linear(p + "norm1.linear", 2 * w.dit, w.dit, true);  // adaptive LayerNorm: scale and shift
    t.linear(p + "attn1.to_q", w.dit, w.dit, true);
    t.linear(p + "attn1.to_k", w.dit, kv_in, true);
    t.linear(p + "attn1.to_v", w.dit, kv_in, true);
    t.linear(p + "attn1.to_out.0", w.dit, w.dit, true);
    t.linear(p + "ff.net.0.proj", w.dit_ff, w.dit, true);
    t.linear(p + "ff.net.2", w.dit, w.dit_ff, true);
  }
  t.linear(m + "proj_out_1", 2 * w.dit, w.dit, true);
  t.linear(m + "proj_out_2", w.hidden, w.dit, true);
}

// The rest of the action head, in module order: category-specific state encoder, action encoder
// and action decoder (3-D `.W`, never nn.Linear), the future tokens, the VL self-attention blocks
// (plain LayerNorms norm1/norm3, 2048 wide) and the position embedding.
void gr00t_action_head_rest(const SynthOptions& o, const Gr00tWidths& w, TensorList& t) {
  const std::uint64_t e = Gr00tWidths::embodiments;
  t.category_linear("action_head.state_encoder.layer1", e, Gr00tWidths::state, w.hidden);
  t.category_linear("action_head.state_encoder.layer2", e, w.hidden, w.dit);
  t.category_linear("action_head.action_encoder.W1", e, Gr00tWidths::action, w.dit);
  t.category_linear("action_head.action_encoder.W2", e, 2 * w.dit, w.dit);
  t.category_linear("action_head.action_encoder.W3", e, w.dit, w.dit);
  t.category_linear("action_head.action_decoder.layer1", e, w.hidden, w.hidden);
  t.category_linear("action_head.action_decoder.layer2", e, w.hidden, Gr00tWidths::action);
  t.tensor("action_head.future_tokens.weight", {Gr00tWidths::future, w.dit});
  for (int i = 0; i < o.vl_layers; ++i) {
    const std::string p = fmt::format("action_head.vl_self_attention.transformer_blocks.{}.", i);
    t.layer_norm(p + "norm1", w.llm);
    t.linear(p + "attn1.to_q", w.llm, w.llm, true);
    t.linear(p + "attn1.to_k", w.llm, w.llm, true);
    t.linear(p + "attn1.to_v", w.llm, w.llm, true);
    t.linear(p + "attn1.to_out.0", w.llm, w.llm, true);
    t.layer_norm(p + "norm3", w.llm);
    t.linear(p + "ff.net.0.proj", w.vl_ff, w.llm, true);
    t.linear(p + "ff.net.2", w.llm, w.vl_ff, true);
  }
  t.tensor("action_head.position_embedding.weight", {Gr00tWidths::positions, w.dit});
}

// Module order of GR00T N1.5: backbone (vision tower, language model, connector), action head.
void gr00t_tensors(const SynthOptions& o, TensorList& t) {
  const Gr00tWidths w(static_cast<std::uint64_t>(o.factor));
  gr00t_vision(o, w, t);
  gr00t_language_model(o, w, t);
  gr00t_connector(w, t);
  gr00t_dit(o, w, t);
  gr00t_action_head_rest(o, w, t);
}

// ---------------------------------------------------------------------------------------------
// Writing

std::byte* store(DType dtype, float v, std::byte* dst) {
  if (dtype == DType::F32) {
    std::memcpy(dst, &v, 4);
    return dst + 4;
  }
  const std::uint16_t h =
      dtype == DType::BF16 ? elementwise::f32_to_bf16(v) : Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(v));
  std::memcpy(dst, &h, 2);
  return dst + 2;
}

// Writes tensors [begin, end) of `specs` (global indices: the values do not depend on the file)
// to one safetensors file. Returns the file size.
std::uint64_t write_file(const fs::path& path, const SynthOptions& o, const std::vector<TensorSpec>& specs,
                         std::size_t begin, std::size_t end, const std::map<std::string, std::string>& metadata) {
  const std::vector<TensorSpec> part(specs.begin() + static_cast<std::ptrdiff_t>(begin),
                                     specs.begin() + static_cast<std::ptrdiff_t>(end));
  formats::SafetensorsWriter writer(path, part, metadata);
  const std::size_t elem = formats::dtype_bits(o.dtype) / 8;
  constexpr std::int64_t kChunk = 1 << 22;  // elements per write
  std::vector<std::byte> buffer(static_cast<std::size_t>(kChunk) * elem);
  for (std::size_t ti = begin; ti < end; ++ti) {
    const TensorSpec& spec = specs[ti];
    const std::uint64_t numel = spec.nbytes() / elem;
    for (std::uint64_t start = 0; start < numel; start += kChunk) {
      const std::int64_t n = static_cast<std::int64_t>(std::min<std::uint64_t>(kChunk, numel - start));
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i)
        store(o.dtype, synth_value(o, spec, ti, start + static_cast<std::uint64_t>(i)),
              buffer.data() + static_cast<std::size_t>(i) * elem);
      writer.write(std::span(buffer.data(), static_cast<std::size_t>(n) * elem));
    }
  }
  writer.commit();
  return writer.data_bytes() + formats::safetensors_header_bytes(part, metadata).size();
}

// model-NNNNN-of-NNNNN.safetensors
bool is_shard_name(const std::string& name) {
  if (name.size() != std::string_view("model-00001-of-00001.safetensors").size()) return false;
  if (name.rfind("model-", 0) != 0 || name.compare(11, 4, "-of-") != 0 || !ends_with(name, ".safetensors"))
    return false;
  auto digits = [&](std::size_t at) {
    return std::all_of(name.begin() + static_cast<std::ptrdiff_t>(at),
                       name.begin() + static_cast<std::ptrdiff_t>(at + 5), [](char c) { return c >= '0' && c <= '9'; });
  };
  return digits(6) && digits(15);
}

void remove_file(const fs::path& path) {
  std::error_code ec;
  fs::remove(path, ec);
  DQ_CHECK(!ec, io, "{}: cannot remove: {}", path.string(), ec.message());
}

// Removes shard files of an earlier checkpoint that the new one does not have.
void remove_stale_shards(const fs::path& folder, const std::set<std::string>& keep) {
  std::error_code ec;
  std::vector<fs::path> stale;
  for (const auto& entry : fs::directory_iterator(folder, ec)) {
    const std::string name = entry.path().filename().string();
    std::error_code type_ec;  // only regular files synth wrote: never a user's folder or link of that name
    if (is_shard_name(name) && keep.count(name) == 0 && entry.symlink_status(type_ec).type() == fs::file_type::regular)
      stale.push_back(entry.path());
  }
  DQ_CHECK(!ec, io, "{}: cannot list folder: {}", folder.string(), ec.message());
  for (const auto& path : stale) remove_file(path);
}

std::uint64_t write_folder(const fs::path& folder, const SynthOptions& o, const std::vector<TensorSpec>& specs,
                           const std::map<std::string, std::string>& metadata) {
  const std::vector<std::size_t> starts = synth_shard_starts(specs, o.shards);
  std::error_code ec;
  fs::create_directories(folder, ec);
  DQ_CHECK(!ec, io, "{}: cannot create folder: {}", folder.string(), ec.message());
  DQ_CHECK(fs::is_directory(folder, ec), io, "{}: is not a folder", folder.string());
  // An earlier checkpoint's index goes first: until the new index appears, the folder is no checkpoint.
  // Only a regular file is removed: anything else under that name is refused when it is replaced.
  if (fs::symlink_status(folder / kIndexName, ec).type() == fs::file_type::regular) remove_file(folder / kIndexName);

  nlohmann::json weight_map = nlohmann::json::object();
  std::set<std::string> shard_names;
  std::uint64_t bytes = 0, data_bytes = 0;
  for (int k = 0; k < o.shards; ++k) {
    const std::size_t begin = starts[static_cast<std::size_t>(k)];
    const std::size_t end = k + 1 < o.shards ? starts[static_cast<std::size_t>(k) + 1] : specs.size();
    const std::string name = synth_shard_name(k + 1, o.shards);
    bytes += write_file(folder / name, o, specs, begin, end, metadata);
    for (std::size_t i = begin; i < end; ++i) {
      weight_map[specs[i].name] = name;
      data_bytes += specs[i].nbytes();
    }
    shard_names.insert(name);
  }
  nlohmann::json index;
  index["metadata"]["total_size"] = data_bytes;
  index["weight_map"] = std::move(weight_map);
  const std::string text = formats::dump_json(index, 2) + "\n";
  formats::AtomicFile file(folder / kIndexName);
  file.write(text);
  file.commit();
  remove_stale_shards(folder, shard_names);
  return bytes + text.size();
}

}  // namespace

const char* synth_model_name(SynthModel model) noexcept { return model == SynthModel::pi05 ? "pi05" : "gr00t-n1.5"; }

std::optional<SynthModel> parse_synth_model(std::string_view name) noexcept {
  if (name == "pi05") return SynthModel::pi05;
  if (name == "gr00t-n1.5") return SynthModel::gr00t_n15;
  return std::nullopt;
}

SynthOptions resolve_synth_options(const SynthOptions& options) {
  SynthOptions o = options;
  const bool pi05 = o.model == SynthModel::pi05;
  DQ_CHECK(pi05 || o.model == SynthModel::gr00t_n15, usage, "synth --model: unknown model {}",
           static_cast<int>(o.model));
  DQ_CHECK(factor_divides_widths(o), usage, "synth --factor: {} does not divide every {} width (use 1, 2, 4, 8 or 16)",
           o.factor, pi05 ? "pi0.5" : "GR00T N1.5");
  only_for(SynthModel::pi05, o, o.expert_layers, "--expert-layers");
  only_for(SynthModel::gr00t_n15, o, o.dit_layers, "--dit-layers");
  only_for(SynthModel::gr00t_n15, o, o.vl_layers, "--vl-layers");
  o.llm_layers = layer_count(o.llm_layers, pi05 ? 18 : 12, "--llm-layers");
  o.vision_layers = layer_count(o.vision_layers, 27, "--vision-layers");
  if (pi05) {
    o.expert_layers = layer_count(o.expert_layers, 18, "--expert-layers");
  } else {
    o.dit_layers = layer_count(o.dit_layers, 16, "--dit-layers");
    o.vl_layers = layer_count(o.vl_layers, 4, "--vl-layers");
  }
  DQ_CHECK(formats::converts_to_f32(o.dtype), usage, "synth --dtype: {} is not BF16, F16 or F32",
           formats::dtype_name(o.dtype));
  DQ_CHECK(o.outlier_channels >= 0 && o.outlier_channels <= 64, usage,
           "synth --outliers: {} is not a count from 0 to 64", o.outlier_channels);
  if (!o.prefix.empty()) check_prefix(o.prefix);
  if (o.shards == SynthOptions::kModelDefault) o.shards = pi05 ? 1 : 2;
  DQ_CHECK(o.shards >= 1 && o.shards <= kMaxShards, usage, "synth --shards: {} is not a count from 1 to {}", o.shards,
           kMaxShards);
  return o;
}

std::vector<TensorSpec> synth_tensors(const SynthOptions& options) {
  const SynthOptions o = resolve_synth_options(options);
  TensorList list(o.dtype, o.prefix);
  if (o.model == SynthModel::pi05)
    pi05_tensors(o, list);
  else
    gr00t_tensors(o, list);
  return list.take();
}

float synth_value(const SynthOptions& o, const TensorSpec& spec, std::uint64_t tensor, std::uint64_t index) {
  const std::uint64_t key = tensor_key(o, tensor);
  const float g = gaussian(splitmix64(key ^ splitmix64(index)));
  if (ends_with(spec.name, ".bias") || ends_with(spec.name, ".b")) return 0.02f * g;  // `.b`: GR00T's [E, out]
  if (spec.shape.size() == 1) return 0.1f * g;
  // Fan-in: columns of a 2-D weight, in x kh x kw of a convolution, `in` of GR00T's [E, in, out].
  std::uint64_t fan_in = 1;
  if (spec.shape.size() == 3) {
    fan_in = spec.shape[1];
  } else {
    for (std::size_t d = 1; d < spec.shape.size(); ++d) fan_in *= spec.shape[d];
  }
  float v = g / std::sqrt(static_cast<float>(fan_in));
  if (spec.shape.size() == 2) {
    const std::uint64_t column = index % spec.shape[1];
    for (int k = 0; k < o.outlier_channels; ++k)
      if (splitmix64(key + 1 + static_cast<std::uint64_t>(k)) % spec.shape[1] == column) {
        v *= o.outlier_gain;
        break;
      }
  }
  return v;
}

bool synth_writes_folder(const SynthOptions& options) {
  const SynthOptions o = resolve_synth_options(options);
  return o.model != SynthModel::pi05 || o.shards > 1;
}

std::string synth_shard_name(int k, int n) { return fmt::format("model-{:05d}-of-{:05d}.safetensors", k, n); }

std::vector<std::size_t> synth_shard_starts(const std::vector<TensorSpec>& tensors, int shards) {
  const std::size_t n = tensors.size();
  DQ_CHECK(shards >= 1 && static_cast<std::size_t>(shards) <= n, usage,
           "synth --shards: {} shards for {} tensors (every shard needs at least one tensor)", shards, n);
  std::vector<std::uint64_t> middle(n);  // byte offset of the middle of tensor i in all the data
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < n; ++i) {
    middle[i] = total + tensors[i].nbytes() / 2;
    total += tensors[i].nbytes();
  }
  const auto s = static_cast<std::size_t>(shards);
  std::vector<std::size_t> starts(s, 0);
  // Shard k starts at the first tensor whose middle lies at or after k/shards of the data ...
  for (std::size_t k = 1; k < s; ++k) {
    const std::uint64_t target = total / s * k + total % s * k / s;  // floor(total * k / s) without overflow
    starts[k] = static_cast<std::size_t>(std::lower_bound(middle.begin(), middle.end(), target) - middle.begin());
    starts[k] = std::max(starts[k], starts[k - 1] + 1);  // ... and holds at least one tensor,
  }
  for (std::size_t k = s - 1; k >= 1; --k) starts[k] = std::min(starts[k], n - (s - k));  // so does every later one.
  return starts;
}

std::string synth_metadata(const SynthOptions& options) {
  const SynthOptions o = resolve_synth_options(options);
  const std::string_view dtype = formats::dtype_name(o.dtype);
  if (o.model == SynthModel::pi05) {
    std::string text = fmt::format("factor={} llm_layers={} expert_layers={} vision_layers={} seed={} dtype={}",
                                   o.factor, o.llm_layers, o.expert_layers, o.vision_layers, o.seed, dtype);
    if (o.outlier_channels == 4 && o.prefix.empty() && o.shards == 1) return text;  // the original record
    return text + fmt::format(" model=pi05 outliers={} prefix={} shards={}", o.outlier_channels, o.prefix, o.shards);
  }
  return fmt::format(
      "model={} factor={} llm_layers={} vision_layers={} dit_layers={} vl_layers={} seed={} dtype={} outliers={} "
      "prefix={} shards={}",
      synth_model_name(o.model), o.factor, o.llm_layers, o.vision_layers, o.dit_layers, o.vl_layers, o.seed, dtype,
      o.outlier_channels, o.prefix, o.shards);
}

std::uint64_t write_synth_checkpoint(const fs::path& path, const SynthOptions& options) {
  const SynthOptions o = resolve_synth_options(options);
  const std::vector<TensorSpec> specs = synth_tensors(o);
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"duquant.synth", synth_metadata(o)}};
  if (synth_writes_folder(o)) return write_folder(path, o, specs, metadata);
  return write_file(path, o, specs, 0, specs.size(), metadata);
}

}  // namespace duquant

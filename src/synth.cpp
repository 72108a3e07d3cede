#include "duquant/synth.hpp"

#include <Eigen/Core>
#include <fmt/format.h>

#include <cmath>
#include <cstring>
#include <string>

#include "duquant/elementwise.hpp"
#include "duquant/error.hpp"

namespace duquant {
namespace {

using formats::DType;
using formats::TensorSpec;

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

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::uint64_t tensor_key(const SynthOptions& o, std::uint64_t tensor) {
  return splitmix64(splitmix64(o.seed) ^ (tensor * 0x632be59bd9b4e019ull));
}

}  // namespace

std::vector<TensorSpec> synth_tensors(const SynthOptions& o) {
  DQ_CHECK(o.factor == 1 || o.factor == 2 || o.factor == 4 || o.factor == 8 || o.factor == 16, usage,
           "synth --factor: {} does not divide every pi0.5 width (use 1, 2, 4, 8 or 16)", o.factor);
  DQ_CHECK(o.llm_layers >= 0 && o.llm_layers <= 1000 && o.expert_layers >= 0 && o.expert_layers <= 1000 &&
               o.vision_layers >= 0 && o.vision_layers <= 1000,
           usage, "synth: layer counts must be 0 to 1000 (got {}, {}, {})", o.llm_layers, o.expert_layers,
           o.vision_layers);
  DQ_CHECK(formats::converts_to_f32(o.dtype), usage, "synth --dtype: {} is not BF16, F16 or F32",
           formats::dtype_name(o.dtype));
  DQ_CHECK(o.outlier_channels >= 0 && o.outlier_channels <= 64, usage, "synth: outlier channels must be 0 to 64");
  const std::uint64_t f = static_cast<std::uint64_t>(o.factor);
  const DType dt = o.dtype;
  std::vector<TensorSpec> t;
  auto linear = [&](const std::string& name, std::uint64_t out, std::uint64_t in, bool bias) {
    t.push_back({name + ".weight", dt, {out, in}});
    if (bias) t.push_back({name + ".bias", dt, {out}});
  };
  auto vec = [&](const std::string& name, std::uint64_t n) { t.push_back({name, dt, {n}}); };

  const std::uint64_t width = 2048 / f, mlp = 16384 / f, kv = 256 / f;
  const std::string llm = "paligemma_with_expert.paligemma.model.language_model.";
  for (int i = 0; i < o.llm_layers; ++i) {
    const std::string p = llm + fmt::format("layers.{}.", i);
    linear(p + "self_attn.q_proj", width, width, false);
    linear(p + "self_attn.k_proj", kv, width, false);
    linear(p + "self_attn.v_proj", kv, width, false);
    linear(p + "self_attn.o_proj", width, width, false);
    linear(p + "mlp.gate_proj", mlp, width, false);
    linear(p + "mlp.up_proj", mlp, width, false);
    linear(p + "mlp.down_proj", width, mlp, false);
    vec(p + "input_layernorm.weight", width);
    vec(p + "post_attention_layernorm.weight", width);
  }
  vec(llm + "norm.weight", width);

  const std::uint64_t ex = 1024 / f, ex_mlp = 4096 / f, ex_q = 2048 / f, ex_mod = 3072 / f;
  const std::string expert = "paligemma_with_expert.gemma_expert.model.";
  for (int i = 0; i < o.expert_layers; ++i) {
    const std::string p = expert + fmt::format("layers.{}.", i);
    linear(p + "self_attn.q_proj", ex_q, ex, false);
    linear(p + "self_attn.k_proj", kv, ex, false);
    linear(p + "self_attn.v_proj", kv, ex, false);
    linear(p + "self_attn.o_proj", ex, ex_q, false);
    linear(p + "mlp.gate_proj", ex_mlp, ex, false);
    linear(p + "mlp.up_proj", ex_mlp, ex, false);
    linear(p + "mlp.down_proj", ex, ex_mlp, false);
    linear(p + "input_layernorm.dense", ex_mod, ex, true);
    linear(p + "post_attention_layernorm.dense", ex_mod, ex, true);
  }
  vec(expert + "norm.weight", ex);

  const std::uint64_t vw = 1152 / f, v_mlp = 4304 / f;
  const std::string vision = "paligemma_with_expert.paligemma.model.vision_tower.vision_model.";
  t.push_back({vision + "embeddings.patch_embedding.weight", dt, {vw, 3, 14, 14}});
  vec(vision + "embeddings.patch_embedding.bias", vw);
  for (int i = 0; i < o.vision_layers; ++i) {
    const std::string p = vision + fmt::format("encoder.layers.{}.", i);
    linear(p + "self_attn.q_proj", vw, vw, true);
    linear(p + "self_attn.k_proj", vw, vw, true);
    linear(p + "self_attn.v_proj", vw, vw, true);
    linear(p + "self_attn.out_proj", vw, vw, true);
    linear(p + "mlp.fc1", v_mlp, vw, true);
    linear(p + "mlp.fc2", vw, v_mlp, true);
    vec(p + "layer_norm1.weight", vw);
    vec(p + "layer_norm2.weight", vw);
  }
  linear("paligemma_with_expert.paligemma.model.multi_modal_projector.linear", width, vw, true);
  linear("action_in_proj", ex, 32, true);
  linear("action_out_proj", 32, ex, true);
  linear("time_mlp_in", ex, ex, true);
  linear("time_mlp_out", ex, ex, true);
  return t;
}

float synth_value(const SynthOptions& o, const TensorSpec& spec, std::uint64_t tensor, std::uint64_t index) {
  const std::uint64_t key = tensor_key(o, tensor);
  const float g = gaussian(splitmix64(key ^ splitmix64(index)));
  if (spec.shape.size() == 1) return ends_with(spec.name, ".bias") ? 0.02f * g : 0.1f * g;
  std::uint64_t fan_in = 1;
  for (std::size_t d = 1; d < spec.shape.size(); ++d) fan_in *= spec.shape[d];
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

std::uint64_t write_synth_checkpoint(const std::filesystem::path& path, const SynthOptions& o) {
  const std::vector<TensorSpec> specs = synth_tensors(o);
  const std::map<std::string, std::string> metadata{
      {"format", "pt"},
      {"duquant.synth", fmt::format("factor={} llm_layers={} expert_layers={} vision_layers={} seed={} dtype={}",
                                    o.factor, o.llm_layers, o.expert_layers, o.vision_layers, o.seed,
                                    formats::dtype_name(o.dtype))}};
  formats::SafetensorsWriter writer(path, specs, metadata);
  const std::size_t elem = formats::dtype_bits(o.dtype) / 8;
  constexpr std::int64_t kChunk = 1 << 22;  // elements per write
  std::vector<std::byte> buffer(static_cast<std::size_t>(kChunk) * elem);
  for (std::uint64_t ti = 0; ti < specs.size(); ++ti) {
    const TensorSpec& spec = specs[ti];
    const std::uint64_t numel = spec.nbytes() / elem;
    for (std::uint64_t start = 0; start < numel; start += kChunk) {
      const std::int64_t n = static_cast<std::int64_t>(std::min<std::uint64_t>(kChunk, numel - start));
#pragma omp parallel for schedule(static)
      for (std::int64_t i = 0; i < n; ++i) {
        const float v = synth_value(o, spec, ti, start + static_cast<std::uint64_t>(i));
        std::byte* dst = buffer.data() + static_cast<std::size_t>(i) * elem;
        if (o.dtype == DType::F32) {
          std::memcpy(dst, &v, 4);
        } else {
          const std::uint16_t h = o.dtype == DType::BF16 ? elementwise::f32_to_bf16(v)
                                                         : Eigen::numext::bit_cast<std::uint16_t>(Eigen::half(v));
          std::memcpy(dst, &h, 2);
        }
      }
      writer.write(std::span(buffer.data(), static_cast<std::size_t>(n) * elem));
    }
  }
  writer.commit();
  return writer.data_bytes() + formats::safetensors_header_bytes(specs, metadata).size();
}

}  // namespace duquant

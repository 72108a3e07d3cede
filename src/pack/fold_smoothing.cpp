// --fold-smoothing: a copy of the checkpoint with 1/s folded into the norms and s into the weights.
//
// Output order: the input's tensor order (Checkpoint::tensors(): shards by file name, then data
// offset), so a single-file checkpoint keeps its layout and only the modified tensors' bytes change.
// The metadata is the input's; for a sharded checkpoint, the union of the shards' metadata (the
// first shard, by file name, wins a key that differs).
//
// Memory: untouched tensors are copied from the mapping and their pages released; modified
// tensors are converted in chunks of whole rows, so the working set stays well under a MB beyond the
// mapping of the tensor being copied.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "base/elementwise.hpp"
#include "duquant/error.hpp"
#include "formats/digest.hpp"
#include "formats/output_paths.hpp"
#include "formats/safetensors_writer.hpp"
#include "pack/fold_smoothing.hpp"

namespace duquant {

namespace {

namespace fs = std::filesystem;
using formats::DType;
using formats::TensorRef;

// What happens to one tensor of the output.
enum class Op {
  member_weight,  // W·diag(s), each product rounded to the dtype (smoothed_weight)
  gemma_weight,   // (1 + w)/s − 1
  divide,         // w/s (LayerNorm weight and bias)
  ada_weight,     // rows j and I + j divided by s_j; gate rows (2I..3I) unchanged
  ada_bias,       // (1 + b_j)/s_j − 1 on the scale rows, b_{I+j}/s_j on the shift rows; gate unchanged
};

struct Edit {
  Op op{};
  const std::vector<float>* s = nullptr;
  std::string group;  // the group's key, for messages
};

constexpr std::size_t kChunkElements = std::size_t{1} << 16;  // whole rows per chunk, about 256 KB of floats

// The value `v` rounded to the tensor's dtype, as float32.

const TensorRef& member_weight(const formats::Checkpoint& ckpt, const SmoothGroup& g, const std::string& layer) {
  const TensorRef* w = ckpt.find(layer + ".weight");
  DQ_CHECK(w != nullptr, internal, "fold smoothing: group '{}' lists '{}', but the checkpoint has no '{}.weight'",
           g.key, layer, layer);
  DQ_CHECK(w->shape.size() == 2, internal, "fold smoothing: group '{}': '{}' is {}-D, not a linear weight", g.key,
           w->name, w->shape.size());
  DQ_CHECK(formats::converts_to_f32(w->dtype), format,
           "fold smoothing: group '{}': '{}' is {}; only F32, F16 and BF16 weights can take the smoothing scale", g.key,
           w->name, formats::dtype_name(w->dtype));
  return *w;
}

const TensorRef& norm_tensor(const formats::Checkpoint& ckpt, const SmoothGroup& g, const std::string& name,
                             std::vector<std::uint64_t> shape) {
  const TensorRef* t = ckpt.find(name);
  DQ_CHECK(t != nullptr, internal, "fold smoothing: group '{}': norm tensor '{}' is not in the checkpoint", g.key,
           name);
  DQ_CHECK(formats::converts_to_f32(t->dtype) && (t->shape == shape || shape.empty()), internal,
           "fold smoothing: group '{}': norm tensor '{}' ({}, {}-D, {} elements) does not fit {} inputs", g.key, name,
           formats::dtype_name(t->dtype), t->shape.size(), t->numel, shape.empty() ? 0 : shape[0]);
  return *t;
}

// Which tensors change, and how. Checks every group in `scales` against the checkpoint first, so a
// bad request fails before the output is created.
std::map<std::string, Edit> plan_edits(const formats::Checkpoint& ckpt, const std::vector<SmoothGroup>& groups,
                                       const std::map<std::string, std::vector<float>>& scales) {
  std::map<std::string, const SmoothGroup*> by_key;
  for (const SmoothGroup& g : groups) {
    const auto [it, fresh] = by_key.emplace(g.key, &g);
    DQ_CHECK(fresh, internal, "fold smoothing: group key '{}' appears twice", g.key);
  }
  std::map<std::string, Edit> edits;
  auto add = [&](const std::string& tensor, Op op, const std::vector<float>& s, const std::string& key) {
    const auto [it, fresh] = edits.emplace(tensor, Edit{op, &s, key});
    DQ_CHECK(fresh, internal, "fold smoothing: tensor '{}' is modified by both group '{}' and group '{}'", tensor,
             it->second.group, key);
  };
  for (const auto& [key, s] : scales) {
    const auto found = by_key.find(key);
    DQ_CHECK(found != by_key.end(), internal, "fold smoothing: smoothing scales for '{}', which is no group", key);
    const SmoothGroup& g = *found->second;
    DQ_CHECK(g.norm.has_value(), internal,
             "fold smoothing: group '{}' has smoothing scales but no norm to fold 1/s into", key);
    DQ_CHECK(!g.layers.empty(), internal, "fold smoothing: group '{}' has no member", key);
    const std::uint64_t in = member_weight(ckpt, g, g.layers.front()).shape[1];
    DQ_CHECK(s.size() == in, internal, "fold smoothing: group '{}' has {} smoothing scales for {} inputs", key,
             s.size(), in);
    for (std::size_t j = 0; j < s.size(); ++j)
      DQ_CHECK(std::isfinite(s[j]) && s[j] > 0.0f, numeric,
               "fold smoothing: group '{}': smoothing scale {} of input channel {} is not a positive finite number",
               key, s[j], j);
    for (const std::string& layer : g.layers) {
      const TensorRef& w = member_weight(ckpt, g, layer);
      DQ_CHECK(w.shape[1] == in, internal, "fold smoothing: group '{}': '{}' has {} inputs, '{}' has {}", key,
               g.layers.front(), in, layer, w.shape[1]);
      add(w.stored_name, Op::member_weight, s, key);
    }
    switch (*g.norm) {
      case NormKind::gemma_rms:
        add(norm_tensor(ckpt, g, g.norm_weight, {in}).stored_name, Op::gemma_weight, s, key);
        break;
      case NormKind::layer_norm:
        add(norm_tensor(ckpt, g, g.norm_weight, {in}).stored_name, Op::divide, s, key);
        if (!g.norm_bias.empty()) add(norm_tensor(ckpt, g, g.norm_bias, {in}).stored_name, Op::divide, s, key);
        break;
      case NormKind::ada_rms: {
        const TensorRef& dw = norm_tensor(ckpt, g, g.norm_weight, {});
        DQ_CHECK(dw.shape.size() == 2 && dw.shape[0] == 3 * in, internal,
                 "fold smoothing: group '{}': '{}' must be [{}, C] (scale, shift and gate of {} inputs)", key, dw.name,
                 3 * in, in);
        add(dw.stored_name, Op::ada_weight, s, key);
        add(norm_tensor(ckpt, g, g.norm_bias, {3 * in}).stored_name, Op::ada_bias, s, key);
        break;
      }
    }
  }
  return edits;
}

[[noreturn]] void overflow(const TensorRef& t, const Edit& e, std::uint64_t index, float before, float after, float s) {
  fail(ErrorKind::numeric,
       "fold smoothing: group '{}': element {} of '{}' is {} and becomes {} with smoothing scale {}, beyond {}",
       e.group, index, t.stored_name, before, after, s, formats::dtype_name(t.dtype));
}

// Writes one modified tensor, converted and recomputed in chunks of whole rows (1-D: of elements).
void write_edited(const formats::Checkpoint& ckpt, const TensorRef& t, const Edit& e,
                  formats::SafetensorsWriter& writer, Xxh128* digest) {
  const std::span<const std::byte> src = ckpt.bytes(t);
  const std::size_t esize = formats::dtype_bits(t.dtype) / 8;
  const std::vector<float>& s = *e.s;
  const std::uint64_t in = s.size();
  const std::uint64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
  const std::uint64_t rows = t.numel / std::max<std::uint64_t>(cols, 1);
  const std::uint64_t chunk_rows = std::max<std::uint64_t>(1, kChunkElements / std::max<std::uint64_t>(cols, 1));
  std::vector<float> v;
  std::vector<std::byte> out;
  for (std::uint64_t r0 = 0; r0 < rows; r0 += chunk_rows) {
    const std::uint64_t nr = std::min(chunk_rows, rows - r0);
    const std::size_t n = nr * cols;
    const std::byte* chunk = src.data() + r0 * cols * esize;
    v.resize(n);
    formats::convert_to_f32(t.dtype, chunk, n, v.data());
    out.assign(chunk, chunk + n * esize);
    // Applies f to element k (row r0 + k / cols) with scale sj; checks that a finite value stays
    // finite once rounded to the dtype.
    auto apply = [&](std::size_t k, float sj, float value) {
      const float rounded = formats::round_to_dtype(t.dtype, value);
      if (std::isfinite(v[k]) && !std::isfinite(rounded)) overflow(t, e, r0 * cols + k, v[k], value, sj);
      v[k] = value;
    };
    switch (e.op) {
      case Op::member_weight: {
        const std::vector<float> sw =
            smoothed_weight(v, static_cast<std::int64_t>(nr), static_cast<std::int64_t>(cols), s, t.dtype);
        for (std::size_t k = 0; k < n; ++k) apply(k, s[k % cols], sw[k]);
        formats::convert_from_f32(t.dtype, v.data(), v.size(), out.data());
        break;
      }
      case Op::gemma_weight:
        for (std::size_t k = 0; k < n; ++k) apply(k, s[r0 + k], (1.0f + v[k]) / s[r0 + k] - 1.0f);
        formats::convert_from_f32(t.dtype, v.data(), v.size(), out.data());
        break;
      case Op::divide:
        for (std::size_t k = 0; k < n; ++k) apply(k, s[r0 + k], v[k] / s[r0 + k]);
        formats::convert_from_f32(t.dtype, v.data(), v.size(), out.data());
        break;
      case Op::ada_weight:
      case Op::ada_bias: {
        // Row (bias: element) i: scale block i < I, shift block I <= i < 2I, gate block beyond.
        // Only the scale and shift rows are re-encoded; gate rows keep their bytes.
        for (std::uint64_t i = r0; i < r0 + nr && i < 2 * in; ++i) {
          const float sj = s[i % in];
          const std::size_t base = (i - r0) * cols;
          for (std::size_t c = 0; c < cols; ++c) {
            const float x = v[base + c];
            const bool scale_bias = e.op == Op::ada_bias && i < in;
            apply(base + c, sj, scale_bias ? (1.0f + x) / sj - 1.0f : x / sj);
          }
          formats::convert_from_f32(t.dtype, v.data() + base, cols, out.data() + base * esize);
        }
        break;
      }
    }
    if (digest != nullptr) digest->update(out);
    writer.write(out);
  }
}

}  // namespace

void write_folded_checkpoint(const formats::Checkpoint& ckpt, const std::vector<SmoothGroup>& groups,
                             const std::map<std::string, std::vector<float>>& scales, const fs::path& out,
                             std::map<std::string, std::string>* member_weight_digests) {
  DQ_CHECK(!formats::same_file(out, ckpt.source()), usage,
           "fold smoothing: the output {} is the input checkpoint {}; choose another path", out.string(),
           ckpt.source().string());
  for (const formats::CheckpointFile& f : ckpt.files())
    DQ_CHECK(!formats::same_file(out, f.path), usage,
             "fold smoothing: the output {} is the input file {}; choose another path", out.string(), f.path.string());

  const std::map<std::string, Edit> edits = plan_edits(ckpt, groups, scales);

  // Every stored tensor under its stored name: the copy is the same checkpoint, renaming or not.
  const std::vector<const TensorRef*> stored = ckpt.stored_tensors();
  std::vector<formats::TensorSpec> specs;
  specs.reserve(stored.size());
  for (const TensorRef* t : stored) specs.push_back({t->stored_name, t->dtype, t->shape});
  std::map<std::string, std::string> metadata;
  for (const formats::CheckpointFile& f : ckpt.files()) metadata.insert(f.metadata.begin(), f.metadata.end());

  formats::SafetensorsWriter writer(out, std::move(specs), metadata);
  for (const TensorRef* t : stored) {
    const auto e = edits.find(t->stored_name);
    if (e == edits.end()) {
      writer.write(ckpt.bytes(*t));
    } else if (e->second.op == Op::member_weight && member_weight_digests != nullptr) {
      Xxh128 digest;
      write_edited(ckpt, *t, e->second, writer, &digest);
      (*member_weight_digests)[t->stored_name] = digest.hex();
    } else {
      write_edited(ckpt, *t, e->second, writer, nullptr);
    }
    ckpt.release(*t);
  }
  writer.commit();
}

}  // namespace duquant

// `duquant bake` (duquant/convert.hpp): a checkpoint whose packed weights are what the pack's
// contract multiplies by (docs/pack-format.md, "Conformance vectors", with activations not
// quantized), so that `x @ W_bakedᵀ + b_baked` is the pack's output for any stack that loads it.
//
//   restore:    W_baked = unpermute(Routᵀ · (codes × scales) · Rinᵀ),  b unchanged
//   0 (off):    W_baked = unpermute((codes × scales) · Rinᵀ),          b unchanged
//   propagate:  W_baked as for 0,                                      b_baked = b · Routᵀ per row block
//
// Every check (manifest, digests, shapes, output path) runs before the first byte is written; the
// output appears only when complete (a file through AtomicFile, a folder as a temporary sibling
// renamed at the end). Memory: one layer's codes at a time, its weight computed in chunks of rows.
// Each element is one double sum in a fixed order, so the bytes do not depend on the thread count.
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <set>

#include "base/elementwise.hpp"
#include "duquant/convert.hpp"
#include "duquant/error.hpp"
#include "formats/atomic_file.hpp"
#include "formats/digest.hpp"
#include "formats/output_paths.hpp"
#include "formats/safetensors_writer.hpp"
#include "formats/strict_json.hpp"
#include "packfmt/manifest.hpp"
#include "packfmt/pack_reader.hpp"
#include "select/checkpoint_names.hpp"

namespace duquant {

namespace {

namespace fs = std::filesystem;
using formats::DType;
using formats::TensorRef;

constexpr const char* kBakedKey = "duquant.baked";
constexpr const char* kActivationsNote = "not quantized: the A8 activation contract is not represented";
constexpr std::size_t kChunkElements = std::size_t{1} << 16;  // elements of a weight computed at once

std::string_view dtype_option(BakeDType d) {
  switch (d) {
    case BakeDType::same: return "same";
    case BakeDType::f32: return "f32";
    case BakeDType::bf16: return "bf16";
    case BakeDType::f16: return "f16";
  }
  return "same";
}

DType output_dtype(BakeDType d, DType stored) {
  switch (d) {
    case BakeDType::f32: return DType::F32;
    case BakeDType::bf16: return DType::BF16;
    case BakeDType::f16: return DType::F16;
    case BakeDType::same: break;
  }
  return stored;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One packed layer: where its tensors are and what is written for them.
struct LayerPlan {
  const ManifestLayer* entry = nullptr;
  const TensorRef* weight = nullptr;
  const TensorRef* bias = nullptr;  // the checkpoint's bias, when it has one
  DType weight_dtype{};
  std::optional<DType> bias_dtype;  // set when the bias is replaced (propagate)
  std::vector<float> baked_bias;    // b · Routᵀ per row block (propagate with a bias)
};

struct BakePlan {
  Manifest manifest;
  RowRot row_rot = RowRot::restore;
  std::vector<LayerPlan> layers;
  std::map<std::string, std::size_t> weight_of;  // stored name -> layer
  std::map<std::string, std::size_t> bias_of;    // stored name -> layer (propagate only)
};

// The checkpoint's weight must be the one the pack was made from (its folded copy for a smoothed
// pack): anything else would bake a pack onto weights it does not describe.
void check_weight_digest(const ManifestLayer& e, const TensorRef& w, const std::string& digest,
                         const fs::path& checkpoint) {
  if (e.smoothed) {
    DQ_CHECK(!e.folded_weight_xxh128.empty(), usage,
             "bake: layer '{}' is smoothed but the pack records no folded checkpoint: its contract divides the "
             "input by smooth_scale, which a checkpoint alone cannot carry; pack again with --fold-smoothing",
             e.name);
    if (digest == e.weight_xxh128)
      fail(ErrorKind::format,
           "bake: layer '{}': {} holds the original weight '{}' (xxh128 {}), but the pack is smoothed: bake it "
           "against the checkpoint written by --fold-smoothing (weight xxh128 {})",
           e.name, checkpoint.string(), w.stored_name, digest, e.folded_weight_xxh128);
    DQ_CHECK(digest == e.folded_weight_xxh128, format,
             "bake: layer '{}': weight '{}' in {} has xxh128 {}, the pack's folded checkpoint had {}: this is not "
             "the checkpoint the pack was made from",
             e.name, w.stored_name, checkpoint.string(), digest, e.folded_weight_xxh128);
    return;
  }
  DQ_CHECK(digest == e.weight_xxh128, format,
           "bake: layer '{}': weight '{}' in {} has xxh128 {}, the pack was made from {}: this is not the "
           "checkpoint the pack was made from (a stale pack or another checkpoint)",
           e.name, w.stored_name, checkpoint.string(), digest, e.weight_xxh128);
}

// The checks on the pack's own tensors of a layer; returns them decoded.
QuantizedLayerTensors read_quantized(const PackDirectory& pack, const ManifestLayer& e, RowRot row_rot) {
  std::optional<QuantizedLayerTensors> q = pack.quantized_layer(e.name, e.wbits);
  DQ_CHECK(q.has_value(), format, "bake: layer '{}': {} holds no tensors for it", e.name,
           (pack.path() / "quantized.safetensors").string());
  DQ_CHECK(q->out_features == e.out_features && q->in_features == e.in_features, format,
           "bake: layer '{}': quantized tensors are [{}, {}], the manifest says [{}, {}]", e.name, q->out_features,
           q->in_features, e.out_features, e.in_features);
  DQ_CHECK((row_rot == RowRot::off) == q->r_out.empty(), format,
           "bake: layer '{}': {} output rotations with row_rot {}", e.name, q->r_out.size(), row_rot_name(row_rot));
  DQ_CHECK(q->bias.empty() == !e.bias, format, "bake: layer '{}': the manifest says bias {}, the pack holds {}", e.name,
           e.bias, q->bias.empty() ? "none" : "one");
  // The permutation places every baked column: it must be one (a damaged pack would write out of place).
  if (!q->perm.empty()) {
    std::vector<bool> seen(q->in_features, false);
    for (std::size_t k = 0; k < q->perm.size(); ++k) {
      const std::int64_t p = q->perm[k];
      DQ_CHECK(p >= 0 && static_cast<std::uint64_t>(p) < q->in_features && !seen[static_cast<std::size_t>(p)], format,
               "bake: layer '{}': perm[{}] = {} is outside 0..{} or repeated: the pack is damaged (`duquant verify` "
               "tells more)",
               e.name, k, p, q->in_features - 1);
      seen[static_cast<std::size_t>(p)] = true;
    }
  }
  return std::move(*q);
}

// b · Routᵀ per row block, summed in double in the order of conformance_pack_output.
std::vector<float> rotated_bias(const QuantizedLayerTensors& q) {
  std::vector<float> out(q.bias.size());
  std::size_t o = 0;
  for (const MatrixF& r : q.r_out) {
    const auto s = static_cast<std::size_t>(r.rows());
    for (std::size_t c = 0; c < s; ++c) {
      double acc = 0;
      for (std::size_t k = 0; k < s; ++k)
        acc += static_cast<double>(q.bias[o + k]) *
               static_cast<double>(r(static_cast<Eigen::Index>(c), static_cast<Eigen::Index>(k)));
      out[o + c] = static_cast<float>(acc);
    }
    o += s;
  }
  return out;
}

BakePlan plan_bake(const BakeOptions& o, const PackDirectory& pack, formats::Checkpoint& ckpt, Manifest manifest) {
  BakePlan plan;
  plan.manifest = std::move(manifest);
  plan.row_rot = plan.manifest.config.quant.row_rot;
  for (const ManifestLayer& e : plan.manifest.layers) {
    LayerPlan lp;
    lp.entry = &e;
    lp.weight = ckpt.find(e.name + ".weight");
    DQ_CHECK(lp.weight != nullptr, format,
             "bake: layer '{}' of the pack has no weight '{}.weight' in {}: this is not the checkpoint the pack was "
             "made from",
             e.name, e.name, o.checkpoint.string());
    const TensorRef& w = *lp.weight;
    DQ_CHECK(w.shape.size() == 2 && w.shape[0] == e.out_features && w.shape[1] == e.in_features, format,
             "bake: layer '{}': weight '{}' in {} has {}-D shape, not the pack's [{}, {}]", e.name, w.stored_name,
             o.checkpoint.string(), w.shape.size(), e.out_features, e.in_features);
    DQ_CHECK(formats::converts_to_f32(w.dtype), format, "bake: layer '{}': weight '{}' is {}; only F32, F16, BF16",
             e.name, w.stored_name, formats::dtype_name(w.dtype));
    check_weight_digest(e, w, xxh128_hex(ckpt.bytes(w)), o.checkpoint);
    ckpt.release(w);
    lp.weight_dtype = output_dtype(o.dtype, w.dtype);
    lp.bias = ckpt.find(e.name + ".bias");
    DQ_CHECK((lp.bias != nullptr) == e.bias, format, "bake: layer '{}': the pack says bias {}, {} has {}", e.name,
             e.bias, o.checkpoint.string(), lp.bias ? "one" : "none");
    // The layer's tensors as the manifest recorded them, before anything is read from them.
    const auto stored = pack.quantized_layer_bytes(e.name);
    DQ_CHECK(stored && stored->bytes == e.quantized_bytes && stored->xxh128 == e.quantized_xxh128, format,
             "bake: layer '{}': its tensors in {} ({} bytes, xxh128 {}) are not what the manifest records ({} bytes, "
             "xxh128 {}): the pack is damaged (`duquant verify` tells more)",
             e.name, o.pack.string(), stored ? stored->bytes : 0, stored ? stored->xxh128 : std::string("none"),
             e.quantized_bytes, e.quantized_xxh128);
    const QuantizedLayerTensors q = read_quantized(pack, e, plan.row_rot);
    if (plan.row_rot == RowRot::propagate && lp.bias != nullptr) {
      DQ_CHECK(formats::converts_to_f32(lp.bias->dtype) && lp.bias->numel == e.out_features, format,
               "bake: layer '{}': bias '{}' is {} with {} elements; expected F32, F16 or BF16 with {}", e.name,
               lp.bias->stored_name, formats::dtype_name(lp.bias->dtype), lp.bias->numel, e.out_features);
      lp.bias_dtype = output_dtype(o.dtype, lp.bias->dtype);
      lp.baked_bias = rotated_bias(q);
      for (std::size_t i = 0; i < lp.baked_bias.size(); ++i)
        DQ_CHECK(std::isfinite(formats::round_to_dtype(*lp.bias_dtype, lp.baked_bias[i])), numeric,
                 "bake: layer '{}': rotated bias [{}] = {} is beyond {}", e.name, i, lp.baked_bias[i],
                 formats::dtype_name(*lp.bias_dtype));
    }
    pack.release_quantized_layer(e.name);
    const std::size_t index = plan.layers.size();
    DQ_CHECK(plan.weight_of.emplace(w.stored_name, index).second, format, "bake: layer '{}' is listed twice", e.name);
    if (lp.bias_dtype) plan.bias_of.emplace(lp.bias->stored_name, index);
    plan.layers.push_back(std::move(lp));
  }
  return plan;
}

// Rows [r0, r0 + n) of W_baked in double (see the header comment). `a` is scratch.
void baked_rows(const QuantizedLayerTensors& q, bool restore, std::uint64_t r0, std::uint64_t n, std::vector<double>& a,
                std::vector<double>& out) {
  const auto in = static_cast<std::int64_t>(q.in_features);
  const auto rows = static_cast<std::int64_t>(n);
  a.resize(n * q.in_features);
  out.assign(n * q.in_features, 0.0);
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < rows; ++i) {
    const double s = q.scales[r0 + static_cast<std::uint64_t>(i)];
    const std::int8_t* codes = q.codes.data() + (r0 + static_cast<std::uint64_t>(i)) * q.in_features;
    for (std::int64_t c = 0; c < in; ++c) a[i * in + c] = static_cast<double>(codes[c]) * s;
  }
  if (restore) {  // Routᵀ on the left, block by block: row i of a block is Σ_k Rout(k, i) · row k
    std::vector<double> rotated(a.size());
    std::uint64_t b0 = 0;
    for (const MatrixF& r : q.r_out) {
      const auto s = static_cast<std::uint64_t>(r.rows());
      if (b0 + s > r0 && b0 < r0 + n) {
        const std::int64_t base = static_cast<std::int64_t>(b0 - r0);
#pragma omp parallel for schedule(static)
        for (std::int64_t c = 0; c < in; ++c)
          for (std::int64_t i = 0; i < static_cast<std::int64_t>(s); ++i) {
            double acc = 0;
            for (std::int64_t k = 0; k < static_cast<std::int64_t>(s); ++k)
              acc += static_cast<double>(r(k, i)) * a[(base + k) * in + c];
            rotated[(base + i) * in + c] = acc;
          }
      }
      b0 += s;
    }
    a.swap(rotated);
  }
  // Rinᵀ on the right per input block, then the columns back to the checkpoint's order:
  // W[:, perm[c0 + k]] = Σ_j Rin(k, j) · A[:, c0 + j].
#pragma omp parallel for schedule(static)
  for (std::int64_t i = 0; i < rows; ++i) {
    const double* src = a.data() + i * in;
    double* dst = out.data() + i * in;
    std::int64_t c0 = 0;
    for (const MatrixF& r : q.r_in) {
      const std::int64_t s = r.rows();
      for (std::int64_t k = 0; k < s; ++k) {
        double acc = 0;
        for (std::int64_t j = 0; j < s; ++j) acc += static_cast<double>(r(k, j)) * src[c0 + j];
        const std::int64_t col = q.perm.empty() ? c0 + k : q.perm[static_cast<std::size_t>(c0 + k)];
        dst[col] = acc;
      }
      c0 += s;
    }
  }
}

// Row ranges to compute at once: whole Rout blocks in restore mode (a block mixes its rows).
std::vector<std::pair<std::uint64_t, std::uint64_t>> row_chunks(const QuantizedLayerTensors& q, bool restore) {
  const std::uint64_t per = std::max<std::uint64_t>(1, kChunkElements / std::max<std::uint64_t>(q.in_features, 1));
  std::vector<std::pair<std::uint64_t, std::uint64_t>> chunks;
  if (!restore) {
    for (std::uint64_t r = 0; r < q.out_features; r += per) chunks.emplace_back(r, std::min(per, q.out_features - r));
    return chunks;
  }
  std::uint64_t start = 0, end = 0;
  for (const MatrixF& r : q.r_out) {
    end += static_cast<std::uint64_t>(r.rows());
    if (end - start >= per) {
      chunks.emplace_back(start, end - start);
      start = end;
    }
  }
  if (end > start) chunks.emplace_back(start, end - start);
  return chunks;
}

// Writes one layer's baked weight and returns its figures.
BakedLayer write_baked_weight(const formats::Checkpoint& ckpt, const PackDirectory& pack, const BakePlan& plan,
                              const LayerPlan& lp, formats::SafetensorsWriter& writer) {
  const ManifestLayer& e = *lp.entry;
  const QuantizedLayerTensors q = read_quantized(pack, e, plan.row_rot);
  const bool restore = plan.row_rot == RowRot::restore;
  const TensorRef& w = *lp.weight;
  const std::span<const std::byte> src = ckpt.bytes(w);
  const std::size_t in_esize = formats::dtype_bits(w.dtype) / 8;
  const std::size_t out_esize = formats::dtype_bits(lp.weight_dtype) / 8;
  double d_round = 0, n_baked = 0, d_quant = 0, n_w = 0;
  std::vector<double> scratch, baked;
  std::vector<float> values, original;
  std::vector<std::byte> bytes;
  for (const auto& [r0, n] : row_chunks(q, restore)) {
    baked_rows(q, restore, r0, n, scratch, baked);
    const std::size_t count = baked.size();
    values.resize(count);
    original.resize(count);
    formats::convert_to_f32(w.dtype, src.data() + r0 * q.in_features * in_esize, count, original.data());
    for (std::size_t k = 0; k < count; ++k) {
      const float v = formats::round_to_dtype(lp.weight_dtype, static_cast<float>(baked[k]));
      DQ_CHECK(std::isfinite(v), numeric, "bake: layer '{}': baked weight [{}, {}] = {} is beyond {}", e.name,
               r0 + k / q.in_features, k % q.in_features, baked[k], formats::dtype_name(lp.weight_dtype));
      values[k] = static_cast<float>(baked[k]);
      d_round += (static_cast<double>(v) - baked[k]) * (static_cast<double>(v) - baked[k]);
      n_baked += baked[k] * baked[k];
      d_quant += (baked[k] - original[k]) * (baked[k] - original[k]);
      n_w += static_cast<double>(original[k]) * original[k];
    }
    bytes.resize(count * out_esize);
    formats::convert_from_f32(lp.weight_dtype, values.data(), values.size(), bytes.data());
    writer.write(bytes);
  }
  ckpt.release(w);
  pack.release_quantized_layer(e.name);
  BakedLayer out;
  out.name = e.name;
  out.dtype = std::string(formats::dtype_name(lp.weight_dtype));
  out.rounding_rel = n_baked > 0 ? std::sqrt(d_round / n_baked) : 0.0;
  out.quantization_rel = n_w > 0 ? std::sqrt(d_quant / n_w) : 0.0;
  return out;
}

void write_baked_bias(const LayerPlan& lp, formats::SafetensorsWriter& writer) {
  std::vector<std::byte> bytes(lp.baked_bias.size() * (formats::dtype_bits(*lp.bias_dtype) / 8));
  formats::convert_from_f32(*lp.bias_dtype, lp.baked_bias.data(), lp.baked_bias.size(), bytes.data());
  writer.write(bytes);
}

// Where the output goes: one file, or a folder of shards with the index and the model's other files.
struct Layout {
  bool folder = false;
  fs::path model_folder;  // the folder the shard names are relative to
  std::optional<fs::path> index;
};

Layout layout_of(const formats::Checkpoint& ckpt) {
  Layout l;
  const fs::path& src = ckpt.source();
  std::error_code ec;
  if (fs::is_directory(src, ec)) {
    l.folder = true;
    l.model_folder = src;
  } else if (ends_with(src.filename().string(), ".json")) {
    l.folder = true;
    l.index = src;
    l.model_folder = src.parent_path();
  } else {
    l.model_folder = src.parent_path();
    return l;
  }
  if (l.index || ckpt.files().size() <= 1) {
    if (!l.index && fs::exists(l.model_folder / "model.safetensors.index.json", ec))
      l.index = l.model_folder / "model.safetensors.index.json";
    if (l.index || ckpt.files().size() <= 1) return l;
  }
  for (const auto& entry : fs::directory_iterator(l.model_folder, ec))
    if (ends_with(entry.path().filename().string(), ".safetensors.index.json")) l.index = entry.path();
  return l;
}

// The pack folder's name ("packs/pi05-w4/" and "packs/pi05-w4" alike).
std::string pack_name(const fs::path& pack) {
  fs::path p = formats::resolved_path(pack).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

std::map<std::string, std::string> output_metadata(const formats::CheckpointFile& f, const BakeOptions& o,
                                                   const std::string& manifest_digest) {
  std::map<std::string, std::string> m = f.metadata;
  m[kBakedKey] = std::string("1");
  m["duquant.pack_manifest_xxh128"] = manifest_digest;
  m["duquant.pack"] = pack_name(o.pack);
  m["duquant.bake_dtype"] = std::string(dtype_option(o.dtype));
  m["duquant.activations"] = kActivationsNote;
  return m;
}

// Writes the shard `file` of the checkpoint to `target`: its tensors in storage order.
std::uint64_t write_file(const formats::Checkpoint& ckpt, const PackDirectory& pack, const BakePlan& plan,
                         std::uint32_t file, const fs::path& target, const std::map<std::string, std::string>& meta,
                         BakeSummary& summary) {
  std::vector<const TensorRef*> tensors;
  for (const TensorRef* t : ckpt.stored_tensors())
    if (t->file == file) tensors.push_back(t);
  std::vector<formats::TensorSpec> specs;
  for (const TensorRef* t : tensors) {
    DType dtype = t->dtype;
    if (const auto w = plan.weight_of.find(t->stored_name); w != plan.weight_of.end())
      dtype = plan.layers[w->second].weight_dtype;
    if (const auto b = plan.bias_of.find(t->stored_name); b != plan.bias_of.end())
      dtype = *plan.layers[b->second].bias_dtype;
    specs.push_back({t->stored_name, dtype, t->shape});
  }
  std::uint64_t data = 0;
  for (const formats::TensorSpec& s : specs) data += s.nbytes();
  formats::SafetensorsWriter writer(target, std::move(specs), meta);
  for (const TensorRef* t : tensors) {
    if (const auto w = plan.weight_of.find(t->stored_name); w != plan.weight_of.end()) {
      summary.layers[w->second] = write_baked_weight(ckpt, pack, plan, plan.layers[w->second], writer);
    } else if (const auto b = plan.bias_of.find(t->stored_name); b != plan.bias_of.end()) {
      write_baked_bias(plan.layers[b->second], writer);
    } else {
      writer.write(ckpt.bytes(*t));
      ++summary.copied_tensors;
    }
    ckpt.release(*t);
  }
  writer.commit();
  summary.files += 1;
  std::error_code ec;
  summary.bytes += fs::file_size(target, ec);
  return data;
}

// A folder being written: removed on any failure, renamed over the output on commit.
class TempFolder {
 public:
  TempFolder(const fs::path& output) : output_(output) {
    const fs::path parent = output.parent_path().empty() ? fs::path(".") : output.parent_path();
    temp_ = parent / fmt::format(".{}.bake-tmp-{}", output.filename().string(), ::getpid());
    std::error_code ec;
    fs::remove_all(temp_, ec);
    fs::create_directory(temp_, ec);
    DQ_CHECK(!ec, io, "bake: cannot create the folder {}: {}", temp_.string(), ec.message());
  }
  TempFolder(const TempFolder&) = delete;
  TempFolder& operator=(const TempFolder&) = delete;
  ~TempFolder() {
    std::error_code ec;
    if (!committed_) fs::remove_all(temp_, ec);
  }
  const fs::path& path() const { return temp_; }
  void commit() {
    std::error_code ec;
    fs::path old;
    if (fs::exists(fs::symlink_status(output_, ec))) {
      old = temp_;
      old += ".old";
      fs::rename(output_, old, ec);
      DQ_CHECK(!ec, io, "bake: cannot move the old {} aside: {}", output_.string(), ec.message());
    }
    fs::rename(temp_, output_, ec);
    DQ_CHECK(!ec, io, "bake: cannot rename {} to {}: {}", temp_.string(), output_.string(), ec.message());
    committed_ = true;
    if (!old.empty()) fs::remove_all(old, ec);
  }

 private:
  fs::path output_, temp_;
  bool committed_ = false;
};

void write_index(const Layout& layout, const fs::path& target, std::uint64_t total) {
  std::ifstream in(*layout.index, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  DQ_CHECK(in.good() || in.eof(), io, "bake: cannot read {}", layout.index->string());
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text);
  if (!j.contains("metadata") || !j["metadata"].is_object()) j["metadata"] = nlohmann::ordered_json::object();
  j["metadata"]["total_size"] = total;
  formats::AtomicFile f(target);
  f.write(formats::dump_json(j, 2) + "\n");
  f.commit();
}

// The model folder's other regular files (config.json, tokenizer files, ...), copied as they are.
std::size_t copy_other_files(const formats::Checkpoint& ckpt, const Layout& layout, const fs::path& to,
                             const BakeOptions& o) {
  std::set<fs::path> skip;
  for (const formats::CheckpointFile& f : ckpt.files()) skip.insert(f.path.lexically_normal());
  if (layout.index) skip.insert(layout.index->lexically_normal());
  std::size_t copied = 0;
  std::error_code ec;
  std::vector<fs::path> entries;
  for (const auto& entry : fs::directory_iterator(layout.model_folder, ec)) entries.push_back(entry.path());
  DQ_CHECK(!ec, io, "bake: cannot list {}: {}", layout.model_folder.string(), ec.message());
  std::sort(entries.begin(), entries.end());
  for (const fs::path& p : entries) {
    const std::string name = p.filename().string();
    if (skip.count(p.lexically_normal())) continue;
    if (!fs::is_regular_file(p, ec)) {
      if (o.warn) o.warn(fmt::format("bake: {} is not a regular file: not copied", p.string()));
      continue;
    }
    if (ends_with(name, ".safetensors") || ends_with(name, ".safetensors.index.json")) {
      if (o.warn) o.warn(fmt::format("bake: {} is not part of the checkpoint: not copied", p.string()));
      continue;
    }
    fs::copy_file(p, to / name, fs::copy_options::overwrite_existing, ec);
    DQ_CHECK(!ec, io, "bake: cannot copy {} to {}: {}", p.string(), (to / name).string(), ec.message());
    ++copied;
  }
  return copied;
}

void check_output(const BakeOptions& o, const formats::Checkpoint& ckpt, const Layout& layout) {
  const std::string label = fmt::format("-o {}", o.output.string());
  DQ_CHECK(!formats::same_file(o.output, ckpt.source()), usage, "bake: the output {} is the input checkpoint {}",
           o.output.string(), ckpt.source().string());
  formats::InputSet inputs;
  for (const formats::CheckpointFile& f : ckpt.files()) inputs.add(f.path, "the checkpoint");
  if (layout.index) inputs.add(*layout.index, "the checkpoint's index");
  inputs.add_folder_files(o.pack, "the pack");
  if (!layout.folder) {
    const formats::OutputFile out = formats::check_output_file(o.output, "-o", o.force, false);
    inputs.check_output_file(out.target, label);
    return;
  }
  std::error_code ec;
  const fs::file_status st = fs::symlink_status(o.output, ec);
  if (fs::exists(st)) {
    DQ_CHECK(o.force, usage, "bake: the output {} exists; pass --force to replace it", o.output.string());
    DQ_CHECK(fs::is_directory(st), usage,
             "bake: the output {} exists and is not a folder; a sharded or folder checkpoint bakes into a folder",
             o.output.string());
  }
  DQ_CHECK(!formats::path_inside(layout.model_folder, o.output) && !formats::path_inside(o.output, layout.model_folder),
           usage, "bake: the output folder {} and the model folder {} overlap; choose another path", o.output.string(),
           layout.model_folder.string());
  inputs.check_output_folder(o.output, label);
}

}  // namespace

BakeSummary run_bake(const BakeOptions& o) {
  const PackDirectory pack = PackDirectory::open(o.pack);
  DQ_CHECK(pack.manifest() != nullptr, usage,
           "bake: {} has no manifest.json (a pack the Python runtime wrote): run `duquant import` on it first",
           o.pack.string());
  const fs::path manifest_path = o.pack / "manifest.json";
  Manifest manifest = parse_manifest(*pack.manifest(), manifest_path.string());
  const std::string manifest_digest = xxh128_file(manifest_path);

  OpenedCheckpoint opened = open_checkpoint(o.checkpoint, NamingOptions{}, manifest.names);
  formats::Checkpoint& ckpt = opened.checkpoint;
  for (const formats::CheckpointFile& f : ckpt.files()) {
    const auto it = f.metadata.find(kBakedKey);
    if (it == f.metadata.end()) continue;
    const auto from = f.metadata.find("duquant.pack");
    fail(ErrorKind::usage,
         "bake: {} was itself written by `duquant bake` (from pack '{}'): bake the FP checkpoint the pack was made "
         "from",
         f.path.string(), from == f.metadata.end() ? "?" : from->second);
  }
  const Layout layout = layout_of(ckpt);
  if (!layout.folder)
    DQ_CHECK(ends_with(o.output.filename().string(), ".safetensors"), usage,
             "bake: {} is a single-file checkpoint; the output {} must be a .safetensors file", o.checkpoint.string(),
             o.output.string());
  check_output(o, ckpt, layout);
  const BakePlan plan = plan_bake(o, pack, ckpt, std::move(manifest));

  BakeSummary summary;
  summary.layers.resize(plan.layers.size());
  if (!layout.folder) {
    std::error_code link_ec;
    const fs::path target = fs::is_symlink(o.output, link_ec) ? formats::resolved_path(o.output) : o.output;
    write_file(ckpt, pack, plan, 0, target, output_metadata(ckpt.files()[0], o, manifest_digest), summary);
  } else {
    TempFolder temp(o.output);
    std::uint64_t total = 0;
    for (std::uint32_t i = 0; i < ckpt.files().size(); ++i) {
      const formats::CheckpointFile& f = ckpt.files()[i];
      const fs::path rel = f.path.lexically_normal().lexically_relative(layout.model_folder.lexically_normal());
      DQ_CHECK(!rel.empty() && *rel.begin() != "..", internal, "bake: shard {} is outside {}", f.path.string(),
               layout.model_folder.string());
      const fs::path target = temp.path() / rel;
      std::error_code ec;
      fs::create_directories(target.parent_path(), ec);
      DQ_CHECK(!ec, io, "bake: cannot create {}: {}", target.parent_path().string(), ec.message());
      total += write_file(ckpt, pack, plan, i, target, output_metadata(f, o, manifest_digest), summary);
    }
    if (layout.index) write_index(layout, temp.path() / layout.index->filename(), total);
    summary.other_files = copy_other_files(ckpt, layout, temp.path(), o);
    ckpt.check_unchanged("bake");
    temp.commit();
  }
  return summary;
}

}  // namespace duquant

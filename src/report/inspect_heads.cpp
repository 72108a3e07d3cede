// inspect: per-head error of attention projections, the checkpoint's weight against the weight
// the pack reproduces (quantized.safetensors dequantized, or for a runtime pack the runtime's own
// quantization under the npz's transforms).
#include <fmt/format.h>

#include <cmath>

#include "duquant/error.hpp"
#include "duquant/inspect.hpp"
#include "formats/digest.hpp"
#include "formats/regular_file.hpp"
#include "packfmt/pack_reader.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;

HeadError head_error(std::int64_t head, double signal, double noise) {
  HeadError e;
  e.head = head;
  e.rel_fro_error = signal > 0 ? std::sqrt(noise / signal) : 0.0;
  if (signal > 0 && noise > 0) e.sqnr_db = 10.0 * std::log10(signal / noise);
  return e;
}

// The weight the pack reproduces for `l`, in the checkpoint's basis, or nullopt with `why` set.
std::optional<MatrixF> pack_weight(const PackDirectory& pack, const PackLayerInfo& l, const WeightView& w,
                                   std::string& why) {
  if (pack.manifest()) {
    const auto t = pack.quantized_layer(l.name, l.wbits);
    if (!t) {
      why = "quantized.safetensors holds no tensors for it";
      return std::nullopt;
    }
    DQ_CHECK(t->out_features == l.out_features && t->in_features == l.in_features, format,
             "{}: layer '{}' is [{}, {}] in quantized.safetensors but [{}, {}] in the manifest", pack.path().string(),
             l.name, t->out_features, t->in_features, l.out_features, l.in_features);
    return dequantized_original_basis(*t);
  }
  // The manifest's npz name, confined to the pack folder (format error otherwise).
  const NpzLayer npz = read_npz_layer(
      formats::confined_path(pack.path(), l.npz, fmt::format("{}: layer '{}': npz", pack.path().string(), l.name)));
  return runtime_quantized_original_basis(w, npz, 4);
}

}  // namespace

std::vector<HeadError> head_errors(const float* w, const float* w_hat, std::uint64_t o, std::uint64_t i, HeadAxis axis,
                                   std::int64_t hd) {
  std::vector<HeadError> out;
  if (axis == HeadAxis::none || hd <= 0) return out;
  const auto d = static_cast<std::uint64_t>(hd);
  const std::uint64_t width = axis == HeadAxis::rows ? o : i;
  if (width % d != 0) return out;
  for (std::uint64_t h = 0; h < width / d; ++h) {
    double signal = 0, noise = 0;
    const std::uint64_t r0 = axis == HeadAxis::rows ? h * d : 0, r1 = axis == HeadAxis::rows ? (h + 1) * d : o;
    const std::uint64_t c0 = axis == HeadAxis::columns ? h * d : 0, c1 = axis == HeadAxis::columns ? (h + 1) * d : i;
    for (std::uint64_t r = r0; r < r1; ++r)
      for (std::uint64_t c = c0; c < c1; ++c) {
        const double a = w[r * i + c], e = a - static_cast<double>(w_hat[r * i + c]);
        signal += a * a;
        noise += e * e;
      }
    out.push_back(head_error(static_cast<std::int64_t>(h), signal, noise));
  }
  return out;
}

void add_head_errors(PackReport& report, const formats::Checkpoint& ckpt, const HeadDims& dims) {
  const PackDirectory pack = PackDirectory::open(report.path);
  for (PackLayerInfo& l : report.layers) {
    const HeadAxis axis = head_axis(l.name);
    if (axis == HeadAxis::none) continue;
    const auto hd = dims.of(l.name);
    if (!hd) {
      l.heads_note = "head dimension unknown (give --head-dim N or a config.json beside the checkpoint)";
      continue;
    }
    const std::uint64_t width = axis == HeadAxis::rows ? l.out_features : l.in_features;
    if (width % static_cast<std::uint64_t>(*hd) != 0) {
      l.heads_note =
          fmt::format("head_dim {} does not divide the {} {}", *hd, width, axis == HeadAxis::rows ? "rows" : "columns");
      continue;
    }
    const formats::TensorRef* t = ckpt.find(l.name + ".weight");
    if (t == nullptr) {
      l.heads_note = fmt::format("{} has no tensor '{}.weight'", ckpt.source().string(), l.name);
      report.warnings.push_back(l.heads_note);
      continue;
    }
    if (t->shape.size() != 2 || t->shape[0] != l.out_features || t->shape[1] != l.in_features) {
      l.heads_note = fmt::format("the checkpoint's '{}.weight' has another shape than the pack's [{}, {}]", l.name,
                                 l.out_features, l.in_features);
      report.warnings.push_back(fmt::format("{}: {}", ckpt.source().string(), l.heads_note));
      continue;
    }
    if (!l.weight_xxh128.empty() && xxh128_hex(ckpt.bytes(*t)) != l.weight_xxh128) {
      l.heads_note = "the checkpoint's weight is not the one packed (weight_xxh128 differs)";
      report.warnings.push_back(fmt::format("{}: {}: {}", ckpt.source().string(), l.name, l.heads_note));
      continue;
    }
    std::vector<float> w(t->numel);
    ckpt.read_f32(*t, w);
    const WeightView view{w.data(), static_cast<std::int64_t>(l.out_features),
                          static_cast<std::int64_t>(l.in_features)};
    std::string why;
    const std::optional<MatrixF> w_hat = pack_weight(pack, l, view, why);
    ckpt.release(*t);
    if (!w_hat) {
      l.heads_note = why;
      continue;
    }
    l.head_dim = *hd;
    l.heads = head_errors(w.data(), w_hat->data(), l.out_features, l.in_features, axis, *hd);
  }
}

}  // namespace duquant

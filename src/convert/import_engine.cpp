// The layer engine of `duquant import` (import_engine.hpp).
#include "import_engine.hpp"

#include <fmt/format.h>

#include <cstring>
#include <utility>
#include <vector>

#include "duquant/error.hpp"
#include "formats/digest.hpp"
#include "formats/regular_file.hpp"
#include "math/duquant_math.hpp"
#include "packfmt/layout.hpp"
#include "packfmt/pack_reader.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;

// The largest npz a layer of this shape can have: weight_scale, perm, the rotations and headers.
std::uint64_t npz_bytes_bound(std::uint64_t rows, std::uint64_t cols, std::int64_t block, std::int64_t block_out) {
  const auto b = static_cast<std::uint64_t>(block), bo = static_cast<std::uint64_t>(block_out);
  return 4 * rows + 8 * cols + 4 * (cols + b) * b + 4 * (rows + bo) * bo + 1024 * (cols / b + rows / bo + 16);
}

// The npz's rotation blocks as the transform's: one per block of `width` over `n`, in block order,
// each of its block's width.
std::vector<MatrixF> blocks_of(const std::vector<std::pair<std::int64_t, MatrixF>>& found, std::int64_t n,
                               std::int64_t width, const char* what, const fs::path& path) {
  const std::int64_t count = block_count(n, width);
  DQ_CHECK(static_cast<std::int64_t>(found.size()) == count, format,
           "{}: {} {} blocks for {} channels in blocks of {} (expected {})", path.string(), found.size(), what, n,
           width, count);
  std::vector<MatrixF> out(static_cast<std::size_t>(count));
  std::vector<bool> seen(static_cast<std::size_t>(count), false);
  for (const auto& [b, r] : found) {
    DQ_CHECK(b >= 0 && b < count && !seen[static_cast<std::size_t>(b)], format,
             "{}: {} block {} is outside 0..{} or repeated", path.string(), what, b, count - 1);
    const std::int64_t w = block_width(n, width, b);
    DQ_CHECK(r.rows() == w && r.cols() == w, format, "{}: {}_{} is [{}, {}], block {} is {} wide", path.string(), what,
             b, r.rows(), r.cols(), b, w);
    seen[static_cast<std::size_t>(b)] = true;
    out[static_cast<std::size_t>(b)] = r;
  }
  return out;
}

class ImportEngine final : public LayerEngine {
 public:
  ImportEngine(fs::path source, std::map<std::string, std::string> digests)
      : source_(std::move(source)), digests_(std::move(digests)) {}
  std::string name() const override { return "cpu"; }

  LayerMath compute(const WeightView& w, const QuantConfig& q, int bits, const std::string& layer) override {
    const fs::path path = source_ / pack_file_name(layer);
    const auto expected = digests_.find(layer);
    DQ_CHECK(expected != digests_.end(), internal, "import: layer '{}' was not checked", layer);
    const auto rows = static_cast<std::uint64_t>(w.rows), cols = static_cast<std::uint64_t>(w.cols);
    std::string bytes = formats::read_regular_file(path, npz_bytes_bound(rows, cols, q.block, q.block_out));
    const std::string digest = xxh128_hex(std::as_bytes(std::span(bytes.data(), bytes.size())));
    DQ_CHECK(digest == expected->second, io,
             "{}: layer '{}': the file changed while it was imported (xxh128 {} when checked, {} now)", path.string(),
             layer, expected->second, digest);
    std::vector<std::byte> raw(bytes.size());
    std::memcpy(raw.data(), bytes.data(), bytes.size());
    const NpzLayer npz = read_npz_layer(std::move(raw), path);

    const PackMeta& m = npz.meta;
    DQ_CHECK(m.in_features == cols && m.out_features == rows && m.block_size == q.block &&
                 m.block_out_size == q.block_out && m.enable_permute == q.permute,
             format, "{}: layer '{}': meta {} does not fit [{}, {}] with block {}, block_out {}, permute {}",
             path.string(), layer, npz.meta_text, rows, cols, q.block, q.block_out, q.permute);
    LayerMath math;
    LayerTransform& t = math.t;
    if (q.permute) {
      DQ_CHECK(npz.has_perm && npz.perm.size() == cols, format, "{}: layer '{}': perm of {} for {} inputs",
               path.string(), layer, npz.perm.size(), cols);
      std::vector<bool> seen(cols, false);
      for (std::int64_t p : npz.perm) {
        DQ_CHECK(p >= 0 && static_cast<std::uint64_t>(p) < cols && !seen[static_cast<std::size_t>(p)], format,
                 "{}: layer '{}': perm is not a permutation of 0..{} ({} is out of range or repeated)", path.string(),
                 layer, cols - 1, p);
        seen[static_cast<std::size_t>(p)] = true;
      }
      t.perm = npz.perm;
    } else {
      t.perm.resize(cols);
      for (std::uint64_t k = 0; k < cols; ++k) t.perm[k] = static_cast<std::int64_t>(k);
    }
    t.r_in = blocks_of(npz.r_in, w.cols, q.block, "Rin", path);
    // Mode 0 multiplies by no output rotation: the runtime's Rout blocks stay in its npz, unused.
    if (q.row_rot != RowRot::off) t.r_out = blocks_of(npz.r_out, w.rows, q.block_out, "Rout", path);
    DQ_CHECK(npz.weight_scale.size() == rows, format, "{}: layer '{}': weight_scale of {} for {} rows", path.string(),
             layer, npz.weight_scale.size(), rows);
    math.weight_scale = npz.weight_scale;

    // As the runtime computes its forward weight: W[:, perm]·Rin per column block, then Rout per row
    // block, then the per-row MSE scale search (runtime_quantized_original_basis does the same).
    MatrixF w_t = apply_input_transform(w, t, q.block);
    apply_output_rotation(w_t, t, q.block_out);
    math.quant = quantize_rows(w_t, bits);
    math.rtn_err2 = rtn_squared_error(w, bits);
    math.source_npz = std::move(bytes);
    return math;
  }

 private:
  fs::path source_;
  std::map<std::string, std::string> digests_;
};

}  // namespace

std::unique_ptr<LayerEngine> make_import_engine(fs::path source, std::map<std::string, std::string> npz_xxh128) {
  return std::make_unique<ImportEngine>(std::move(source), std::move(npz_xxh128));
}

}  // namespace duquant

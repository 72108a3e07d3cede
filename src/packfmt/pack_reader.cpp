#include "packfmt/pack_reader.hpp"

#include "math/cpu_kernels.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <sstream>

#include "duquant/error.hpp"
#include "formats/digest.hpp"
#include "formats/npz.hpp"
#include "formats/regular_file.hpp"
#include "formats/strict_json.hpp"
#include "packfmt/layout.hpp"
#include "packfmt/manifest.hpp"

namespace duquant {
namespace fs = std::filesystem;
using formats::NpyArray;

namespace {

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  std::string s = "(";
  for (std::size_t k = 0; k < shape.size(); ++k) s.append(fmt::format("{}{}", k ? ", " : "", shape[k]));
  if (shape.size() == 1) s.append(",");
  s.append(")");
  return s;
}

MatrixF matrix_of(const NpyArray& a, const std::string& label) {
  DQ_CHECK(a.shape.size() == 2, format, "{}: expected a 2-D array, found shape {}", label, shape_text(a.shape));
  const std::vector<float> v = formats::npy_to_f32(a, label);
  MatrixF m(static_cast<Eigen::Index>(a.shape[0]), static_cast<Eigen::Index>(a.shape[1]));
  std::copy(v.begin(), v.end(), m.data());
  return m;
}

std::vector<std::int64_t> vector_i64(const NpyArray& a, const std::string& label) {
  DQ_CHECK(a.shape.size() == 1, format, "{}: expected a 1-D array, found shape {}", label, shape_text(a.shape));
  return formats::npy_to_i64(a, label);
}

bool parse_block_key(const std::string& key, std::string_view prefix, std::int64_t& index) {
  if (key.size() <= prefix.size() || key.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string digits = key.substr(prefix.size());
  if (digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  if (digits.size() > 1 && digits[0] == '0') return false;
  index = std::stoll(digits);
  return true;
}

// Rotation blocks [nb, B, B] -> nb matrices, the last cut to the true width `n - (nb-1)*B`.
std::vector<MatrixF> unstack_blocks(const formats::Checkpoint& q, const formats::TensorRef& t, std::uint64_t n,
                                    const std::string& label) {
  DQ_CHECK(t.dtype == formats::DType::F32 && t.shape.size() == 3 && t.shape[1] == t.shape[2] && t.shape[1] > 0, format,
           "{}: tensor '{}' must be F32 [blocks, B, B], found {} {}", label, t.name, formats::dtype_name(t.dtype),
           shape_text(t.shape));
  const std::uint64_t b = t.shape[1], nb = t.shape[0];
  DQ_CHECK(nb == (n + b - 1) / b, format, "{}: tensor '{}' has {} blocks of {}, a width of {} needs {}", label, t.name,
           nb, b, n, (n + b - 1) / b);
  std::vector<float> all(t.numel);
  q.read_f32(t, all);
  std::vector<MatrixF> out;
  for (std::uint64_t k = 0; k < nb; ++k) {
    const auto w = static_cast<Eigen::Index>(std::min(b, n - k * b));
    MatrixF m(w, w);
    for (Eigen::Index r = 0; r < w; ++r)
      for (Eigen::Index c = 0; c < w; ++c) m(r, c) = all[k * b * b + static_cast<std::uint64_t>(r) * b + c];
    out.push_back(std::move(m));
  }
  return out;
}

std::vector<float> read_vector_f32(const formats::Checkpoint& q, const formats::TensorRef& t, std::uint64_t n,
                                   const std::string& label) {
  DQ_CHECK(t.shape.size() == 1 && t.shape[0] == n, format, "{}: tensor '{}' must have shape ({},), found {}", label,
           t.name, n, shape_text(t.shape));
  std::vector<float> v(n);
  q.read_f32(t, v);
  return v;
}

std::vector<float> read_rows_f32(const formats::Checkpoint& q, const formats::TensorRef& t, std::uint64_t cols,
                                 const std::string& label) {
  DQ_CHECK(t.dtype == formats::DType::F32 && t.shape.size() == 2 && t.shape[1] == cols && t.shape[0] > 0, format,
           "{}: tensor '{}' must be F32 [rows, {}], found {} {}", label, t.name, cols, formats::dtype_name(t.dtype),
           shape_text(t.shape));
  std::vector<float> v(t.numel);
  q.read_f32(t, v);
  return v;
}

// Undoes the row rotations, the column rotations and the permutation of `w_t` (rotations
// inverted by their transposes: they are orthogonal in a sound pack).
MatrixF to_original_basis(MatrixF w_t, std::span<const std::int64_t> perm, const std::vector<MatrixF>& r_in,
                          const std::vector<MatrixF>& r_out) {
  const simd::Kernels& kern = simd::kernels();
  const Eigen::Index rows = w_t.rows(), cols = w_t.cols();
  std::vector<float> tmp;
  Eigen::Index r0 = 0;
  for (const MatrixF& r : r_out) {
    const Eigen::Index s = r.rows();
    DQ_CHECK(r0 + s <= rows, internal, "row rotations cover {} rows of {}", r0 + s, rows);
    const MatrixF rt = r.transpose();
    tmp.resize(static_cast<std::size_t>(s * cols));
    kern.product_f32(rt.data(), s, w_t.data() + r0 * cols, cols, tmp.data(), cols, s, cols, s);
    std::copy(tmp.begin(), tmp.end(), w_t.data() + r0 * cols);
    r0 += s;
  }
  Eigen::Index c0 = 0;
  constexpr Eigen::Index kTile = 256;  // rows at a time, kept in cache
  for (const MatrixF& r : r_in) {
    const Eigen::Index s = r.rows();
    DQ_CHECK(c0 + s <= cols, internal, "column rotations cover {} columns of {}", c0 + s, cols);
    const MatrixF rt = r.transpose();
    tmp.resize(static_cast<std::size_t>(kTile * s));
    for (Eigen::Index t0 = 0; t0 < rows; t0 += kTile) {
      const Eigen::Index n = std::min(kTile, rows - t0);
      float* x = w_t.data() + t0 * cols + c0;
      kern.product_f32(x, cols, rt.data(), s, tmp.data(), s, n, s, s);
      for (Eigen::Index i = 0; i < n; ++i) std::copy_n(tmp.data() + i * s, s, x + i * cols);
    }
    c0 += s;
  }
  if (perm.empty()) return w_t;
  MatrixF w(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i) {  // row by row: the scatter stays in cache
    const float* src = w_t.data() + i * cols;
    float* dst = w.data() + i * cols;
    for (Eigen::Index j = 0; j < cols; ++j) dst[perm[static_cast<std::size_t>(j)]] = src[j];
  }
  return w;
}

}  // namespace

PackMeta parse_pack_meta(std::string_view text, const std::string& label) {
  // The runtime reads `meta` as Python does: numpy strips only trailing NULs (npy_unicode_to_utf8
  // does the same), then json.loads. Two texts that nlohmann alone would accept fail there.
  if (const auto nul = text.find('\0'); nul != std::string_view::npos)
    fail(ErrorKind::format,
         "{}: meta holds a NUL character at byte {} followed by {} more bytes; numpy strips only trailing NULs, so the "
         "runtime's json.loads fails on it ('Extra data') and does not use this meta",
         label, nul, text.size() - nul - 1);
  if (text.substr(0, 3) == "\xEF\xBB\xBF")
    fail(ErrorKind::format,
         "{}: meta starts with a byte order mark (U+FEFF); the runtime's json.loads fails on it and does not use this "
         "meta",
         label);
  const nlohmann::json j = formats::parse_strict_json(text, label, kMaxMetaDepth);
  DQ_CHECK(j.is_object(), format, "{}: meta must be a JSON object, found {}", label, formats::json_kind(j));
  static const char* const keys[] = {"in_features",    "out_features",   "block_size",
                                     "block_out_size", "enable_permute", "lambda_smooth"};
  for (const auto& item : j.items()) {
    const std::string& k = item.key();
    DQ_CHECK(std::find_if(std::begin(keys), std::end(keys), [&](const char* x) { return k == x; }) != std::end(keys),
             format, "{}: meta has an unknown key '{}'", label, k);
  }
  auto positive = [&](const char* key) {
    DQ_CHECK(j.contains(key), format, "{}: meta lacks '{}'", label, key);
    const nlohmann::json& v = j.at(key);
    DQ_CHECK(v.is_number_unsigned() && v.get<std::uint64_t>() >= 1 && v.get<std::uint64_t>() <= kMaxMetaFeatures,
             format, "{}: meta '{}' must be an integer >= 1, found {}", label, key, formats::dump_json(v));
    return v.get<std::uint64_t>();
  };
  PackMeta m;
  m.in_features = positive("in_features");
  m.out_features = positive("out_features");
  m.block_size = static_cast<std::int64_t>(positive("block_size"));
  m.block_out_size = static_cast<std::int64_t>(positive("block_out_size"));
  DQ_CHECK(j.contains("enable_permute") && j.at("enable_permute").is_boolean(), format,
           "{}: meta 'enable_permute' must be true or false{}", label,
           j.contains("enable_permute") ? fmt::format(", found {}", formats::dump_json(j.at("enable_permute")))
                                        : std::string(" (missing)"));
  m.enable_permute = j.at("enable_permute").get<bool>();
  DQ_CHECK(j.contains("lambda_smooth") && j.at("lambda_smooth").is_number(), format,
           "{}: meta 'lambda_smooth' must be a number{}", label,
           j.contains("lambda_smooth") ? fmt::format(", found {}", formats::dump_json(j.at("lambda_smooth")))
                                       : std::string(" (missing)"));
  m.lambda_smooth = j.at("lambda_smooth").get<double>();
  return m;
}

namespace {
NpzLayer npz_layer_of(const formats::NpzFile& npz, const fs::path& path);
}  // namespace

NpzLayer read_npz_layer(const fs::path& path) { return npz_layer_of(formats::NpzFile::open(path), path); }

NpzLayer read_npz_layer(std::vector<std::byte> bytes, const fs::path& path) {
  return npz_layer_of(formats::NpzFile::parse(std::move(bytes), path.string()), path);
}

namespace {

NpzLayer npz_layer_of(const formats::NpzFile& npz, const fs::path& path) {
  NpzLayer l;
  l.file = path.filename().string();
  l.members = npz.keys();
  const std::string label = path.string();
  auto member_label = [&](const std::string& key) { return fmt::format("{}: member '{}'", label, key); };

  DQ_CHECK(npz.contains("meta"), format, "{}: no member 'meta'", label);
  l.meta_text = formats::npy_unicode_to_utf8(npz.at("meta"), member_label("meta"));
  l.meta = parse_pack_meta(l.meta_text, member_label("meta"));

  DQ_CHECK(npz.contains("weight_scale"), format, "{}: no member 'weight_scale'", label);
  const NpyArray& ws = npz.at("weight_scale");
  l.weight_scale_shape = ws.shape;
  l.weight_scale = formats::npy_to_f32(ws, member_label("weight_scale"));

  if (npz.contains("perm")) {
    l.has_perm = true;
    l.perm = vector_i64(npz.at("perm"), member_label("perm"));
  }
  DQ_CHECK(npz.contains("R_in_blocks"), format, "{}: no member 'R_in_blocks'", label);
  l.r_in_blocks = vector_i64(npz.at("R_in_blocks"), member_label("R_in_blocks"));
  DQ_CHECK(npz.contains("R_out_blocks"), format, "{}: no member 'R_out_blocks'", label);
  l.r_out_blocks = vector_i64(npz.at("R_out_blocks"), member_label("R_out_blocks"));
  for (const std::string& key : l.members) {
    std::int64_t b = 0;
    if (parse_block_key(key, "Rin_", b)) l.r_in.emplace_back(b, matrix_of(npz.at(key), member_label(key)));
    if (parse_block_key(key, "Rout_", b)) l.r_out.emplace_back(b, matrix_of(npz.at(key), member_label(key)));
  }
  for (auto [key, shape, values] : {std::tuple{"act_scale", &l.act_scale_shape, &l.act_scale},
                                    std::tuple{"smooth_scale", &l.smooth_scale_shape, &l.smooth_scale}}) {
    if (!npz.contains(key)) continue;
    *shape = npz.at(key).shape;
    *values = formats::npy_to_f32(npz.at(key), member_label(key));
  }
  auto by_index = [](const auto& a, const auto& b) { return a.first < b.first; };
  std::sort(l.r_in.begin(), l.r_in.end(), by_index);
  std::sort(l.r_out.begin(), l.r_out.end(), by_index);
  return l;
}

}  // namespace

PackDirectory PackDirectory::open(const fs::path& dir, bool tolerate_bad_manifest) {
  std::error_code ec;
  const fs::file_status dir_status = formats::status_of(dir);  // a link loop, an over-long name: io, named
  DQ_CHECK(fs::exists(dir_status), io, "{}: not a pack directory (no such folder)", dir.string());
  DQ_CHECK(fs::is_directory(dir_status), io, "{}: not a pack directory (it is {}, not a folder)", dir.string(),
           dir_status.type() == fs::file_type::fifo        ? "a FIFO"
           : dir_status.type() == fs::file_type::regular   ? "a regular file"
           : dir_status.type() == fs::file_type::character ? "a character device"
           : dir_status.type() == fs::file_type::block     ? "a block device"
           : dir_status.type() == fs::file_type::socket    ? "a socket"
                                                           : "not a folder");
  PackDirectory p;
  p.dir_ = dir;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    // Whatever it is: an npz name that is a FIFO, a folder or a link loop is a layer the runtime
    // cannot load, reported by verify (FAIL), never skipped; it is opened only if it is a file.
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".npz") == 0) p.npz_files_.push_back(name);
  }
  DQ_CHECK(!ec, io, "{}: cannot list: {}", dir.string(), ec.message());
  std::sort(p.npz_files_.begin(), p.npz_files_.end());
  const fs::path manifest = dir / std::string(kManifestName);
  if (fs::symlink_status(manifest, ec).type() != fs::file_type::not_found) {  // a FIFO or a loop: the reader refuses it
    try {
      p.manifest_ = read_manifest_json(manifest);
    } catch (const Error& e) {
      if (!tolerate_bad_manifest) throw;
      p.manifest_error_ = e.what();
    }
  }
  return p;
}

std::string PackDirectory::layer_name_of(const std::string& npz_file) {
  return npz_file.size() > 4 ? npz_file.substr(0, npz_file.size() - 4) : npz_file;
}

const nlohmann::json* PackDirectory::manifest_layer(const std::string& layer) const {
  if (!manifest_ || !manifest_->contains("layers") || !manifest_->at("layers").is_array()) return nullptr;
  const nlohmann::json& layers = manifest_->at("layers");
  if (!manifest_index_) {  // the first entry of each name, as a scan in order finds it
    auto& index = manifest_index_.emplace();
    index.reserve(layers.size());
    for (std::size_t k = 0; k < layers.size(); ++k) {
      const nlohmann::json& e = layers[k];
      if (e.is_object() && e.contains("name") && e.at("name").is_string())
        index.try_emplace(e.at("name").get<std::string>(), k);
    }
  }
  const auto it = manifest_index_->find(layer);
  return it == manifest_index_->end() ? nullptr : &layers[it->second];
}

// The tensors `<layer>.<name>` of quantized.safetensors (one name part after the layer's), in
// storage order: grouped once by the name before their last '.'.
std::vector<const formats::TensorRef*> PackDirectory::layer_tensors(const formats::Checkpoint& q,
                                                                    const std::string& layer) const {
  const auto& tensors = q.tensors();
  if (!tensors_by_layer_) {
    auto& groups = tensors_by_layer_.emplace();
    for (std::size_t k = 0; k < tensors.size(); ++k) {
      const std::string& name = tensors[k].name;
      const std::size_t dot = name.rfind('.');
      if (dot != std::string::npos && dot + 1 < name.size()) groups[name.substr(0, dot)].push_back(k);
    }
  }
  std::vector<const formats::TensorRef*> out;
  if (const auto it = tensors_by_layer_->find(layer); it != tensors_by_layer_->end())
    for (std::size_t k : it->second) out.push_back(&tensors[k]);
  return out;
}

const formats::Checkpoint* PackDirectory::quantized() const {
  if (!quantized_probed_) {
    quantized_probed_ = true;
    const fs::path index = dir_ / std::string(kQuantizedIndexName), single = dir_ / std::string(kQuantizedName);
    std::error_code ec;
    if (fs::exists(index, ec))
      quantized_.emplace(formats::Checkpoint::open(index));
    else if (fs::exists(single, ec))
      quantized_.emplace(formats::Checkpoint::open(single));
  }
  return quantized_ ? &*quantized_ : nullptr;
}

std::optional<QuantizedLayerTensors> PackDirectory::quantized_layer(const std::string& layer, int bits) const {
  const formats::Checkpoint* q = quantized();
  if (q == nullptr) return std::nullopt;
  const formats::TensorRef* qw = q->find(layer + ".qweight");
  if (qw == nullptr) return std::nullopt;
  const std::string label = q->source().filename().string();
  QuantizedLayerTensors t;
  DQ_CHECK(qw->shape.size() == 2 && qw->shape[0] > 0 && qw->shape[1] > 0, format,
           "{}: tensor '{}' must be 2-D, found {}", label, qw->name, shape_text(qw->shape));
  t.out_features = qw->shape[0];
  const formats::TensorRef* scales = q->find(layer + ".scales");
  const formats::TensorRef* perm = q->find(layer + ".perm");
  const formats::TensorRef* r_in = q->find(layer + ".R_in");
  const formats::TensorRef* r_out = q->find(layer + ".R_out");
  const formats::TensorRef* bias = q->find(layer + ".bias");
  const formats::TensorRef* tx = q->find(layer + ".test_x");
  // in_features: I8 codes say it; nibbles give ceil(I/2), so it comes from the manifest's shape,
  // else from another tensor of the layer.
  DQ_CHECK(bits >= kMinWeightBits && bits <= kMaxWeightBits, format,
           "{}: layer '{}': {} weight bits (expected {} to {})", label, layer, bits, kMinWeightBits, kMaxWeightBits);
  const CodeStorage storage = code_storage(bits);
  const formats::DType want = storage.dtype;
  DQ_CHECK(qw->dtype == want, format, "{}: tensor '{}' is {}, but {}-bit codes are stored as {}", label, qw->name,
           formats::dtype_name(qw->dtype), bits, formats::dtype_name(want));
  t.bits = bits;
  if (!storage.nibbles) {
    t.in_features = qw->shape[1];
  } else {
    std::uint64_t in = 0;
    if (const nlohmann::json* e = manifest_layer(layer); e != nullptr && e->contains("shape") &&
                                                         e->at("shape").is_array() && e->at("shape").size() == 2 &&
                                                         e->at("shape")[1].is_number_unsigned())
      in = e->at("shape")[1].get<std::uint64_t>();
    else if (perm != nullptr && perm->shape.size() == 1)
      in = perm->shape[0];
    else if (tx != nullptr && tx->shape.size() == 2)
      in = tx->shape[1];
    else
      in = 2 * qw->shape[1];
    DQ_CHECK(storage.row_bytes(in) == qw->shape[1], format,
             "{}: tensor '{}' has {} bytes per row; {} input features need {}", label, qw->name, qw->shape[1], in,
             storage.row_bytes(in));
    t.in_features = in;
  }
  const std::uint64_t o = t.out_features, i = t.in_features;
  DQ_CHECK(o <= kMaxDecodedCodes / i, format, "{}: tensor '{}' is too large ({} x {})", label, qw->name, o, i);
  t.codes = unpack_codes(q->bytes(*qw), static_cast<std::int64_t>(o), static_cast<std::int64_t>(i), bits);
  DQ_CHECK(scales != nullptr, format, "{}: layer '{}' has codes but no '.scales'", label, layer);
  DQ_CHECK(scales->dtype == formats::DType::F32, format, "{}: tensor '{}' must be F32, found {}", label, scales->name,
           formats::dtype_name(scales->dtype));
  t.scales = read_vector_f32(*q, *scales, o, label);
  if (perm != nullptr) {
    DQ_CHECK(perm->dtype == formats::DType::I64 && perm->shape.size() == 1 && perm->shape[0] == i, format,
             "{}: tensor '{}' must be I64 ({},), found {} {}", label, perm->name, i, formats::dtype_name(perm->dtype),
             shape_text(perm->shape));
    t.perm.resize(i);
    std::memcpy(t.perm.data(), q->bytes(*perm).data(), i * sizeof(std::int64_t));
  }
  DQ_CHECK(r_in != nullptr, format, "{}: layer '{}' has codes but no '.R_in'", label, layer);
  t.r_in = unstack_blocks(*q, *r_in, i, label);
  if (r_out != nullptr) t.r_out = unstack_blocks(*q, *r_out, o, label);
  if (bias != nullptr) t.bias = read_vector_f32(*q, *bias, o, label);
  if (tx != nullptr) {
    t.test_x = read_rows_f32(*q, *tx, i, label);
    t.test_rows = tx->shape[0];
    const formats::TensorRef* yf = q->find(layer + ".test_y_fp");
    const formats::TensorRef* yq = q->find(layer + ".test_y_q");
    DQ_CHECK(yf != nullptr && yq != nullptr, format, "{}: layer '{}' has test_x but not test_y_fp and test_y_q", label,
             layer);
    t.test_y_fp = read_rows_f32(*q, *yf, o, label);
    t.test_y_q = read_rows_f32(*q, *yq, o, label);
    DQ_CHECK(yf->shape[0] == t.test_rows && yq->shape[0] == t.test_rows, format,
             "{}: layer '{}': test_x has {} rows, test_y_fp {}, test_y_q {}", label, layer, t.test_rows, yf->shape[0],
             yq->shape[0]);
  }
  if (const formats::TensorRef* a = q->find(layer + ".act_scale")) t.act_scale = read_vector_f32(*q, *a, i, label);
  if (const formats::TensorRef* sm = q->find(layer + ".smooth_scale"))
    t.smooth_scale = read_vector_f32(*q, *sm, i, label);
  return t;
}

std::optional<PackDirectory::LayerBytes> PackDirectory::quantized_layer_bytes(const std::string& layer) const {
  const formats::Checkpoint* q = quantized();
  if (q == nullptr) return std::nullopt;
  const std::vector<const formats::TensorRef*> mine = layer_tensors(*q, layer);
  if (mine.empty()) return std::nullopt;
  // tensors() is in storage order (file, then offset).
  LayerBytes out;
  out.file = q->files()[mine.front()->file].path.filename().string();
  Xxh128 hash;
  for (std::size_t k = 0; k < mine.size(); ++k) {
    const formats::TensorRef& t = *mine[k];
    if (k > 0 && (t.file != mine[k - 1]->file || t.offset != mine[k - 1]->offset + mine[k - 1]->nbytes))
      out.contiguous = false;
    hash.update(q->bytes(t));
    out.bytes += t.nbytes;
    out.tensors.push_back(t.name);
  }
  out.xxh128 = hash.hex();
  return out;
}

void PackDirectory::release_quantized_layer(const std::string& layer) const {
  const formats::Checkpoint* q = quantized();
  if (q == nullptr) return;
  for (const formats::TensorRef* t : layer_tensors(*q, layer)) q->release(*t);
}

MatrixF dequantized_original_basis(const QuantizedLayerTensors& t) {
  const auto o = static_cast<Eigen::Index>(t.out_features), i = static_cast<Eigen::Index>(t.in_features);
  MatrixF wq(o, i);
  for (Eigen::Index r = 0; r < o; ++r)
    for (Eigen::Index c = 0; c < i; ++c)
      wq(r, c) =
          static_cast<float>(t.codes[static_cast<std::size_t>(r * i + c)]) * t.scales[static_cast<std::size_t>(r)];
  return to_original_basis(std::move(wq), t.perm, t.r_in, t.r_out);
}

MatrixF runtime_quantized_original_basis(const WeightView& w, const NpzLayer& npz, int wbits) {
  LayerTransform t;
  if (npz.has_perm) {
    t.perm = npz.perm;
  } else {
    t.perm.resize(static_cast<std::size_t>(w.cols));
    for (std::int64_t k = 0; k < w.cols; ++k) t.perm[static_cast<std::size_t>(k)] = k;
  }
  for (const auto& [b, r] : npz.r_in) t.r_in.push_back(r);
  for (const auto& [b, r] : npz.r_out) t.r_out.push_back(r);
  MatrixF w_t = apply_input_transform(w, t, npz.meta.block_size);
  apply_output_rotation(w_t, t, npz.meta.block_out_size);
  const QuantizedRows q = quantize_rows(w_t, wbits);
  for (Eigen::Index r = 0; r < w_t.rows(); ++r)
    for (Eigen::Index c = 0; c < w_t.cols(); ++c)
      w_t(r, c) = static_cast<float>(q.codes[static_cast<std::size_t>(r * w_t.cols() + c)]) *
                  q.scales[static_cast<std::size_t>(r)];
  std::vector<std::int64_t> perm = npz.has_perm ? npz.perm : std::vector<std::int64_t>{};
  return to_original_basis(std::move(w_t), perm, t.r_in, t.r_out);
}

}  // namespace duquant

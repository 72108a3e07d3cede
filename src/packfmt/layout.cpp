#include "packfmt/layout.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <unordered_map>

#include "config/config_json.hpp"
#include "duquant/error.hpp"
#include "formats/npy.hpp"
#include "formats/npz.hpp"
#include "formats/strict_json.hpp"
#include "math/conformance.hpp"

namespace duquant {
namespace {

using formats::TensorSpec;

// The length of the UTF-8 sequence at s[i], 1 for ASCII and for a byte that starts no valid sequence.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  const std::size_t n = c < 0xc2 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : c < 0xf5 ? 4 : 1;
  if (n == 1 || i + n > s.size()) return 1;
  const std::optional<std::size_t> bad = formats::invalid_utf8_offset(s.substr(i, n));
  return bad ? 1 : n;
}

}  // namespace

std::string pack_file_name(std::string_view module) {
  std::string s;
  s.reserve(module.size() + 4);
  // Per character, as the runtime's Python str: a non-ASCII character (several UTF-8 bytes) is one '_'.
  for (std::size_t i = 0; i < module.size();) {
    const char c = module[i];
    const bool keep =
        (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
    s += keep ? c : '_';
    i += utf8_sequence_length(module, i);
  }
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    if (s[i] == '.' && i + 1 < s.size() && s[i + 1] == '.') {
      out += '.';
      i += 2;
    } else {
      out += s[i++];
    }
  }
  return out + ".npz";
}

std::vector<PackFileCollision> pack_file_collisions(const std::vector<std::string>& layers) {
  std::vector<PackFileCollision> out;
  std::unordered_map<std::string, const std::string*> owner;  // file name -> first layer
  for (const std::string& l : layers) {
    std::string file = pack_file_name(l);
    const auto [it, fresh] = owner.emplace(file, &l);
    if (!fresh && *it->second != l) out.push_back({*it->second, l, std::move(file)});
  }
  return out;
}

std::string describe(const PackFileCollision& c) {
  return fmt::format("layers '{}' and '{}' both map to the npz file '{}'", c.first, c.second, c.file);
}

void check_pack_file_names(const std::vector<std::string>& layers, const std::string& what) {
  const auto collisions = pack_file_collisions(layers);
  if (collisions.empty()) return;
  fail(ErrorKind::format,
       "{}: {} (the runtime's file name: characters outside [A-Za-z0-9_.-] become '_', then '..' becomes '.'), so "
       "the runtime could load only one of them{}; leave all but one out of the selection (--exclude, --layers or "
       "--scope); nothing was written",
       what, describe(collisions.front()),
       collisions.size() > 1 ? fmt::format(" ({} more such pairs)", collisions.size() - 1) : std::string());
}

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";  // what json.dumps writes
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string pack_meta_json(std::uint64_t in_features, std::uint64_t out_features, const QuantConfig& q) {
  return fmt::format(
      "{{\"in_features\": {}, \"out_features\": {}, \"block_size\": {}, \"block_out_size\": {}, "
      "\"enable_permute\": {}, \"lambda_smooth\": {}}}",
      in_features, out_features, q.block, q.block_out, q.permute ? "true" : "false",
      python_float_repr(q.lambda_smooth));
}

std::string quantized_shard_name(int i, int n) { return fmt::format("quantized-{:05d}-of-{:05d}.safetensors", i, n); }

std::map<std::string, std::string> quantized_metadata() {
  return {{"format", "pt"},
          {"duquant.format", std::string(kPackFormatName)},
          {"duquant.format_version", std::to_string(kPackFormatVersion)}};
}

LayerLayout layer_layout(const LinearLayer& l, int wbits, bool act_scale, bool smooth_scale) {
  LayerLayout out;
  out.name = l.name;
  out.out_features = l.out_features;
  out.in_features = l.in_features;
  out.dtype = l.weight->dtype;
  out.wbits = wbits;
  if (l.bias) out.bias = l.bias->dtype;
  out.act_scale = act_scale;
  out.smooth_scale = smooth_scale;
  return out;
}

std::vector<TensorSpec> layer_tensor_specs(const LayerLayout& l, const QuantConfig& q) {
  using formats::DType;
  const std::uint64_t o = l.out_features, i = l.in_features;
  const CodeStorage codes = code_storage(l.wbits);
  std::vector<TensorSpec> t;
  t.push_back({l.name + ".qweight", codes.dtype, {o, codes.row_bytes(i)}});
  t.push_back({l.name + ".scales", DType::F32, {o}});
  if (q.permute) t.push_back({l.name + ".perm", DType::I64, {i}});
  const auto b = static_cast<std::uint64_t>(q.block), bo = static_cast<std::uint64_t>(q.block_out);
  t.push_back({l.name + ".R_in", DType::F32, {(i + b - 1) / b, b, b}});
  if (q.row_rot != RowRot::off) t.push_back({l.name + ".R_out", DType::F32, {(o + bo - 1) / bo, bo, bo}});
  if (l.bias) t.push_back({l.name + ".bias", *l.bias, {o}});
  const auto n = static_cast<std::uint64_t>(kConformanceRows);
  static_assert(std::size(kConformanceTensors) == 3);
  t.push_back({fmt::format("{}.{}", l.name, kConformanceTensors[0]), DType::F32, {n, i}});  // test_x
  t.push_back({fmt::format("{}.{}", l.name, kConformanceTensors[1]), DType::F32, {n, o}});  // test_y_fp
  t.push_back({fmt::format("{}.{}", l.name, kConformanceTensors[2]), DType::F32, {n, o}});  // test_y_q
  if (l.act_scale) t.push_back({l.name + ".act_scale", DType::F32, {i}});
  if (l.smooth_scale) t.push_back({l.name + ".smooth_scale", DType::F32, {i}});
  return t;
}

bool is_conformance_tensor(const TensorSpec& tensor, const LayerLayout& layer) {
  const std::string_view name = tensor.name;
  if (name.size() <= layer.name.size() + 1 || name.substr(0, layer.name.size()) != layer.name ||
      name[layer.name.size()] != '.')
    return false;
  const std::string_view part = name.substr(layer.name.size() + 1);
  return std::find(std::begin(kConformanceTensors), std::end(kConformanceTensors), part) !=
         std::end(kConformanceTensors);
}

std::vector<TensorSpec> layer_tensor_specs(const LinearLayer& layer, int wbits, const QuantConfig& q, bool act_scale,
                                           bool smooth_scale) {
  return layer_tensor_specs(layer_layout(layer, wbits, act_scale, smooth_scale), q);
}

std::uint64_t layer_tensor_bytes(const LayerLayout& layer, const QuantConfig& q) {
  std::uint64_t n = 0;
  for (const TensorSpec& t : layer_tensor_specs(layer, q)) n += t.nbytes();
  return n;
}

std::vector<NpzMemberSpec> layer_npz_members(const LayerLayout& l, const QuantConfig& q) {
  const std::uint64_t o = l.out_features, i = l.in_features;
  std::vector<NpzMemberSpec> m;
  m.push_back({"weight_scale", "<f4", {o}, 4 * o});
  // A 0-d unicode scalar of the meta text's code points (ASCII: one per byte), 4 bytes each.
  const std::uint64_t meta = std::max<std::uint64_t>(pack_meta_json(i, o, q).size(), 1);
  m.push_back({"meta", fmt::format("<U{}", meta), {}, 4 * meta});
  if (q.permute) m.push_back({"perm", "<i8", {i}, 8 * i});
  // Square blocks over `n`, the last one shorter; then the list of their indices.
  auto blocks = [&](std::string_view prefix, std::string_view list, std::uint64_t n, std::uint64_t b) {
    std::uint64_t count = 0;
    for (std::uint64_t at = 0; at < n; at += b, ++count) {
      const std::uint64_t s = std::min(b, n - at);
      m.push_back({fmt::format("{}{}", prefix, count), "<f4", {s, s}, 4 * s * s});
    }
    m.push_back({std::string(list), "<i8", {count}, 8 * count});
  };
  blocks("Rin_", "R_in_blocks", i, static_cast<std::uint64_t>(q.block));
  blocks("Rout_", "R_out_blocks", q.row_rot != RowRot::off ? o : 0, static_cast<std::uint64_t>(q.block_out));
  if (l.act_scale) m.push_back({"act_scale", "<f4", {i}, 4 * i});
  if (l.smooth_scale) m.push_back({"smooth_scale", "<f4", {i}, 4 * i});
  return m;
}

std::uint64_t layer_npz_bytes(const LayerLayout& layer, const QuantConfig& q) {
  std::vector<std::pair<std::string, std::uint64_t>> members;
  for (NpzMemberSpec& m : layer_npz_members(layer, q))
    members.emplace_back(std::move(m.key), formats::npy_size(m.descr, m.shape, m.data_bytes));
  return formats::npz_size(members);
}

PackSize pack_size(const std::vector<LayerLayout>& layers, const RunConfig& config,
                   const ManifestCheckpoint& checkpoint) {
  PackSize s;
  std::vector<TensorSpec> specs;
  for (const LayerLayout& l : layers) {
    std::uint64_t tensors = 0;
    for (TensorSpec& t : layer_tensor_specs(l, config.quant)) {
      tensors += t.nbytes();
      specs.push_back(std::move(t));
    }
    const std::uint64_t npz = layer_npz_bytes(l, config.quant);
    s.layer_tensor_bytes.push_back(tensors);
    s.layer_npz_bytes.push_back(npz);
    s.tensor_bytes += tensors;
    s.npz_bytes += npz;
  }
  s.safetensors_bytes = formats::safetensors_header_bytes(specs, quantized_metadata()).size() + s.tensor_bytes;
  s.manifest_bytes = manifest_bytes_estimate(layers, s, config, checkpoint);
  return s;
}

std::uint64_t manifest_bytes_estimate(const std::vector<LayerLayout>& layers, const PackSize& sizes,
                                      const RunConfig& config, const ManifestCheckpoint& checkpoint) {
  using json = nlohmann::json;
  const QuantConfig& q = config.quant;
  const std::string digest(32, '0');  // XXH3-128 in hex: always 32 digits
  // Each figure is written as null (4 characters) and counted as kManifestFigureChars.
  const json figure = nullptr;
  json m;
  m["format"] = kPackFormatName;
  m["format_version"] = kPackFormatVersion;
  m["tool"] = {{"name", "duquant"}, {"version", DUQUANT_VERSION}, {"cpu_level", "avx512"}};
  m["config"] = config_json(config);
  json ck;
  ck["source"] = checkpoint.source;
  ck["files"] = json::array();
  for (const ManifestCheckpoint::File& f : checkpoint.files)
    ck["files"].push_back({{"name", f.name}, {"size", f.size}, {"header_bytes", f.header_bytes}});
  ck["names"] = checkpoint.names;
  m["checkpoint"] = ck;
  m["files"] = json::array();
  m["files"].push_back({{"name", kQuantizedName}, {"size", sizes.safetensors_bytes}, {"xxh128", digest}});
  m["calibration"] = nullptr;
  m["smoothing"] = nullptr;
  json entries = json::array();
  for (std::size_t k = 0; k < layers.size(); ++k) {
    const LayerLayout& l = layers[k];
    json e;
    e["name"] = l.name;
    e["shape"] = {l.out_features, l.in_features};
    e["dtype"] = formats::dtype_name(l.dtype);
    e["wbits"] = l.wbits;
    e["abits"] = q.abits;
    e["block"] = q.block;
    e["block_out"] = q.block_out;
    e["bias"] = l.bias.has_value();
    e["weight_xxh128"] = digest;
    e["npz"] = {{"name", pack_file_name(l.name)}, {"size", sizes.layer_npz_bytes.at(k)}, {"xxh128", digest}};
    e["quantized"] = {{"shard", kQuantizedName}, {"bytes", sizes.layer_tensor_bytes.at(k)}, {"xxh128", digest}};
    e["quality"] = {{"duquant", {{"rel_fro_error", figure}, {"sqnr_db", figure}}},
                    {"rtn", {{"rel_fro_error", figure}, {"sqnr_db", figure}}}};
    e["conformance"] = {{"rows", kConformanceRows}, {"rel_error_q_vs_fp", figure}};
    e["calibration"] = nullptr;
    e["smoothing"] = nullptr;
    entries.push_back(std::move(e));
  }
  m["layers"] = std::move(entries);
  const std::uint64_t text = formats::dump_json(m, 2).size() + 1;  // and the final newline
  return text + layers.size() * kManifestFiguresPerLayer * (kManifestFigureChars - 4);
}

}  // namespace duquant

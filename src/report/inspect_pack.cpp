// inspect: reading a pack directory's manifest.json (with packfmt's reader, manifest.hpp) or, for a
// pack the Python runtime wrote, the meta of each npz, into a PackReport. Every type is checked;
// nothing from nlohmann escapes.
#include <fmt/format.h>

#include <algorithm>
#include <map>

#include "duquant/error.hpp"
#include "duquant/inspect.hpp"
#include "formats/dtype.hpp"
#include "formats/npz.hpp"
#include "formats/strict_json.hpp"
#include "packfmt/layout.hpp"
#include "packfmt/manifest.hpp"
#include "select/module_order.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Typed access to one JSON object, with messages naming the file and the place inside it.
struct Fields {
  const json& obj;
  std::string where;  // "pack/manifest.json: layers[3] ('name')"

  const json* find(const char* key) const {
    const auto it = obj.find(key);
    return it == obj.end() ? nullptr : &*it;
  }
  const json& at(const char* key) const {
    const json* v = find(key);
    DQ_CHECK(v != nullptr, format, "{}: missing \"{}\"", where, key);
    return *v;
  }
  [[noreturn]] void wrong(const char* key, const json& v, const char* expected) const {
    fail(ErrorKind::format, "{}: \"{}\" is {}, expected {}", where, key, formats::json_kind(v), expected);
  }
  std::string str(const char* key) const {
    const json& v = at(key);
    if (!v.is_string()) wrong(key, v, "a string");
    return v.get<std::string>();
  }
  std::uint64_t u64(const char* key) const {
    const json& v = at(key);
    if (!v.is_number_unsigned()) wrong(key, v, "a non-negative integer");
    return v.get<std::uint64_t>();
  }
  std::int64_t int_in(const char* key, std::int64_t lo, std::int64_t hi) const {
    const json& v = at(key);
    if (!v.is_number_integer()) wrong(key, v, "an integer");
    const auto x = v.get<std::int64_t>();
    DQ_CHECK(x >= lo && x <= hi, format, "{}: \"{}\" is {}, outside {}..{}", where, key, x, lo, hi);
    return x;
  }
  bool boolean(const char* key) const {
    const json& v = at(key);
    if (!v.is_boolean()) wrong(key, v, "true or false");
    return v.get<bool>();
  }
  double number(const char* key) const {
    const json& v = at(key);
    if (!v.is_number()) wrong(key, v, "a number");
    return v.get<double>();
  }
  Fields object(const char* key) const {
    const json& v = at(key);
    if (!v.is_object()) wrong(key, v, "an object");
    return Fields{v, fmt::format("{}.{}", where, key)};
  }
};

std::optional<Quality> quality_of(std::optional<double> rel, std::optional<double> sqnr, const std::string& where) {
  // parse_manifest has checked the pair: both null (an exact layer written without a figure) or consistent.
  DQ_CHECK(rel.has_value(), format, "{}: \"rel_fro_error\" is null, expected a number", where);
  return Quality{*rel, sqnr};
}

std::uint64_t dtype_bytes(const std::string& name) {
  return (formats::dtype_bits(*formats::parse_dtype(name)) + 7) / 8;  // parse_manifest checked the name
}

// The manifest, read and checked by packfmt's one reader (manifest.hpp), as inspect shows it.
void read_manifest(const fs::path& dir, PackReport& r) {
  const fs::path path = dir / kManifestName;
  const std::string file = path.string();
  const json j = read_manifest_json(path);
  const Manifest m = parse_manifest(j, file);
  if (!m.tool_name.empty()) r.tool = fmt::format("{} {}", m.tool_name, m.tool_version);
  r.config = formats::to_ordered_json(j.at("config"));  // keeps the keys; order as nlohmann sorts
  r.checkpoint_source = m.checkpoint_source;
  if (m.imported) {
    r.imported_from = m.imported->source;
    for (const auto& s : m.imported->skipped) r.import_skipped.push_back(s.first);
  }
  for (const ManifestFile& f : m.files)
    if (f.name.rfind("quantized", 0) == 0) r.quantized_file_bytes += f.size;
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    const ManifestLayer& e = m.layers[i];
    const std::string where = fmt::format("{}: layers[{}] '{}'", file, i, e.name);
    DQ_CHECK(!e.name.empty(), format, "{}: layers[{}]: empty layer name", file, i);
    DQ_CHECK(e.out_features <= kMaxLayerShape && e.in_features <= kMaxLayerShape, format,
             "{}: shape [{}, {}] is out of range", where, e.out_features, e.in_features);
    PackLayerInfo l;
    l.name = e.name;
    l.group = layer_group(l.name);
    l.block_type = block_type(l.name);
    l.out_features = e.out_features;
    l.in_features = e.in_features;
    l.dtype = e.dtype;
    l.wbits = e.wbits;
    l.abits = e.abits;
    l.block = e.block;
    l.block_out = e.block_out;
    l.bias = e.bias;
    l.bytes_in = dtype_bytes(l.dtype) * l.out_features * (l.in_features + (l.bias ? 1 : 0));
    l.weight_xxh128 = e.weight_xxh128;
    l.npz = e.npz.name;
    l.npz_bytes = e.npz.size;
    l.packed_bytes = e.quantized_bytes;
    l.duquant = quality_of(e.duquant_rel_error, e.duquant_sqnr_db, where + ": quality.duquant");
    l.rtn = quality_of(e.rtn_rel_error, e.rtn_sqnr_db, where + ": quality.rtn");
    l.calibrated = e.calibrated;
    l.output_rel_error = e.output_rel_error;
    l.smoothed = e.smoothed;
    l.permute = m.config.quant.permute;
    l.lambda_smooth = m.config.quant.lambda_smooth;
    r.layers.push_back(std::move(l));
  }
}

void read_npz_only(const fs::path& dir, PackReport& r) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".npz") == 0 && n[0] != '.') names.push_back(n);
  }
  DQ_CHECK(!ec, io, "{}: cannot list the folder: {}", dir.string(), ec.message());
  std::sort(names.begin(), names.end());
  for (const std::string& n : names) {
    const fs::path path = dir / n;
    const std::string label = path.string();
    const formats::NpzFile npz = formats::NpzFile::open(path);
    const std::string text = formats::npy_unicode_to_utf8(npz.at("meta"), fmt::format("{}: meta", label));
    const json meta = formats::parse_strict_json(text, fmt::format("{}: meta", label), kMaxMetaDepthRuntimePack);
    DQ_CHECK(meta.is_object(), format, "{}: meta is {}, expected an object", label, formats::json_kind(meta));
    const Fields f{meta, fmt::format("{}: meta", label)};
    PackLayerInfo l;
    l.name = n.substr(0, n.size() - 4);
    l.group = layer_group(l.name);
    l.block_type = block_type(l.name);
    l.npz = n;
    l.npz_bytes = fs::file_size(path, ec);
    DQ_CHECK(!ec, io, "{}: cannot read the size: {}", label, ec.message());
    l.in_features = f.u64("in_features");
    l.out_features = f.u64("out_features");
    DQ_CHECK(
        l.out_features > 0 && l.in_features > 0 && l.out_features <= kMaxLayerShape && l.in_features <= kMaxLayerShape,
        format, "{}: shape [{}, {}] is out of range", f.where, l.out_features, l.in_features);
    l.block = f.int_in("block_size", 1, kMaxMetaBlock);
    l.block_out = f.int_in("block_out_size", 1, kMaxMetaBlock);
    l.permute = f.boolean("enable_permute");
    l.lambda_smooth = f.number("lambda_smooth");
    r.layers.push_back(std::move(l));
  }
  r.notes.push_back(
      "no manifest.json: a pack written by the Python runtime. Quality figures need our manifest "
      "(pack the checkpoint with `duquant pack`), or give --checkpoint for per-head error.");
}

// Worst DuQuant SQNR first; exact layers (null SQNR) and layers without figures last.
bool worse_first(const PackLayerInfo& a, const PackLayerInfo& b) {
  auto rank = [](const PackLayerInfo& l) { return !l.duquant ? 2 : l.duquant->sqnr_db ? 0 : 1; };
  if (rank(a) != rank(b)) return rank(a) < rank(b);
  if (rank(a) == 0 && *a.duquant->sqnr_db != *b.duquant->sqnr_db) return *a.duquant->sqnr_db < *b.duquant->sqnr_db;
  return a.name < b.name;
}

}  // namespace

bool looks_like_pack(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return false;
  if (fs::exists(path / kManifestName, ec)) return true;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() > 4 && n.compare(n.size() - 4, 4, ".npz") == 0) return true;
  }
  return false;
}

PackReport inspect_pack(const fs::path& dir) {
  std::error_code ec;
  DQ_CHECK(fs::is_directory(dir, ec), io, "{}: not a readable directory", dir.string());
  PackReport r;
  r.path = dir.string();
  try {
    // Present even as a dangling link, a loop or a FIFO: the reader then refuses it, named (io).
    r.has_manifest = fs::symlink_status(dir / kManifestName, ec).type() != fs::file_type::not_found;
    if (r.has_manifest)
      read_manifest(dir, r);
    else
      read_npz_only(dir, r);
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorKind::format, "{}: unexpected manifest content: {}", dir.string(), e.what());
  } catch (const fs::filesystem_error& e) {
    fail(ErrorKind::io, "{}: {}", dir.string(), e.what());
  }
  DQ_CHECK(!r.layers.empty(), format, "{}: the pack lists no layers",
           (r.has_manifest ? dir / kManifestName : dir).string());
  std::vector<std::string> listed;  // the manifest's order (the pack's: module order), or the npz files'
  for (const PackLayerInfo& l : r.layers) listed.push_back(l.name);
  std::stable_sort(r.layers.begin(), r.layers.end(), worse_first);
  std::map<std::string, std::size_t> sorted_at;
  for (std::size_t i = 0; i < r.layers.size(); ++i) sorted_at.emplace(r.layers[i].name, i);
  for (const std::size_t i : module_order(listed)) r.model_order.push_back(sorted_at.at(listed[i]));
  return r;
}

void add_block_out_warnings(PackReport& r, const HeadDims& dims) {
  for (const PackLayerInfo& l : r.layers) {
    const auto hd = dims.of(l.name);
    if (!hd || head_axis(l.name) != HeadAxis::rows || l.block_out <= 0) continue;
    const bool row_rot_off = r.config.contains("row_rot") && r.config["row_rot"] == "0";
    if (!row_rot_off && *hd % l.block_out != 0)
      r.warnings.push_back(
          fmt::format("{}: block_out {} does not divide head_dim {}: its output rotations mix rows "
                      "of two heads",
                      l.name, l.block_out, *hd));
  }
}

}  // namespace duquant

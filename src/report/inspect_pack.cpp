// inspect: reading a pack directory's manifest.json (or, for a pack the Python runtime wrote, the
// meta of each npz) into a PackReport. Every type is checked; nothing from nlohmann escapes.
#include <fmt/format.h>

#include <algorithm>

#include "duquant/error.hpp"
#include "duquant/inspect.hpp"
#include "packfmt/pack_layout.hpp"
#include "formats/dtype.hpp"
#include "formats/mapped_file.hpp"
#include "formats/npz.hpp"
#include "formats/strict_json.hpp"

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

Quality read_quality(const Fields& q) {
  Quality out;
  out.rel_fro_error = q.number("rel_fro_error");
  DQ_CHECK(out.rel_fro_error >= 0, format, "{}: rel_fro_error {} is negative", q.where, out.rel_fro_error);
  const json& s = q.at("sqnr_db");
  if (!s.is_null()) {
    if (!s.is_number()) q.wrong("sqnr_db", s, "a number or null");
    out.sqnr_db = s.get<double>();
  }
  return out;
}

std::uint64_t dtype_bytes(const std::string& name, const std::string& where) {
  const auto dt = formats::parse_dtype(name);
  DQ_CHECK(dt.has_value(), format, "{}: unknown dtype '{}'", where, name);
  return (formats::dtype_bits(*dt) + 7) / 8;
}

PackLayerInfo read_manifest_layer(const json& entry, std::size_t index, const std::string& file,
                                  const PackReport& report) {
  Fields f{entry, fmt::format("{}: layers[{}]", file, index)};
  DQ_CHECK(entry.is_object(), format, "{} is {}, expected an object", f.where, formats::json_kind(entry));
  PackLayerInfo l;
  l.name = f.str("name");
  DQ_CHECK(!l.name.empty(), format, "{}: empty layer name", f.where);
  f.where = fmt::format("{}: layers[{}] '{}'", file, index, l.name);
  l.group = layer_group(l.name);
  l.block_type = block_type(l.name);
  const json& shape = f.at("shape");
  if (!shape.is_array() || shape.size() != 2 || !shape[0].is_number_unsigned() || !shape[1].is_number_unsigned())
    fail(ErrorKind::format, "{}: \"shape\" is {}, expected [out, in] of non-negative integers", f.where,
         formats::json_kind(shape));
  l.out_features = shape[0].get<std::uint64_t>();
  l.in_features = shape[1].get<std::uint64_t>();
  DQ_CHECK(l.out_features > 0 && l.in_features > 0 && l.out_features <= (1ull << 24) && l.in_features <= (1ull << 24),
           format, "{}: shape [{}, {}] is out of range", f.where, l.out_features, l.in_features);
  l.dtype = f.str("dtype");
  l.wbits = static_cast<int>(f.int_in("wbits", 2, 8));
  l.abits = static_cast<int>(f.int_in("abits", 2, 16));
  l.block = f.int_in("block", 1, 4096);
  l.block_out = f.int_in("block_out", 1, 4096);
  l.bias = f.boolean("bias");
  const std::uint64_t elem = dtype_bytes(l.dtype, f.where);
  l.bytes_in = elem * l.out_features * (l.in_features + (l.bias ? 1 : 0));
  if (f.find("weight_xxh128")) l.weight_xxh128 = f.str("weight_xxh128");
  if (f.find("npz")) {
    const Fields npz = f.object("npz");
    l.npz = npz.str("name");
    l.npz_bytes = npz.u64("size");
  }
  l.packed_bytes = f.object("quantized").u64("bytes");
  if (f.find("quality")) {
    const Fields q = f.object("quality");
    l.duquant = read_quality(q.object("duquant"));
    l.rtn = read_quality(q.object("rtn"));
  }
  if (const json* c = f.find("calibration"); c != nullptr && !c->is_null()) {
    if (!c->is_object()) f.wrong("calibration", *c, "an object or null");
    l.calibrated = true;
    const auto e = c->find("output_rel_error");
    if (e != c->end() && e->is_number()) l.output_rel_error = e->get<double>();
  }
  if (const json* sm = f.find("smoothing"); sm != nullptr && !sm->is_null()) l.smoothed = true;
  const json& config = report.config;
  if (const auto p = config.find("permute"); p != config.end() && p->is_boolean()) l.permute = p->get<bool>();
  if (const auto s = config.find("lambda_smooth"); s != config.end() && s->is_number()) l.lambda_smooth = s->get<double>();
  return l;
}

void read_manifest(const fs::path& dir, PackReport& r) {
  const fs::path path = dir / kManifestName;
  const std::string file = path.string();
  const formats::MappedFile map = formats::MappedFile::open(path);
  const auto bytes = map.bytes();
  const json m = formats::parse_strict_json(
      std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), file, 64);
  DQ_CHECK(m.is_object(), format, "{}: the manifest is {}, expected an object", file, formats::json_kind(m));
  const Fields top{m, file};
  const std::string format = top.str("format");
  DQ_CHECK(format == kPackFormatName, format, "{}: \"format\" is '{}', expected '{}'", file, format, kPackFormatName);
  const std::int64_t version = top.int_in("format_version", 0, 1'000'000);
  DQ_CHECK(version == kPackFormatVersion, format, "{}: format_version {} is not the version this duquant reads ({})",
           file, version, kPackFormatVersion);
  if (top.find("tool")) {
    const Fields tool = top.object("tool");
    r.tool = fmt::format("{} {}", tool.str("name"), tool.str("version"));
  }
  top.object("config");
  r.config = formats::to_ordered_json(m.at("config"));  // keeps the keys; order as nlohmann sorts
  if (top.find("checkpoint")) {
    const Fields ck = top.object("checkpoint");
    if (ck.find("source")) r.checkpoint_source = ck.str("source");
  }
  if (top.find("files")) {
    const json& files = top.at("files");
    if (!files.is_array()) top.wrong("files", files, "an array");
    for (std::size_t i = 0; i < files.size(); ++i) {
      DQ_CHECK(files[i].is_object(), format, "{}: files[{}] is {}, expected an object", file, i,
               formats::json_kind(files[i]));
      const Fields f{files[i], fmt::format("{}: files[{}]", file, i)};
      const std::string name = f.str("name");
      if (name.rfind("quantized", 0) == 0) r.quantized_file_bytes += f.u64("size");
    }
  }
  const json& layers = top.at("layers");
  if (!layers.is_array()) top.wrong("layers", layers, "an array");
  for (std::size_t i = 0; i < layers.size(); ++i) r.layers.push_back(read_manifest_layer(layers[i], i, file, r));
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
    const json meta = formats::parse_strict_json(text, fmt::format("{}: meta", label), 8);
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
    DQ_CHECK(l.out_features > 0 && l.in_features > 0 && l.out_features <= (1ull << 24) && l.in_features <= (1ull << 24),
             format, "{}: shape [{}, {}] is out of range", f.where, l.out_features, l.in_features);
    l.block = f.int_in("block_size", 1, 1 << 20);
    l.block_out = f.int_in("block_out_size", 1, 1 << 20);
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
    if (r.has_manifest) read_manifest(dir, r);
    else read_npz_only(dir, r);
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorKind::format, "{}: unexpected manifest content: {}", dir.string(), e.what());
  } catch (const fs::filesystem_error& e) {
    fail(ErrorKind::io, "{}: {}", dir.string(), e.what());
  }
  DQ_CHECK(!r.layers.empty(), format, "{}: the pack lists no layers",
           (r.has_manifest ? dir / kManifestName : dir).string());
  std::stable_sort(r.layers.begin(), r.layers.end(), worse_first);
  return r;
}

void add_block_out_warnings(PackReport& r, const HeadDims& dims) {
  for (const PackLayerInfo& l : r.layers) {
    const auto hd = dims.of(l.name);
    if (!hd || head_axis(l.name) != HeadAxis::rows || l.block_out <= 0) continue;
    const bool row_rot_off = r.config.contains("row_rot") && r.config["row_rot"] == "0";
    if (!row_rot_off && *hd % l.block_out != 0)
      r.warnings.push_back(fmt::format("{}: block_out {} does not divide head_dim {}: its output rotations mix rows "
                                       "of two heads",
                                       l.name, l.block_out, *hd));
  }
}

}  // namespace duquant

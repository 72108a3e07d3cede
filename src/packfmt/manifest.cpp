#include "packfmt/manifest.hpp"

#include <fmt/format.h>

#include <cmath>
#include <tuple>

#include "base/regex.hpp"
#include "duquant/error.hpp"
#include "formats/dtype.hpp"
#include "formats/regular_file.hpp"
#include "formats/strict_json.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace {

using json = nlohmann::json;

// Field access with a path for messages.
struct Reader {
  const std::string& label;

  const json& field(const json& obj, const std::string& path, const char* key) const {
    DQ_CHECK(obj.is_object(), format, "{}: {}: expected an object, found {}", label, path, formats::json_kind(obj));
    DQ_CHECK(obj.contains(key), format, "{}: {}: no field '{}'", label, path, key);
    return obj.at(key);
  }
  std::string text(const json& obj, const std::string& path, const char* key) const {
    const json& v = field(obj, path, key);
    DQ_CHECK(v.is_string(), format, "{}: {}.{}: expected a string, found {}", label, path, key, formats::json_kind(v));
    return v.get<std::string>();
  }
  std::uint64_t count(const json& obj, const std::string& path, const char* key, std::uint64_t min = 0) const {
    const json& v = field(obj, path, key);
    DQ_CHECK(v.is_number_unsigned() && v.get<std::uint64_t>() >= min, format,
             "{}: {}.{}: expected an integer >= {}, found {}", label, path, key, min, formats::dump_json(v));
    return v.get<std::uint64_t>();
  }
  int small_int(const json& obj, const std::string& path, const char* key, int min, int max) const {
    const json& v = field(obj, path, key);
    DQ_CHECK(v.is_number_integer() && v.get<std::int64_t>() >= min && v.get<std::int64_t>() <= max, format,
             "{}: {}.{}: expected an integer in [{}, {}], found {}", label, path, key, min, max, formats::dump_json(v));
    return static_cast<int>(v.get<std::int64_t>());
  }
  bool flag(const json& obj, const std::string& path, const char* key) const {
    const json& v = field(obj, path, key);
    DQ_CHECK(v.is_boolean(), format, "{}: {}.{}: expected true or false, found {}", label, path, key,
             formats::dump_json(v));
    return v.get<bool>();
  }
  double number(const json& obj, const std::string& path, const char* key) const {
    const json& v = field(obj, path, key);
    DQ_CHECK(v.is_number(), format, "{}: {}.{}: expected a number, found {}", label, path, key, formats::json_kind(v));
    return v.get<double>();
  }
  std::optional<double> optional_number(const json& obj, const std::string& path, const char* key) const {
    const json& v = field(obj, path, key);
    if (v.is_null()) return std::nullopt;
    DQ_CHECK(v.is_number(), format, "{}: {}.{}: expected a number or null, found {}", label, path, key,
             formats::json_kind(v));
    return v.get<double>();
  }
  const json& array(const json& obj, const std::string& path, const char* key) const {
    const json& v = field(obj, path, key);
    DQ_CHECK(v.is_array(), format, "{}: {}.{}: expected an array, found {}", label, path, key, formats::json_kind(v));
    return v;
  }
  std::string digest(const json& obj, const std::string& path, const char* key) const {
    const std::string d = text(obj, path, key);
    DQ_CHECK(d.size() == 32 && d.find_first_not_of("0123456789abcdef") == std::string::npos, format,
             "{}: {}.{}: expected 32 lowercase hex digits, found '{}'", label, path, key, d);
    return d;
  }
};

RunConfig read_config(const Reader& r, const json& c) {
  const std::string p = "config";
  RunConfig config;
  const std::string runtime = r.text(c, p, "runtime");
  DQ_CHECK(runtime == "openpi" || runtime == "gr00t", format,
           "{}: config.runtime: expected openpi or gr00t, found '{}'", r.label, runtime);
  config.runtime = runtime == "gr00t" ? Runtime::gr00t : Runtime::openpi;
  const json& preset = r.field(c, p, "preset");
  DQ_CHECK(preset.is_null() || preset.is_string(), format, "{}: config.preset: expected a string or null", r.label);
  if (preset.is_string()) config.preset = preset.get<std::string>();
  SelectionConfig& s = config.selection;
  s.scope = r.text(c, p, "scope");
  s.include = r.text(c, p, "include");
  s.exclude = r.text(c, p, "exclude");
  for (const json& v : r.array(c, p, "layers")) {
    DQ_CHECK(v.is_string(), format, "{}: config.layers: expected strings, found {}", r.label, formats::json_kind(v));
    s.layers.push_back(v.get<std::string>());
  }
  s.include_action_head = r.flag(c, p, "include_action_head");
  QuantConfig& q = config.quant;
  q.wbits_default = r.small_int(c, p, "wbits_default", kMinWeightBits, kMaxWeightBits);
  const json& wbits = r.field(c, p, "wbits");
  DQ_CHECK(wbits.is_object(), format, "{}: config.wbits: expected an object", r.label);
  for (const auto& [name, bits] : wbits.items()) {
    DQ_CHECK(bits.is_number_integer() && bits.get<std::int64_t>() >= kMinWeightBits &&
                 bits.get<std::int64_t>() <= kMaxWeightBits,
             format, "{}: config.wbits['{}']: expected bits in [{}, {}], found {}", r.label, name, kMinWeightBits,
             kMaxWeightBits, formats::dump_json(bits));
    s.wbits.emplace_back(name, static_cast<int>(bits.get<std::int64_t>()));
  }
  std::size_t k = 0;
  for (const json& rule : r.array(c, p, "wbits_rules")) {
    const std::string rp = fmt::format("config.wbits_rules[{}]", k++);
    s.wbits_rules.emplace_back(r.text(rule, rp, "pattern"),
                               r.small_int(rule, rp, "bits", kMinWeightBits, kMaxWeightBits));
  }
  q.abits = r.small_int(c, p, "abits", kMinActivationBits, kMaxActivationBits);
  q.block = r.small_int(c, p, "block", 1, kMaxBlock);
  q.block_out = r.small_int(c, p, "block_out", 1, kMaxBlock);
  q.permute = r.flag(c, p, "permute");
  const std::string row_rot = r.text(c, p, "row_rot");
  DQ_CHECK(row_rot == "restore" || row_rot == "0" || row_rot == "propagate", format,
           "{}: config.row_rot: expected restore, 0 or propagate, found '{}'", r.label, row_rot);
  q.row_rot = row_rot == "restore" ? RowRot::restore : row_rot == "0" ? RowRot::off : RowRot::propagate;
  q.lambda_smooth = r.number(c, p, "lambda_smooth");
  DQ_CHECK(q.lambda_smooth >= 0 && q.lambda_smooth <= 1, format, "{}: config.lambda_smooth: {} is outside [0, 1]",
           r.label, q.lambda_smooth);
  q.act_pct = r.number(c, p, "act_pct");
  DQ_CHECK(q.act_pct > 0 && q.act_pct <= 100, format, "{}: config.act_pct: {} is outside (0, 100]", r.label, q.act_pct);
  q.calib_steps = r.small_int(c, p, "calib_steps", 1, kMaxCalibSteps);
  // Added with the naming contract: optional, absent in older manifests.
  for (const char* key : {"strip_prefix", "add_prefix"}) {
    if (!c.contains(key) || c.at(key).is_null()) continue;
    (std::string_view(key) == "strip_prefix" ? config.naming.strip_prefix : config.naming.add_prefix) =
        r.text(c, p, key);
  }
  if (c.contains("not_linear"))
    for (const json& v : r.array(c, p, "not_linear")) {
      DQ_CHECK(v.is_string(), format, "{}: config.not_linear: expected strings, found {}", r.label,
               formats::json_kind(v));
      s.not_linear.push_back(v.get<std::string>());
    }
  // Every expression must compile: a manifest whose selection cannot be run is refused naming the
  // field (format; `verify` reports it as a FAIL), not left to fail later as a usage error.
  auto compiles = [&](const std::string& pattern, const std::string& field) {
    try {
      Regex check(pattern, field);
    } catch (const Error& e) {
      fail(ErrorKind::format, "{}: {}", r.label, e.what());
    }
  };
  compiles(s.include, "config.include");
  compiles(s.exclude, "config.exclude");
  for (std::size_t i = 0; i < s.wbits_rules.size(); ++i)
    compiles(s.wbits_rules[i].first, fmt::format("config.wbits_rules[{}].pattern", i));
  for (std::size_t i = 0; i < s.not_linear.size(); ++i)
    compiles(s.not_linear[i], fmt::format("config.not_linear[{}]", i));
  return config;
}

}  // namespace

json read_manifest_json(const std::filesystem::path& path) {
  // Never blocks: a FIFO, a device or a folder is refused (io), named.
  json j =
      formats::parse_strict_json(formats::read_regular_file(path, kMaxManifestBytes), path.string(), kMaxManifestDepth);
  DQ_CHECK(j.is_object(), format, "{}: must be a JSON object, found {}", path.string(), formats::json_kind(j));
  return j;
}

Manifest parse_manifest(const json& j, const std::string& label) {
  const Reader r{label};
  Manifest m;
  const std::string format = r.text(j, "manifest", "format");
  DQ_CHECK(format == kPackFormatName, format, "{}: format: expected '{}', found '{}'", label, kPackFormatName, format);
  m.format_version = r.small_int(j, "manifest", "format_version", 0, kMaxFormatVersion);
  DQ_CHECK(m.format_version == kPackFormatVersion, format,
           "{}: format_version {} is not supported (this duquant reads {})", label, m.format_version,
           kPackFormatVersion);
  const json& tool = r.field(j, "manifest", "tool");
  m.tool_version = r.text(tool, "tool", "version");
  if (tool.contains("name")) m.tool_name = r.text(tool, "tool", "name");
  if (j.contains("algorithm")) {  // absent in manifests written before it was recorded: the CPU reference, 1
    const json& a = r.field(j, "manifest", "algorithm");
    m.algorithm = r.text(a, "algorithm", "name");
    m.algorithm_version = r.small_int(a, "algorithm", "version", 1, kMaxFormatVersion);
    DQ_CHECK(
        (m.algorithm == kAlgorithmCpu || m.algorithm == kAlgorithmCuda) && m.algorithm_version <= kAlgorithmVersion,
        format, "{}: algorithm {} version {}: this duquant knows {} and {} up to version {} (a newer duquant wrote it)",
        label, m.algorithm, m.algorithm_version, kAlgorithmCpu, kAlgorithmCuda, kAlgorithmVersion);
  }
  m.config = read_config(r, r.field(j, "manifest", "config"));
  const json& ck = r.field(j, "manifest", "checkpoint");
  m.checkpoint_source = r.text(ck, "checkpoint", "source");
  if (ck.contains("names")) m.names = names_from_json(ck.at("names"), label);
  std::size_t kf = 0;
  for (const json& f : r.array(ck, "checkpoint", "files")) {
    const std::string p = fmt::format("checkpoint.files[{}]", kf++);
    m.checkpoint_files.push_back({r.text(f, p, "name"), r.count(f, p, "size"), r.count(f, p, "header_bytes")});
  }
  if (j.contains("import") && !j.at("import").is_null()) {  // written by `duquant import`
    const json& im = r.field(j, "manifest", "import");
    ManifestImport imported;
    imported.source = r.text(im, "import", "source");
    std::size_t ks = 0;
    for (const json& s : r.array(im, "import", "skipped")) {
      const std::string p = fmt::format("import.skipped[{}]", ks++);
      imported.skipped.emplace_back(r.text(s, p, "name"), r.text(s, p, "reason"));
    }
    m.imported = std::move(imported);
  }
  std::size_t k = 0;
  for (const json& f : r.array(j, "manifest", "files")) {
    const std::string p = fmt::format("files[{}]", k++);
    m.files.push_back({r.text(f, p, "name"), r.count(f, p, "size"), r.digest(f, p, "xxh128")});
  }
  k = 0;
  for (const json& e : r.array(j, "manifest", "layers")) {
    const std::string p = fmt::format("layers[{}]", k++);
    ManifestLayer l;
    l.name = r.text(e, p, "name");
    const json& shape = r.field(e, p, "shape");
    DQ_CHECK(shape.is_array() && shape.size() == 2 && shape[0].is_number_unsigned() && shape[1].is_number_unsigned() &&
                 shape[0].get<std::uint64_t>() >= 1 && shape[1].get<std::uint64_t>() >= 1,
             format, "{}: {}.shape: expected an array of 2 integers >= 1, found {}", label, p,
             formats::dump_json(shape));
    l.out_features = shape[0].get<std::uint64_t>();
    l.in_features = shape[1].get<std::uint64_t>();
    l.dtype = r.text(e, p, "dtype");
    DQ_CHECK(formats::parse_dtype(l.dtype).has_value(), format, "{}: {}.dtype: '{}' is not a safetensors dtype", label,
             p, l.dtype);
    l.wbits = r.small_int(e, p, "wbits", kMinWeightBits, kMaxWeightBits);
    l.abits = r.small_int(e, p, "abits", kMinActivationBits, kMaxActivationBits);
    l.block = r.small_int(e, p, "block", 1, kMaxBlock);
    l.block_out = r.small_int(e, p, "block_out", 1, kMaxBlock);
    DQ_CHECK(
        l.block == m.config.quant.block && l.block_out == m.config.quant.block_out && l.abits == m.config.quant.abits,
        format, "{}: {}: block {} / block_out {} / abits {} contradict the configuration's {} / {} / {}", label, p,
        l.block, l.block_out, l.abits, m.config.quant.block, m.config.quant.block_out, m.config.quant.abits);
    l.bias = r.flag(e, p, "bias");
    l.weight_xxh128 = r.digest(e, p, "weight_xxh128");
    const json& npz = r.field(e, p, "npz");
    l.npz = {r.text(npz, p + ".npz", "name"), r.count(npz, p + ".npz", "size"), r.digest(npz, p + ".npz", "xxh128")};
    const json& qt = r.field(e, p, "quantized");
    l.quantized_shard = r.text(qt, p + ".quantized", "shard");
    l.quantized_bytes = r.count(qt, p + ".quantized", "bytes");
    l.quantized_xxh128 = r.digest(qt, p + ".quantized", "xxh128");
    const json& quality = r.field(e, p, "quality");
    const json& dq = r.field(quality, p + ".quality", "duquant");
    const json& rtn = r.field(quality, p + ".quality", "rtn");
    l.duquant_rel_error = r.optional_number(dq, p + ".quality.duquant", "rel_fro_error");
    l.duquant_sqnr_db = r.optional_number(dq, p + ".quality.duquant", "sqnr_db");
    l.rtn_rel_error = r.optional_number(rtn, p + ".quality.rtn", "rel_fro_error");
    l.rtn_sqnr_db = r.optional_number(rtn, p + ".quality.rtn", "sqnr_db");
    for (const auto& [rel, sqnr, what] : {std::tuple{l.duquant_rel_error, l.duquant_sqnr_db, "duquant"},
                                          std::tuple{l.rtn_rel_error, l.rtn_sqnr_db, "rtn"}}) {
      // sqnr_db = -20 log10(rel_fro_error); both null for an exact layer.
      const bool consistent = rel && sqnr
                                  ? std::abs(*sqnr + 20.0 * std::log10(*rel)) <= 1e-6 * std::max(1.0, std::abs(*sqnr))
                                  : (!sqnr && (!rel || *rel == 0.0));
      DQ_CHECK(consistent && (!rel || *rel >= 0), format,
               "{}: {}.quality.{}: sqnr_db {} does not match rel_fro_error {} (sqnr_db = -20 log10 rel_fro_error)",
               label, p, what, sqnr ? fmt::format("{}", *sqnr) : std::string("null"),
               rel ? fmt::format("{}", *rel) : std::string("null"));
    }
    const json& conf = r.field(e, p, "conformance");
    l.conformance_rows = r.count(conf, p + ".conformance", "rows", 1);
    l.conformance_rel_error = r.optional_number(conf, p + ".conformance", "rel_error_q_vs_fp");
    // Calibration and smoothing (absent or null: neither).
    if (e.contains("calibration") && !e.at("calibration").is_null()) {
      const json& c = e.at("calibration");
      DQ_CHECK(c.is_object(), format, "{}: {}.calibration: expected an object or null", label, p);
      l.calibrated = true;
      l.calib_steps = r.count(c, p + ".calibration", "steps", 1);
      DQ_CHECK(l.calib_steps <= static_cast<std::uint64_t>(m.config.quant.calib_steps), format,
               "{}: {}.calibration.steps: {} calls, more than config.calib_steps {}", label, p, l.calib_steps,
               m.config.quant.calib_steps);
      l.output_rel_error = r.optional_number(c, p + ".calibration", "output_rel_error");
    }
    if (e.contains("smoothing") && !e.at("smoothing").is_null()) {
      DQ_CHECK(e.at("smoothing").is_object(), format, "{}: {}.smoothing: expected an object or null", label, p);
      DQ_CHECK(l.calibrated, format, "{}: {}: smoothed but not calibrated", label, p);
      l.smoothed = true;
      const json& sm = e.at("smoothing");
      if (sm.contains("folded")) l.folded = r.flag(sm, p + ".smoothing", "folded");
      if (sm.contains("folded_weight_xxh128"))
        l.folded_weight_xxh128 = r.digest(sm, p + ".smoothing", "folded_weight_xxh128");
    }
    m.layers.push_back(std::move(l));
  }
  return m;
}

}  // namespace duquant

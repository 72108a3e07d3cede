// The manifest stage of `duquant pack` (pack_stages.hpp): manifest.json, written last, and the
// run's summary figures. docs/pack-format.md describes every field.
#include <nlohmann/json.hpp>
#include "base/cpu_features.hpp"

#include <cmath>
#include <limits>

#include "config/config_json.hpp"
#include "duquant/error.hpp"
#include "formats/strict_json.hpp"
#include "math/conformance.hpp"
#include "pack/pack_stages.hpp"
#include "pack_internal.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using pack_internal::sqnr_db;

namespace {

// The conformance vectors' entry: ‖test_y_q − test_y_fp‖ / ‖test_y_fp‖ (0 when both are zero,
// null when only test_y_fp is).
json conformance_json(const LayerQuality& q) {
  json j;
  j["rows"] = kConformanceRows;
  j["rel_error_q_vs_fp"] = q.conformance_fp2 > 0     ? json(std::sqrt(q.conformance_err2 / q.conformance_fp2))
                           : q.conformance_err2 == 0 ? json(0.0)
                                                     : json(nullptr);
  return j;
}

json quality_json(double signal, double noise) {
  json j;
  j["rel_fro_error"] = signal > 0 ? std::sqrt(noise / signal) : 0.0;
  const auto s = sqnr_db(signal, noise);
  j["sqnr_db"] = s ? json(*s) : json(nullptr);
  return j;
}

// The figures the summary takes over the layers, gathered as their entries are written.
struct Totals {
  double sum_out = 0, sum_dq = 0, sum_rtn = 0;
  std::size_t counted = 0;
};

json header_json(const PackRun& run, const AssembledPack& assembled) {
  const PackOptions& o = run.options;
  json m;
  m["format"] = kPackFormatName;
  m["format_version"] = kPackFormatVersion;
  m["tool"] = {{"name", "duquant"}, {"version", DUQUANT_VERSION}, {"cpu_level", cpu_level_name(active_cpu_level())}};
  m["algorithm"] = {{"name", run.algorithm}, {"version", kAlgorithmVersion}};
  m["config"] = config_json(o.config);
  json ck;
  ck["source"] = o.checkpoint.filename().string();
  ck["files"] = json::array();
  for (const auto& f : run.source.checkpoint().files())
    ck["files"].push_back({{"name", f.path.filename().string()}, {"size", f.size}, {"header_bytes", f.header_bytes}});
  ck["names"] = names_json(run.source.opened.names);
  m["checkpoint"] = ck;
  json files = json::array();
  for (const PackedFile& f : assembled.files)
    files.push_back({{"name", f.name}, {"size", f.size}, {"xxh128", f.xxh128}});
  m["files"] = files;
  if (run.plan.dump) {
    json c;
    c["dump"] = o.calib.filename().string();
    c["container"] = std::string(run.plan.dump->container());
    c["dump_layers"] = run.plan.dump->layers().size();
    c["held_out_calls_max"] = kHeldOutCalls;
    c["held_out_rows_per_call_max"] = kHeldOutRowsPerCall;
    c["missing_layers"] = run.plan.missing;
    m["calibration"] = c;
  } else {
    m["calibration"] = nullptr;
  }
  if (o.imported) {  // provenance: the transforms are the runtime's, from this folder
    json im;
    im["source"] = formats::json_safe_text(o.imported->source.string());
    im["source_npz"] = o.imported->source_npz;
    im["transforms"] = "the runtime's perm and rotations; codes and scales recomputed from them";
    im["skipped"] = json::array();
    for (const auto& [name, why] : o.imported->skipped)
      im["skipped"].push_back({{"name", formats::json_safe_text(name)}, {"reason", formats::json_safe_text(why)}});
    im["ignored"] = json::array();
    for (const std::string& name : o.imported->ignored) im["ignored"].push_back(formats::json_safe_text(name));
    m["import"] = im;
  }
  if (o.smooth_alpha) {
    json sm;
    sm["alpha"] = *o.smooth_alpha;
    sm["folded_checkpoint"] = o.fold_smoothing.empty() ? json(nullptr) : json(o.fold_smoothing.filename().string());
    sm["runtime_contract"] = "divide the layer's input by smooth_scale before the input transform";
    m["smoothing"] = sm;
  } else {
    m["smoothing"] = nullptr;
  }
  return m;
}

json calibration_json(const PackRun& run, const LinearLayer& l, const CalibrationFigures& f, PackSummary& summary,
                      Totals& totals) {
  json c;
  c["source"] = run.plan.source_of.at(l.name);
  c["steps"] = f.steps;
  c["tokens"] = f.tokens;
  c["held_out_calls"] = f.held_out_calls;
  c["held_out_rows"] = f.held_out_rows;
  const bool measured = f.held_out_rows > 0 && f.output_fp2 > 0;
  const double rel = measured ? std::sqrt(f.output_err2 / f.output_fp2) : 0.0;
  c["output_rel_error"] = measured ? json(rel) : json(nullptr);
  c["input_xxh128"] = f.input_xxh128;
  ++summary.calibrated;
  if (measured) {
    ++summary.held_out_layers;
    totals.sum_out += rel;
    if (rel > summary.worst_output_rel_error) {
      summary.worst_output_rel_error = rel;
      summary.worst_output_layer = l.name;
    }
  }
  return c;
}

// The i-th layer's entry.
json layer_json(const PackRun& run, const PackState& state, const AssembledPack& assembled, std::size_t i,
                PackSummary& summary, Totals& totals) {
  const SelectedLayer& sel = run.source.selection.layers[i];
  const LinearLayer& l = *sel.layer;
  const LayerRecord& r = *state.records[i];
  const QuantConfig& q = run.options.config.quant;
  const fs::path npz_path = run.npz_path(i);
  std::error_code size_ec;
  const std::uint64_t npz_size = fs::file_size(npz_path, size_ec);
  DQ_CHECK(!size_ec, io, "{}: cannot read the size: {}", npz_path.string(), size_ec.message());
  summary.npz_bytes += npz_size;
  json e;
  e["name"] = l.name;
  e["shape"] = {l.out_features, l.in_features};
  e["dtype"] = formats::dtype_name(l.weight->dtype);
  e["wbits"] = sel.wbits;
  e["abits"] = q.abits;
  e["block"] = q.block;
  e["block_out"] = q.block_out;
  e["bias"] = l.bias != nullptr;
  e["weight_xxh128"] = state.weight_xxh128[i];
  e["npz"] = {{"name", pack_file_name(l.name)}, {"size", npz_size}, {"xxh128", r.npz_xxh128}};
  e["quantized"] = {{"shard", assembled.layer_shard[i]}, {"bytes", r.part_bytes}, {"xxh128", r.part_xxh128}};
  e["quality"] = {{"duquant", quality_json(r.quality.weight_norm2, r.quality.duquant_err2)},
                  {"rtn", quality_json(r.quality.weight_norm2, r.quality.rtn_err2)}};
  e["conformance"] = conformance_json(r.quality);
  e["calibration"] = r.calibration.steps > 0 ? calibration_json(run, l, r.calibration, summary, totals) : json(nullptr);
  if (r.smoothed) {
    const SmoothGroup* g = run.plan.smoothing_group(l.name);
    e["smoothing"] = {{"group", g ? g->key : l.name}, {"folded", !run.options.fold_smoothing.empty()}};
    if (const auto d = run.folded_digests.find(l.weight->stored_name); d != run.folded_digests.end())
      e["smoothing"]["folded_weight_xxh128"] = d->second;
    ++summary.smoothed;
  } else {
    e["smoothing"] = nullptr;
  }
  const auto dq = sqnr_db(r.quality.weight_norm2, r.quality.duquant_err2);
  const auto rtn = sqnr_db(r.quality.weight_norm2, r.quality.rtn_err2);
  if (dq && rtn) {
    totals.sum_dq += *dq;
    totals.sum_rtn += *rtn;
    ++totals.counted;
    if (*dq < summary.worst_sqnr_db) {
      summary.worst_sqnr_db = *dq;
      summary.worst_layer = l.name;
    }
  }
  return e;
}

}  // namespace

void manifest_stage(const PackRun& run, const PackState& state, const AssembledPack& assembled, PackSummary& summary) {
  json m = header_json(run, assembled);
  json layers = json::array();
  Totals totals;
  summary.worst_sqnr_db = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < run.layer_count(); ++i)
    layers.push_back(layer_json(run, state, assembled, i, summary, totals));
  m["layers"] = layers;
  pack_internal::write_text_atomic(run.options.output / kManifestName, formats::dump_json(m, 2) + "\n");

  summary.quantized_bytes += assembled.quantized_bytes;
  summary.shards = assembled.shards;
  const auto counted = static_cast<double>(totals.counted);
  summary.mean_sqnr_db = totals.counted ? totals.sum_dq / counted : 0;
  summary.mean_rtn_sqnr_db = totals.counted ? totals.sum_rtn / counted : 0;
  if (totals.counted == 0) summary.worst_sqnr_db = 0;
  summary.mean_output_rel_error =
      summary.held_out_layers ? totals.sum_out / static_cast<double>(summary.held_out_layers) : 0;
}

}  // namespace duquant

// The resume stage of `duquant pack` and the work folder's layer records (pack_stages.hpp).
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "duquant/error.hpp"
#include "formats/digest.hpp"
#include "formats/strict_json.hpp"
#include "pack/pack_stages.hpp"
#include "pack_internal.hpp"
#include "pack_output.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace fs = std::filesystem;
using json = nlohmann::ordered_json;
using pack_output::is_plain_file;

std::optional<LayerRecord> read_layer_record(const fs::path& path, const std::string& fingerprint,
                                             const std::string& algorithm) {
  if (!is_plain_file(path)) return std::nullopt;  // missing, or not a file pack wrote: the layer is packed again
  nlohmann::json j;
  try {
    j = formats::parse_strict_json(pack_internal::read_file_text(path), path.string(), 4);
  } catch (const Error&) {
    return std::nullopt;  // a damaged record only means the layer is packed again
  }
  const std::string recorded = j.is_object() && j.contains("algorithm") && j.at("algorithm").is_string()
                                   ? j.at("algorithm").get<std::string>()
                                   : fmt::format("{}/1", kAlgorithmCpu);
  DQ_CHECK(recorded == algorithm, usage,
           "{}: this layer was packed by algorithm {}, this run packs with {}: --resume does not mix the two in one "
           "pack; start over with --force (or resume with the device that began it)",
           path.string(), recorded, algorithm);
  try {
    LayerRecord r;
    r.fingerprint = j.at("fingerprint").get<std::string>();
    if (r.fingerprint != fingerprint) return std::nullopt;
    r.npz_xxh128 = j.at("npz_xxh128").get<std::string>();
    r.part_xxh128 = j.at("part_xxh128").get<std::string>();
    r.part_bytes = j.at("part_bytes").get<std::uint64_t>();
    r.quality.weight_norm2 = j.at("weight_norm2").get<double>();
    r.quality.duquant_err2 = j.at("duquant_err2").get<double>();
    r.quality.rtn_err2 = j.at("rtn_err2").get<double>();
    r.quality.conformance_fp2 = j.at("conformance_fp2").get<double>();
    r.quality.conformance_err2 = j.at("conformance_err2").get<double>();
    const nlohmann::json& c = j.at("calibration");
    r.calibration.steps = c.at("steps").get<int>();
    r.calibration.tokens = c.at("tokens").get<std::uint64_t>();
    r.calibration.held_out_calls = c.at("held_out_calls").get<int>();
    r.calibration.held_out_rows = c.at("held_out_rows").get<std::uint64_t>();
    r.calibration.output_fp2 = c.at("output_fp2").get<double>();
    r.calibration.output_err2 = c.at("output_err2").get<double>();
    r.calibration.input_xxh128 = c.at("input_xxh128").get<std::string>();
    r.smoothed = j.at("smoothed").get<bool>();
    if (j.contains("stream_offset")) r.stream_offset = j.at("stream_offset").get<std::uint64_t>();
    return r;
  } catch (const Error&) {
    return std::nullopt;  // a damaged record only means the layer is packed again
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::string layer_record_text(const LayerRecord& r, const std::string& algorithm) {
  json j;
  j["algorithm"] = algorithm;
  j["fingerprint"] = r.fingerprint;
  j["npz_xxh128"] = r.npz_xxh128;
  j["part_xxh128"] = r.part_xxh128;
  j["part_bytes"] = r.part_bytes;
  // Exact doubles (17 significant digits round-trip), so a resumed manifest is identical.
  j["weight_norm2"] = r.quality.weight_norm2;
  j["duquant_err2"] = r.quality.duquant_err2;
  j["rtn_err2"] = r.quality.rtn_err2;
  j["conformance_fp2"] = r.quality.conformance_fp2;
  j["conformance_err2"] = r.quality.conformance_err2;
  j["calibration"] = {{"steps", r.calibration.steps},
                      {"tokens", r.calibration.tokens},
                      {"held_out_calls", r.calibration.held_out_calls},
                      {"held_out_rows", r.calibration.held_out_rows},
                      {"output_fp2", r.calibration.output_fp2},
                      {"output_err2", r.calibration.output_err2},
                      {"input_xxh128", r.calibration.input_xxh128}};
  j["smoothed"] = r.smoothed;
  if (r.stream_offset) j["stream_offset"] = *r.stream_offset;
  return formats::dump_json(j, 1) + "\n";
}

PackState resume_stage(const PackRun& run) {
  const std::size_t count = run.layer_count();
  PackState state(count);
  if (!run.options.resume) return state;
  const formats::Checkpoint& ckpt = run.source.checkpoint();
  for (std::size_t i = 0; i < count; ++i) {
    const LinearLayer& layer = *run.source.selection.layers[i].layer;
    const LayerCalibration calib = run.plan.for_layer(layer);
    state.weight_xxh128[i] = xxh128_hex(ckpt.bytes(*layer.weight));
    state.bias_xxh128[i] = layer.bias ? xxh128_hex(ckpt.bytes(*layer.bias)) : "none";
    const std::string calib_digest =
        calib.has_calls() ? calibration_input_digest(calib, run.options.config.quant.calib_steps) : std::string("none");
    std::optional<LayerRecord> record = read_layer_record(
        run.record_path(i), run.fingerprint(i, state.weight_xxh128[i], state.bias_xxh128[i], calib_digest),
        fmt::format("{}/{}", run.algorithm, kAlgorithmVersion));
    const fs::path npz_path = run.npz_path(i);
    if (record && (!is_plain_file(npz_path) || xxh128_file(npz_path) != record->npz_xxh128)) record.reset();
    if (record) {  // its tensor bytes, in its .part or in the stream file of the run that computed it
      try {
        run.layer_bytes(i, *record, "resuming");
      } catch (const Error&) {
        record.reset();  // missing or changed: the layer is packed again
      }
    }
    state.reused[i] = record.has_value();
    state.records[i] = std::move(record);
    run.release(i);
  }
  return state;
}

}  // namespace duquant

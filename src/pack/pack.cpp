#include "duquant/pack.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <span>
#include <vector>

#include "config/config_json.hpp"
#include "duquant/error.hpp"
#include "formats/atomic_file.hpp"
#include "formats/digest.hpp"
#include "formats/folder_lock.hpp"
#include "formats/output_paths.hpp"
#include "formats/regular_file.hpp"
#include "formats/strict_json.hpp"
#include "pack/fold_smoothing.hpp"
#include "pack/pack_stages.hpp"
#include "pack_internal.hpp"
#include "pack_output.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace fs = std::filesystem;

namespace pack_internal {

void check_interruption_seams() {
  for (const char* seam : {"DUQUANT_TEST_KILL_AT", "DUQUANT_TEST_STOP_AT"}) {
    const char* value = std::getenv(seam);
    if (value == nullptr || *value == '\0') continue;  // empty is unset, as for the other seams
    const std::string v = value;
    bool ok = v == "assembly";
    for (const std::string point : {"layer:", "read:"})
      if (!ok && v.rfind(point, 0) == 0 && v.size() > point.size() && v.size() <= point.size() + 9) {
        ok = v[point.size()] != '0' && std::all_of(v.begin() + static_cast<std::ptrdiff_t>(point.size()), v.end(),
                                                   [](char c) { return c >= '0' && c <= '9'; });
      }
    DQ_CHECK(ok, usage, "{}={}: expected layer:N, read:N (N from 1 to 999999999) or assembly", seam, v);
  }
}

void maybe_kill(const std::string& point) {
  const char* kill_at = std::getenv("DUQUANT_TEST_KILL_AT");
  if (kill_at != nullptr && point == kill_at) std::raise(SIGKILL);
  const char* stop_at = std::getenv("DUQUANT_TEST_STOP_AT");
  if (stop_at != nullptr && point == stop_at) std::raise(SIGSTOP);
}

std::string read_file_text(const fs::path& p) {
  return formats::read_regular_file(p, std::numeric_limits<std::uint64_t>::max());
}

void write_text_atomic(const fs::path& p, const std::string& text) {
  formats::AtomicFile f(p);
  f.write(text);
  f.commit();
}

std::optional<double> sqnr_db(double signal, double noise) {
  if (signal <= 0 || noise <= 0) return std::nullopt;
  return 10.0 * std::log10(signal / noise);
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace pack_internal

namespace {

// NaN or Inf in a bias would pass through every stage into the pack (and fail `verify`): refused
// before any work, as a numeric error naming the layer and the element, as for a weight.
void check_biases(const formats::Checkpoint& ckpt, const Selection& selection) {
  for (const SelectedLayer& s : selection.layers) {
    const LinearLayer& layer = *s.layer;
    if (layer.bias == nullptr || !formats::converts_to_f32(layer.bias->dtype)) continue;
    std::vector<float> b(layer.bias->numel);
    ckpt.read_f32(*layer.bias, b);
    for (std::size_t k = 0; k < b.size(); ++k)
      if (!std::isfinite(b[k]))
        fail(ErrorKind::numeric, "layer '{}': bias [{}] is {} (stage: checking the biases before any work; shape [{}])",
             layer.name, k, b[k], b.size());
    ckpt.release(*layer.bias);
  }
}

// One engine, the import's, computing on the CPU.
DevicePlan imported_devices(const ImportedTransforms& imported) {
  DQ_CHECK(imported.make_engine != nullptr, internal, "import of {}: no engine", imported.source.string());
  DevicePlan plan;
  plan.engines.push_back(imported.make_engine());
  plan.description = "cpu (transforms imported)";
  return plan;
}

}  // namespace

PackSource::PackSource(const PackOptions& o)
    : opened(open_checkpoint(o.checkpoint, o.config.naming)),
      linears(find_linear_layers(opened.checkpoint, o.config.selection.not_linear)),
      selection(select_layers(linears, o.config)) {
  if (o.imported)  // layers an import leaves out (stale or missing in the runtime's folder)
    std::erase_if(selection.layers, [&](const SelectedLayer& s) {
      return std::any_of(o.imported->skipped.begin(), o.imported->skipped.end(),
                         [&](const auto& skipped) { return skipped.first == s.layer->name; });
    });
  DQ_CHECK(!selection.layers.empty(), no_match,
           "{}: the selection matches none of its {} linear layers (try `duquant list-linears`)", o.checkpoint.string(),
           linears.size());
  DQ_CHECK(o.max_shard_bytes > 0, usage, "--max-shard-size must be positive");
  // Zero or absurd widths and npz member counts: refused before anything is created.
  check_selected_shapes(selection, o.config.quant, o.checkpoint.string(), !o.calib.empty(), o.smooth_alpha.has_value());
  check_biases(opened.checkpoint, selection);
  // Two layers the runtime would look up under one npz file name: refused before anything is created.
  std::vector<std::string> names;
  for (const SelectedLayer& s : selection.layers) names.push_back(s.layer->name);
  check_pack_file_names(names, o.checkpoint.string());
}

PackRun::PackRun(const PackOptions& o, const PackSource& src, const CalibrationPlan& p)
    : options(o),
      source(src),
      plan(p),
      work(o.output / kWorkDirName),
      config_text(formats::dump_json(config_json(o.config))) {
  // The configuration's text grows with the model (a --config may give every layer its bits): it is
  // hashed once and the state copied per layer (the same digest as hashing the whole text each time).
  const std::string prefix = fmt::format("{}\n{}\n", DUQUANT_VERSION, config_text);
  fingerprint_prefix.update(std::as_bytes(std::span(prefix.data(), prefix.size())));
}

fs::path PackRun::npz_path(std::size_t i) const {
  return options.output / pack_file_name(source.selection.layers[i].layer->name);
}
fs::path PackRun::part_path(std::size_t i) const {
  return work / (pack_file_name(source.selection.layers[i].layer->name) + ".part");
}
fs::path PackRun::stream_path() const { return work / "quantized.safetensors.stream"; }

std::string PackRun::layer_bytes(std::size_t i, const LayerRecord& r, const char* stage) const {
  std::string data;
  fs::path file;
  if (r.stream_offset) {
    // The stream file, or quantized.safetensors once the stream was committed (renamed as it was)
    // by a run that ended before its manifest.
    file = stream_path();
    if (!pack_output::is_plain_file(file)) file = options.output / kQuantizedName;
    DQ_CHECK(pack_output::is_plain_file(file), io, "{}: missing or not a regular file ({})", file.string(), stage);
    std::error_code ec;
    const std::uint64_t size = fs::file_size(file, ec);
    // The record's figures are checked against the file before anything is allocated from them.
    DQ_CHECK(!ec && *r.stream_offset <= size && r.part_bytes <= size - *r.stream_offset, io,
             "{}: {} bytes of layer '{}' at offset {} lie beyond its {} bytes ({})", file.string(), r.part_bytes,
             source.selection.layers[i].layer->name, *r.stream_offset, size, stage);
    std::ifstream in(file, std::ios::binary);
    data.resize(r.part_bytes);
    in.seekg(static_cast<std::streamoff>(*r.stream_offset));
    in.read(data.data(), static_cast<std::streamsize>(data.size()));
    DQ_CHECK(in && static_cast<std::uint64_t>(in.gcount()) == r.part_bytes, io,
             "{}: {} bytes of layer '{}' at offset {} cannot be read ({})", file.string(), r.part_bytes,
             source.selection.layers[i].layer->name, *r.stream_offset, stage);
  } else {
    file = part_path(i);
    data = pack_internal::read_file_text(file);
  }
  DQ_CHECK(data.size() == r.part_bytes && xxh128_hex(data) == r.part_xxh128, io, "{}: layer '{}' changed ({})",
           file.string(), source.selection.layers[i].layer->name, stage);
  return data;
}

fs::path PackRun::record_path(std::size_t i) const {
  return work / (pack_file_name(source.selection.layers[i].layer->name) + ".json");
}

std::string PackRun::fingerprint(std::size_t i, const std::string& weight_xxh128, const std::string& bias_xxh128,
                                 const std::string& calib_digest) const {
  const SelectedLayer& sel = source.selection.layers[i];
  Xxh128 h(fingerprint_prefix);
  const std::string rest =
      fmt::format("{}\n{}\n{}\n{}\n{}", sel.layer->name, sel.wbits, weight_xxh128, bias_xxh128, calib_digest);
  h.update(std::as_bytes(std::span(rest.data(), rest.size())));
  return h.hex();
}

void PackRun::release(std::size_t i) const {
  const LinearLayer& layer = *source.selection.layers[i].layer;
  source.checkpoint().release(*layer.weight);
  if (layer.bias) source.checkpoint().release(*layer.bias);
}

std::map<std::string, std::string> fold_smoothing_stage(const PackOptions& o, const PackSource& source,
                                                        const CalibrationPlan& plan) {
  std::map<std::string, std::string> folded_digests;
  if (o.fold_smoothing.empty()) return folded_digests;
  std::map<std::string, std::vector<float>> foldable;
  for (const SmoothGroup& g : plan.groups)
    if (g.norm && plan.scales.count(g.key)) foldable[g.key] = plan.scales.at(g.key);
  // Through a symbolic link, the file it points to is replaced and the link stays (check_output).
  std::error_code link_ec;
  const fs::path fold_target =
      fs::is_symlink(o.fold_smoothing, link_ec) ? formats::resolved_path(o.fold_smoothing) : o.fold_smoothing;
  write_folded_checkpoint(source.checkpoint(), plan.groups, foldable, fold_target, &folded_digests);
  return folded_digests;
}

PackSummary run_pack(const PackOptions& o, const std::function<void(const PackProgress&)>& progress) {
  pack_internal::check_interruption_seams();
  const PackSource source(o);
  pack_output::check_output(o, source.checkpoint());
  const CalibrationPlan plan = plan_calibration(o, source.checkpoint(), source.linears, source.selection);
  DevicePlan devices = o.imported ? imported_devices(*o.imported) : open_devices(o.device, o.notice);
  const formats::FolderLock lock = pack_output::lock_output(o);  // held to the end; the kernel drops it on any exit
  pack_output::prepare_output(o);
  PackRun run(o, source, plan);
  run.algorithm = std::string(devices.cuda ? kAlgorithmCuda : kAlgorithmCpu);
  run.folded_digests = fold_smoothing_stage(o, source, plan);

  PackSummary summary;
  summary.layers = run.layer_count();
  summary.device = devices.description;
  PackState state = resume_stage(run);
  compute_stage(run, devices, state, summary, progress);
  const AssembledPack assembled = assemble_stage(run, state);
  manifest_stage(run, state, assembled, summary);
  pack_output::remove_work_folder(run.work);
  return summary;
}

}  // namespace duquant

#include "duquant/pack.hpp"

#include "select/checkpoint_names.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <future>
#include <limits>
#include <map>
#include <optional>
#include <vector>

#include "config/config_json.hpp"
#include "pack/calibration_plan.hpp"
#include "math/conformance.hpp"
#include "formats/digest.hpp"
#include "duquant/error.hpp"
#include "engine/layer_engine.hpp"
#include "select/linear_layers.hpp"
#include "pack/fold_smoothing.hpp"
#include "pack/pack_layer.hpp"
#include "packfmt/layout.hpp"
#include "select/selection.hpp"
#include "formats/atomic_file.hpp"
#include "pack_output.hpp"
#include "formats/folder_lock.hpp"
#include "formats/output_paths.hpp"
#include "formats/regular_file.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_writer.hpp"
#include "formats/strict_json.hpp"

namespace duquant {
namespace fs = std::filesystem;
using pack_output::is_plain_file;
using json = nlohmann::ordered_json;

namespace {

// What a finished layer leaves in the work folder, enough to skip it on --resume.
struct LayerRecord {
  std::string fingerprint;
  std::string npz_xxh128;
  std::string part_xxh128;
  std::uint64_t part_bytes = 0;
  LayerQuality quality;
  CalibrationFigures calibration;
  bool smoothed = false;
};

std::optional<double> sqnr_db(double signal, double noise) {
  if (signal <= 0 || noise <= 0) return std::nullopt;
  return 10.0 * std::log10(signal / noise);
}

// The conformance vectors' entry: ‖test_y_q − test_y_fp‖ / ‖test_y_fp‖ (0 when both are zero,
// null when only test_y_fp is).
json conformance_json(const LayerQuality& q) {
  json j;
  j["rows"] = kConformanceRows;
  j["rel_error_q_vs_fp"] = q.conformance_fp2 > 0 ? json(std::sqrt(q.conformance_err2 / q.conformance_fp2))
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

std::string read_file_text(const fs::path& p) {
  // Never blocks: a FIFO or a device in the work folder is refused (io), naming what it is.
  return formats::read_regular_file(p, std::numeric_limits<std::uint64_t>::max());
}

void write_text_atomic(const fs::path& p, const std::string& text) {
  formats::AtomicFile f(p);
  f.write(text);
  f.commit();
}

std::optional<LayerRecord> load_record(const fs::path& path, const std::string& fingerprint) {
  if (!is_plain_file(path)) return std::nullopt;  // missing, or not a file pack wrote: the layer is packed again
  try {
    const nlohmann::json j = formats::parse_strict_json(read_file_text(path), path.string(), 4);
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
    return r;
  } catch (const Error&) {
    return std::nullopt;  // a damaged record only means the layer is packed again
  } catch (const nlohmann::json::exception&) {
    return std::nullopt;
  }
}

std::string record_text(const LayerRecord& r) {
  json j;
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
  return formats::dump_json(j, 1) + "\n";
}

struct Shard {
  std::string name;
  std::vector<std::size_t> layers;
};

// Test seam for the interruption tests: DUQUANT_TEST_KILL_AT=layer:N sends SIGKILL to this process
// right after the N-th newly packed layer is recorded; DUQUANT_TEST_KILL_AT=assembly does so after
// the first quantized file is published and before the manifest; read:N right after the N-th layer to
// pack is read from the checkpoint (before its math). DUQUANT_TEST_STOP_AT=POINT sends
// SIGSTOP at the same points instead, so that a test can change the input while the pack waits.
// Never set in normal use; a malformed value is a usage error before any work.
void check_interruption_seams() {
  for (const char* seam : {"DUQUANT_TEST_KILL_AT", "DUQUANT_TEST_STOP_AT"}) {
    const char* value = std::getenv(seam);
    if (value == nullptr || *value == '\0') continue;  // empty is unset, as for the other seams
    const std::string v = value;
    bool ok = v == "assembly";
    for (const std::string point : {"layer:", "read:"})
      if (!ok && v.rfind(point, 0) == 0 && v.size() > point.size() && v.size() <= point.size() + 9) {
        ok = v[point.size()] != '0' &&
             std::all_of(v.begin() + static_cast<std::ptrdiff_t>(point.size()), v.end(), [](char c) { return c >= '0' && c <= '9'; });
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

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// A layer's weight and what the engine computed from it.
struct ComputedLayer {
  LayerInput input;
  LayerMath math;
  LayerEngine* engine = nullptr;  // the engine that computed it
  double read_seconds = 0, compute_seconds = 0;
};

// Reads and computes the layers to pack, handing them out in order. On the CPU each layer is read
// and computed when asked for (the math uses every core). With N devices, up to N layers are
// computed at once (layer k on engine k mod N) while the next one is read; the results do not
// depend on this, since each layer's math depends on that layer alone.
class LayerPipeline {
 public:
  LayerPipeline(std::vector<std::function<LayerInput()>> readers, DevicePlan& devices, const QuantConfig& q,
                std::vector<std::pair<int, std::string>> layers)
      : readers_(std::move(readers)), devices_(devices), q_(q), layers_(std::move(layers)),
        reads_(readers_.size()), computes_(readers_.size()) {}
  LayerPipeline(const LayerPipeline&) = delete;
  LayerPipeline& operator=(const LayerPipeline&) = delete;
  ~LayerPipeline() {  // never leave a task running on engines about to be destroyed
    for (auto& f : computes_)
      if (f.valid()) f.wait();
    for (auto& f : reads_)
      if (f.valid()) f.wait();
  }

  // The k-th layer to pack (k = 0, 1, ... in order).
  ComputedLayer take(std::size_t k) {
    if (!devices_.overlap) return compute(k, read(k));
    const std::size_t n = devices_.engines.size(), total = readers_.size();
    for (; reads_launched_ < std::min(total, k + n + 1); ++reads_launched_) {
      const std::size_t j = reads_launched_;
      reads_[j] = std::async(std::launch::async, [this, j] { return read(j); });
    }
    for (; computes_launched_ < std::min(total, k + n); ++computes_launched_) {
      const std::size_t j = computes_launched_;  // engine j mod n is free: layer j - n was taken
      computes_[j] = std::async(std::launch::async, [this, j] { return compute(j, reads_[j].get()); });
    }
    return computes_[k].get();
  }

 private:
  std::pair<LayerInput, double> read(std::size_t k) {
    const auto start = std::chrono::steady_clock::now();
    LayerInput in = readers_[k]();
    return {std::move(in), seconds_since(start)};
  }
  ComputedLayer compute(std::size_t k, std::pair<LayerInput, double> read) {
    ComputedLayer c;
    c.input = std::move(read.first);
    c.read_seconds = read.second;
    const auto start = std::chrono::steady_clock::now();
    c.engine = devices_.engines[k % devices_.engines.size()].get();
    c.math = c.engine->compute(c.input.packed_view(), q_, layers_[k].first, layers_[k].second);
    c.compute_seconds = seconds_since(start);
    return c;
  }

  std::vector<std::function<LayerInput()>> readers_;
  DevicePlan& devices_;
  const QuantConfig& q_;
  std::vector<std::pair<int, std::string>> layers_;  // bits, name
  std::vector<std::future<std::pair<LayerInput, double>>> reads_;
  std::vector<std::future<ComputedLayer>> computes_;
  std::size_t reads_launched_ = 0, computes_launched_ = 0;
};

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

}  // namespace

PackSummary run_pack(const PackOptions& o, const std::function<void(const PackProgress&)>& progress) {
  check_interruption_seams();
  const RunConfig& config = o.config;
  const QuantConfig& q = config.quant;
  const OpenedCheckpoint opened = open_checkpoint(o.checkpoint, config.naming);
  const formats::Checkpoint& ckpt = opened.checkpoint;
  const std::vector<LinearLayer> linears = find_linear_layers(ckpt, config.selection.not_linear);
  const Selection selection = select_layers(linears, config);
  DQ_CHECK(!selection.layers.empty(), no_match, "{}: the selection matches none of its {} linear layers (try `duquant list-linears`)",
           o.checkpoint.string(), linears.size());
  DQ_CHECK(o.max_shard_bytes > 0, usage, "--max-shard-size must be positive");
  // Zero or absurd widths and npz member counts: refused before anything is created.
  check_selected_shapes(selection, q, o.checkpoint.string(), !o.calib.empty(), o.smooth_alpha.has_value());
  check_biases(ckpt, selection);
  {  // two layers the runtime would look up under one npz file name: refused before anything is created
    std::vector<std::string> names;
    for (const SelectedLayer& s : selection.layers) names.push_back(s.layer->name);
    check_pack_file_names(names, o.checkpoint.string());
  }
  pack_output::check_output(o, ckpt);
  const CalibrationPlan plan = plan_calibration(o, ckpt, linears, selection);
  DevicePlan devices = open_devices(o.device, o.notice);  // before anything is written
  const formats::FolderLock lock = pack_output::lock_output(o);        // held to the end; the kernel drops it on any exit
  pack_output::prepare_output(o);
  const fs::path work = o.output / kWorkDirName;
  std::map<std::string, std::string> folded_digests;  // stored weight name -> digest in the folded copy
  if (!o.fold_smoothing.empty()) {
    std::map<std::string, std::vector<float>> foldable;
    for (const SmoothGroup& g : plan.groups)
      if (g.norm && plan.scales.count(g.key)) foldable[g.key] = plan.scales.at(g.key);
    // Through a symbolic link, the file it points to is replaced and the link stays (check_output).
    std::error_code link_ec;
    const fs::path fold_target =
        fs::is_symlink(o.fold_smoothing, link_ec) ? formats::resolved_path(o.fold_smoothing) : o.fold_smoothing;
    write_folded_checkpoint(ckpt, plan.groups, foldable, fold_target, &folded_digests);
  }

  const json config_j = config_json(config);
  const std::string config_text = formats::dump_json(config_j);
  PackSummary summary;
  summary.layers = selection.layers.size();
  summary.device = devices.description;
  std::uint64_t bytes_total = 0;
  for (const auto& s : selection.layers)
    bytes_total += s.layer->weight->nbytes + (s.layer->bias ? s.layer->bias->nbytes : 0);

  const std::size_t count = selection.layers.size();
  std::vector<LayerRecord> records(count);
  std::vector<std::string> weight_digests(count), bias_digests(count);
  auto digest = [&](std::size_t i) {
    const LinearLayer& layer = *selection.layers[i].layer;
    if (weight_digests[i].empty()) {
      weight_digests[i] = xxh128_hex(ckpt.bytes(*layer.weight));
      bias_digests[i] = layer.bias ? xxh128_hex(ckpt.bytes(*layer.bias)) : "none";
    }
  };
  // The layer's identity: tool, configuration, weights and every calibration value it uses. The
  // configuration's text grows with the model (a --config may give every layer its bits): it is
  // hashed once and the state copied per layer (the same digest as hashing the whole text each time).
  Xxh128 fingerprint_prefix;
  {
    const std::string prefix = fmt::format("{}\n{}\n", DUQUANT_VERSION, config_text);
    fingerprint_prefix.update(std::as_bytes(std::span(prefix.data(), prefix.size())));
  }
  auto fingerprint_with = [&](std::size_t i, const std::string& calib_digest) {
    const SelectedLayer& sel = selection.layers[i];
    Xxh128 h(fingerprint_prefix);
    const std::string rest = fmt::format("{}\n{}\n{}\n{}\n{}", sel.layer->name, sel.wbits, weight_digests[i],
                                         bias_digests[i], calib_digest);
    h.update(std::as_bytes(std::span(rest.data(), rest.size())));
    return h.hex();
  };
  auto release = [&](std::size_t i) {  // bounded resident memory while streaming through the checkpoint
    const LinearLayer& layer = *selection.layers[i].layer;
    ckpt.release(*layer.weight);
    if (layer.bias) ckpt.release(*layer.bias);
  };

  // --resume: the layers an earlier run finished, recognised by fingerprint and file digests.
  std::vector<std::optional<LayerRecord>> earlier(count);
  for (std::size_t i = 0; o.resume && i < count; ++i) {
    const LinearLayer& layer = *selection.layers[i].layer;
    const std::string file = pack_file_name(layer.name);
    const LayerCalibration calib = plan.for_layer(layer);
    digest(i);
    const std::string fingerprint =
        fingerprint_with(i, calib.has_calls() ? calibration_input_digest(calib, q.calib_steps) : std::string("none"));
    std::optional<LayerRecord> record = load_record(work / (file + ".json"), fingerprint);
    const fs::path npz_path = o.output / file, part_path = work / (file + ".part");
    if (record && (!is_plain_file(npz_path) || !is_plain_file(part_path) || xxh128_file(npz_path) != record->npz_xxh128 ||
                   xxh128_file(part_path) != record->part_xxh128))
      record.reset();
    earlier[i] = std::move(record);
    release(i);
  }

  // The rest is computed by the devices, in order.
  std::vector<std::function<LayerInput()>> readers;
  std::vector<std::pair<int, std::string>> to_pack;
  for (std::size_t i = 0; i < count; ++i) {
    if (earlier[i]) continue;
    const SelectedLayer* sel = &selection.layers[i];
    const std::size_t nth = readers.size() + 1;
    readers.push_back([&ckpt, &plan, sel, nth] {
      LayerInput in = load_layer_input(ckpt, *sel, plan.for_layer(*sel->layer));
      maybe_kill(fmt::format("read:{}", nth));
      return in;
    });
    to_pack.emplace_back(sel->wbits, sel->layer->name);
  }
  LayerPipeline pipeline(std::move(readers), devices, q, std::move(to_pack));

  std::uint64_t bytes_done = 0;
  std::size_t newly_packed = 0;
  // Each layer's npz, .part and record are committed without fsync: --resume trusts them only by
  // the digests in the record, and every npz is synced below before anything refers to it.
  std::optional<formats::DeferredSync> deferred_sync(std::in_place);
  for (std::size_t i = 0; i < count; ++i) {
    const SelectedLayer& sel = selection.layers[i];
    const LinearLayer& layer = *sel.layer;
    const std::string file = pack_file_name(layer.name);
    const fs::path npz_path = o.output / file;
    const fs::path part_path = work / (file + ".part");
    const fs::path record_path = work / (file + ".json");

    std::optional<LayerRecord> record = std::move(earlier[i]);  // its digests: from the --resume scan
    const bool reused = record.has_value();
    if (!record) {
      const LayerCalibration calib = plan.for_layer(layer);
      const ComputedLayer computed = pipeline.take(newly_packed);
      // The digests of the very bytes the layer was computed from (one copy, load_layer_input): a
      // record can never pair one version of the weight with a pack of another.
      weight_digests[i] = computed.input.weight_xxh128;
      bias_digests[i] = computed.input.bias_xxh128;
      const auto finish_start = std::chrono::steady_clock::now();
      // The engine of this layer is idle now: the next layer on it starts after this one is taken.
      const PackedLayer packed = finish_layer(sel, q, npz_path, calib, computed.input, computed.math, computed.engine);
      LayerRecord r;
      r.fingerprint = fingerprint_with(i, calib.has_calls() ? packed.calibration.input_xxh128 : std::string("none"));
      r.calibration = packed.calibration;
      r.smoothed = !calib.smooth.empty();
      r.npz_xxh128 = xxh128_file(npz_path);
      r.part_xxh128 = xxh128_hex(packed.data);
      r.part_bytes = packed.data.size();
      r.quality = packed.quality;
      write_text_atomic(part_path, packed.data);
      write_text_atomic(record_path, record_text(r));  // last: its presence means the layer is complete
      record = r;
      ++newly_packed;
      summary.read_seconds += computed.read_seconds;
      summary.compute_seconds += computed.compute_seconds;
      summary.finish_seconds += seconds_since(finish_start);
      maybe_kill(fmt::format("layer:{}", newly_packed));
    }
    records[i] = *record;
    release(i);
    summary.reused += reused ? 1 : 0;
    bytes_done += layer.weight->nbytes + (layer.bias ? layer.bias->nbytes : 0);
    if (progress) {
      PackProgress p;
      p.index = i + 1;
      p.total = count;
      p.name = layer.name;
      p.out_features = layer.out_features;
      p.in_features = layer.in_features;
      p.wbits = sel.wbits;
      p.reused = reused;
      p.bytes_done = bytes_done;
      p.bytes_total = bytes_total;
      p.sqnr_db = sqnr_db(record->quality.weight_norm2, record->quality.duquant_err2).value_or(
          std::numeric_limits<double>::infinity());
      progress(p);
    }
  }

  deferred_sync.reset();
  {  // every npz, reused or new, durable (with the folder's names) before the shards and the manifest
    std::vector<fs::path> npz_files;
    npz_files.reserve(count);
    for (const SelectedLayer& s : selection.layers) npz_files.push_back(o.output / pack_file_name(s.layer->name));
    formats::sync_files(npz_files, o.output);
  }

  // Every layer was read from the checkpoint as it was when opened, or the pack is not published.
  ckpt.check_unchanged("packing the layers");

  // quantized.safetensors: layers are never split across shards.
  std::vector<Shard> shards(1);
  std::uint64_t shard_bytes = 0, shard_header = 0;
  for (std::size_t i = 0; i < records.size(); ++i) {
    // Nor a header over the readers' limit (about 600,000 tensors of a 100,000-layer pack).
    std::uint64_t header = 0;
    for (const auto& spec : layer_tensor_specs(*selection.layers[i].layer, selection.layers[i].wbits, q,
                                               records[i].calibration.steps > 0, records[i].smoothed))
      header += formats::header_entry_bound(spec);
    if (!shards.back().layers.empty() && (shard_bytes + records[i].part_bytes > o.max_shard_bytes ||
                                          shard_header + header > formats::kMaxHeaderBytes - 4096)) {
      shards.emplace_back();
      shard_bytes = 0;
      shard_header = 0;
    }
    shards.back().layers.push_back(i);
    shard_bytes += records[i].part_bytes;
    shard_header += header;
  }
  const int n = static_cast<int>(shards.size());
  for (int s = 0; s < n; ++s) shards[s].name = n == 1 ? std::string(kQuantizedName) : quantized_shard_name(s + 1, n);

  json files = json::array();
  json weight_map = json::object();
  std::vector<std::string> layer_shard(records.size());
  std::uint64_t total_data = 0;
  for (const Shard& shard : shards) {
    std::vector<formats::TensorSpec> specs;
    for (std::size_t i : shard.layers) {
      const auto t = layer_tensor_specs(*selection.layers[i].layer, selection.layers[i].wbits, q,
                                        records[i].calibration.steps > 0, records[i].smoothed);
      for (const auto& spec : t) formats::append_new_key(weight_map, spec.name, shard.name);  // distinct names: O(1)
      specs.insert(specs.end(), t.begin(), t.end());
      layer_shard[i] = shard.name;
    }
    const std::map<std::string, std::string> metadata = quantized_metadata();
    const fs::path path = o.output / shard.name;
    formats::SafetensorsWriter writer(path, specs, metadata);
    Xxh128 hash;
    const std::string header = formats::safetensors_header_bytes(specs, metadata);
    hash.update(std::as_bytes(std::span(header.data(), header.size())));
    for (std::size_t i : shard.layers) {
      const fs::path part = work / (pack_file_name(selection.layers[i].layer->name) + ".part");
      const std::string data = read_file_text(part);
      DQ_CHECK(data.size() == records[i].part_bytes && xxh128_hex(data) == records[i].part_xxh128, io,
               "{}: changed while the pack was being assembled", part.string());
      const auto bytes = std::as_bytes(std::span(data.data(), data.size()));
      writer.write(bytes);
      hash.update(bytes);
    }
    writer.commit();
    const std::uint64_t size = header.size() + writer.data_bytes();
    total_data += writer.data_bytes();
    summary.quantized_bytes += size;
    files.push_back({{"name", shard.name}, {"size", size}, {"xxh128", hash.hex()}});
    maybe_kill("assembly");
  }
  if (n > 1) {
    json index;
    index["metadata"] = {{"total_size", total_data}};
    index["weight_map"] = weight_map;
    const std::string text = formats::dump_json(index, 2) + "\n";
    write_text_atomic(o.output / kQuantizedIndexName, text);
    files.push_back({{"name", kQuantizedIndexName}, {"size", text.size()}, {"xxh128", xxh128_hex(text)}});
  }

  // manifest.json, last.
  json m;
  m["format"] = kPackFormatName;
  m["format_version"] = kPackFormatVersion;
  m["tool"] = {{"name", "duquant"}, {"version", DUQUANT_VERSION}};
  m["config"] = config_j;
  json ck;
  ck["source"] = o.checkpoint.filename().string();
  ck["files"] = json::array();
  for (const auto& f : ckpt.files())
    ck["files"].push_back({{"name", f.path.filename().string()}, {"size", f.size}, {"header_bytes", f.header_bytes}});
  ck["names"] = names_json(opened.names);
  m["checkpoint"] = ck;
  m["files"] = files;
  if (plan.dump) {
    json c;
    c["dump"] = o.calib.filename().string();
    c["container"] = std::string(plan.dump->container());
    c["dump_layers"] = plan.dump->layers().size();
    c["held_out_calls_max"] = kHeldOutCalls;
    c["held_out_rows_per_call_max"] = kHeldOutRowsPerCall;
    c["missing_layers"] = plan.missing;
    m["calibration"] = c;
  } else {
    m["calibration"] = nullptr;
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
  json layers = json::array();
  double sum_out = 0;
  double sum_dq = 0, sum_rtn = 0;
  std::size_t counted = 0;
  summary.worst_sqnr_db = std::numeric_limits<double>::infinity();
  for (std::size_t i = 0; i < records.size(); ++i) {
    const SelectedLayer& sel = selection.layers[i];
    const LinearLayer& l = *sel.layer;
    const LayerRecord& r = records[i];
    const std::string file = pack_file_name(l.name);
    std::error_code size_ec;
    const std::uint64_t npz_size = fs::file_size(o.output / file, size_ec);
    DQ_CHECK(!size_ec, io, "{}: cannot read the size: {}", (o.output / file).string(), size_ec.message());
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
    e["weight_xxh128"] = weight_digests[i];
    e["npz"] = {{"name", file}, {"size", npz_size}, {"xxh128", r.npz_xxh128}};
    e["quantized"] = {{"shard", layer_shard[i]}, {"bytes", r.part_bytes}, {"xxh128", r.part_xxh128}};
    e["quality"] = {{"duquant", quality_json(r.quality.weight_norm2, r.quality.duquant_err2)},
                    {"rtn", quality_json(r.quality.weight_norm2, r.quality.rtn_err2)}};
    e["conformance"] = conformance_json(r.quality);
    if (r.calibration.steps > 0) {
      const CalibrationFigures& f = r.calibration;
      json c;
      c["source"] = plan.source_of.at(l.name);
      c["steps"] = f.steps;
      c["tokens"] = f.tokens;
      c["held_out_calls"] = f.held_out_calls;
      c["held_out_rows"] = f.held_out_rows;
      const bool measured = f.held_out_rows > 0 && f.output_fp2 > 0;
      const double rel = measured ? std::sqrt(f.output_err2 / f.output_fp2) : 0.0;
      c["output_rel_error"] = measured ? json(rel) : json(nullptr);
      c["input_xxh128"] = f.input_xxh128;
      e["calibration"] = c;
      ++summary.calibrated;
      if (measured) {
        ++summary.held_out_layers;
        sum_out += rel;
        if (rel > summary.worst_output_rel_error) {
          summary.worst_output_rel_error = rel;
          summary.worst_output_layer = l.name;
        }
      }
    } else {
      e["calibration"] = nullptr;
    }
    if (r.smoothed) {
      const SmoothGroup* g = plan.smoothing_group(l.name);
      e["smoothing"] = {{"group", g ? g->key : l.name}, {"folded", !o.fold_smoothing.empty()}};
      if (const auto d = folded_digests.find(l.weight->stored_name); d != folded_digests.end())
        e["smoothing"]["folded_weight_xxh128"] = d->second;
      ++summary.smoothed;
    } else {
      e["smoothing"] = nullptr;
    }
    layers.push_back(std::move(e));
    const auto dq = sqnr_db(r.quality.weight_norm2, r.quality.duquant_err2);
    const auto rtn = sqnr_db(r.quality.weight_norm2, r.quality.rtn_err2);
    if (dq && rtn) {
      sum_dq += *dq;
      sum_rtn += *rtn;
      ++counted;
      if (*dq < summary.worst_sqnr_db) {
        summary.worst_sqnr_db = *dq;
        summary.worst_layer = l.name;
      }
    }
  }
  m["layers"] = layers;
  write_text_atomic(o.output / kManifestName, formats::dump_json(m, 2) + "\n");
  pack_output::remove_work_folder(work);

  summary.weight_bytes = bytes_total;
  summary.shards = n;
  summary.mean_sqnr_db = counted ? sum_dq / static_cast<double>(counted) : 0;
  summary.mean_rtn_sqnr_db = counted ? sum_rtn / static_cast<double>(counted) : 0;
  if (counted == 0) summary.worst_sqnr_db = 0;
  summary.mean_output_rel_error = summary.held_out_layers ? sum_out / static_cast<double>(summary.held_out_layers) : 0;
  return summary;
}

}  // namespace duquant

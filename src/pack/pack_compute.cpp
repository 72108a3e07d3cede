// The compute stage of `duquant pack` (pack_stages.hpp): every layer without a record is read,
// computed by the devices and finished (npz, .part, record).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <future>
#include <limits>
#include <memory>
#include <optional>
#include <utility>

#include "formats/atomic_file.hpp"
#include "pack/pack_stages.hpp"
#include "pack_internal.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace fs = std::filesystem;
using pack_internal::seconds_since;

namespace {

// A layer's weight and what the engine computed from it.
struct ComputedLayer {
  LayerInput input;
  LayerMath math;
  LayerEngine* engine = nullptr;  // the engine that computed it
  double read_seconds = 0, compute_seconds = 0;
};

// Reads and computes the layers to pack, handing them out in order. On the CPU each layer is
// computed when asked for (the math uses every core) while the next one is read. With N devices,
// up to N layers are computed at once (layer k on engine k mod N) while the next one is read; the
// results do not depend on this, since each layer's math depends on that layer alone.
class LayerPipeline {
 public:
  LayerPipeline(std::vector<std::function<LayerInput()>> readers, DevicePlan& devices, const QuantConfig& q,
                std::vector<std::pair<int, std::string>> layers)
      : readers_(std::move(readers)),
        devices_(devices),
        q_(q),
        layers_(std::move(layers)),
        reads_(readers_.size()),
        computes_(readers_.size()) {}
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
    if (!devices_.overlap) {  // the CPU: the next layer is read while this one is computed
      std::pair<LayerInput, double> in = k < reads_.size() && reads_[k].valid() ? reads_[k].get() : read(k);
      if (k + 1 < readers_.size() && !reads_[k + 1].valid())
        reads_[k + 1] = std::async(std::launch::async, [this, j = k + 1] { return read(j); });
      return compute(k, std::move(in));
    }
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

// The pipeline over the layers without a record, in order.
LayerPipeline pipeline_of_missing(const PackRun& run, DevicePlan& devices, const PackState& state) {
  std::vector<std::function<LayerInput()>> readers;
  std::vector<std::pair<int, std::string>> to_pack;
  const formats::Checkpoint& ckpt = run.source.checkpoint();
  const CalibrationPlan& plan = run.plan;
  for (std::size_t i = 0; i < run.layer_count(); ++i) {
    if (state.records[i]) continue;
    const SelectedLayer* sel = &run.source.selection.layers[i];
    const std::size_t nth = readers.size() + 1;
    readers.push_back([&ckpt, &plan, sel, nth] {
      LayerInput in = load_layer_input(ckpt, *sel, plan.for_layer(*sel->layer));
      pack_internal::maybe_kill(fmt::format("read:{}", nth));
      return in;
    });
    to_pack.emplace_back(sel->wbits, sel->layer->name);
  }
  return LayerPipeline(std::move(readers), devices, run.options.config.quant, std::move(to_pack));
}

// Finishes the i-th layer from what the pipeline computed: its npz, then its .part and, last, its
// record, whose presence means the layer is complete.
LayerRecord finish_and_record(const PackRun& run, std::size_t i, const ComputedLayer& computed, PackState& state,
                              ShardStream* stream) {
  const SelectedLayer& sel = run.source.selection.layers[i];
  const LayerCalibration calib = run.plan.for_layer(*sel.layer);
  // The digests of the very bytes the layer was computed from (one copy, load_layer_input): a
  // record can never pair one version of the weight with a pack of another.
  state.weight_xxh128[i] = computed.input.weight_xxh128;
  state.bias_xxh128[i] = computed.input.bias_xxh128;
  const fs::path npz_path = run.npz_path(i);
  // The engine of this layer is idle now: the next layer on it starts after this one is taken.
  const PackedLayer packed =
      finish_layer(sel, run.options.config.quant, npz_path, calib, computed.input, computed.math, computed.engine);
  LayerRecord r;
  r.fingerprint = run.fingerprint(i, state.weight_xxh128[i], state.bias_xxh128[i],
                                  calib.has_calls() ? packed.calibration.input_xxh128 : std::string("none"));
  r.calibration = packed.calibration;
  r.smoothed = !calib.smooth.empty();
  r.npz_xxh128 = xxh128_file(npz_path);
  r.part_xxh128 = xxh128_hex(packed.data);
  r.part_bytes = packed.data.size();
  r.quality = packed.quality;
  // The bytes go once to disk: into the stream when it takes them (its file, in the work folder,
  // survives a failed run for --resume), else into the layer's .part; the record, written last, says
  // which.
  if (stream != nullptr)
    r.stream_offset = append_to_shard_stream(*stream, run, i, r, std::as_bytes(std::span(packed.data)));
  if (!r.stream_offset) pack_internal::write_text_atomic(run.part_path(i), packed.data);
  pack_internal::write_text_atomic(run.record_path(i),
                                   layer_record_text(r, fmt::format("{}/{}", run.algorithm, kAlgorithmVersion)));
  return r;
}

PackProgress progress_of(const PackRun& run, std::size_t i, const PackState& state, std::uint64_t bytes_done,
                         std::uint64_t bytes_total) {
  const SelectedLayer& sel = run.source.selection.layers[i];
  const LinearLayer& layer = *sel.layer;
  const LayerQuality& quality = state.records[i]->quality;
  PackProgress p;
  p.index = i + 1;
  p.total = run.layer_count();
  p.name = layer.name;
  p.out_features = layer.out_features;
  p.in_features = layer.in_features;
  p.wbits = sel.wbits;
  p.reused = state.reused[i];
  p.bytes_done = bytes_done;
  p.bytes_total = bytes_total;
  p.sqnr_db = pack_internal::sqnr_db(quality.weight_norm2, quality.duquant_err2)
                  .value_or(std::numeric_limits<double>::infinity());
  return p;
}

std::uint64_t stored_bytes(const LinearLayer& layer) {
  return layer.weight->nbytes + (layer.bias ? layer.bias->nbytes : 0);
}

}  // namespace

void compute_stage(const PackRun& run, DevicePlan& devices, PackState& state, PackSummary& summary,
                   const std::function<void(const PackProgress&)>& progress) {
  const std::size_t count = run.layer_count();
  std::uint64_t bytes_total = 0, bytes_done = 0;
  for (const SelectedLayer& s : run.source.selection.layers) bytes_total += stored_bytes(*s.layer);
  summary.weight_bytes = bytes_total;
  LayerPipeline pipeline = pipeline_of_missing(run, devices, state);
  std::size_t newly_packed = 0;
  // Each layer's npz, .part and record are committed without fsync: --resume trusts them only by
  // the digests in the record, and every npz is synced below before anything refers to it.
  std::optional<formats::DeferredSync> deferred_sync(std::in_place);
  // A layer's files are written on a writer thread while the next layer is computed; the layers
  // are still finished one at a time and in order, and each is counted done (progress, the kill
  // seam, its pages released) only once its record is written.
  struct Finishing {
    std::size_t index = 0;
    double read_seconds = 0, compute_seconds = 0;
    std::future<std::pair<LayerRecord, double>> record;  // and the seconds the writer spent on it
  };
  std::optional<Finishing> finishing;
  const auto account = [&](std::size_t i) {
    run.release(i);
    summary.reused += state.reused[i] ? 1 : 0;
    bytes_done += stored_bytes(*run.source.selection.layers[i].layer);
    if (progress) progress(progress_of(run, i, state, bytes_done, bytes_total));
  };
  const auto complete_finishing = [&] {
    if (!finishing) return;
    auto [record, seconds] = finishing->record.get();  // rethrows the writer's error
    state.records[finishing->index] = std::move(record);
    ++newly_packed;
    summary.read_seconds += finishing->read_seconds;
    summary.compute_seconds += finishing->compute_seconds;
    summary.finish_seconds += seconds;
    pack_internal::maybe_kill(fmt::format("layer:{}", newly_packed));
    account(finishing->index);
    finishing.reset();
  };
  // Not with devices computing on their own threads: finishing may ask the layer's engine for the
  // calibration statistics, which an engine answers only between computes.
  const bool writer_thread = !devices.overlap;
  state.stream = open_shard_stream(run, state);
  std::size_t taken = 0;
  for (std::size_t i = 0; i < count; ++i) {
    if (state.records[i]) {
      complete_finishing();
      account(i);
      continue;
    }
    auto computed = std::make_shared<ComputedLayer>(pipeline.take(taken++));
    complete_finishing();  // the previous layer's files, written while this one was computed
    Finishing f;
    f.index = i;
    f.read_seconds = computed->read_seconds;
    f.compute_seconds = computed->compute_seconds;
    f.record = std::async(writer_thread ? std::launch::async : std::launch::deferred, [&run, &state, i, computed] {
      const formats::DeferredSync writer_sync;  // this thread's commits are synced below, as the main thread's
      const auto start = std::chrono::steady_clock::now();
      LayerRecord r = finish_and_record(run, i, *computed, state, state.stream.get());
      return std::make_pair(std::move(r), seconds_since(start));
    });
    finishing = std::move(f);
    if (!writer_thread) complete_finishing();
  }
  complete_finishing();
  // An abandoned stream is closed; its file stays in the work folder, where the records of the layers
  // streamed into it find their bytes.
  if (state.stream && !shard_stream_complete(*state.stream)) state.stream.reset();

  deferred_sync.reset();
  // Every npz, reused or new, durable (with the folder's names) before the shards and the manifest.
  std::vector<fs::path> npz_files;
  npz_files.reserve(count);
  for (std::size_t i = 0; i < count; ++i) npz_files.push_back(run.npz_path(i));
  formats::sync_files(npz_files, run.options.output);

  // Every layer was read from the checkpoint as it was when opened, or the pack is not published.
  run.source.checkpoint().check_unchanged("packing the layers");
}

}  // namespace duquant

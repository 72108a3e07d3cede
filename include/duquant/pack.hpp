// `duquant pack`: the whole pipeline from a checkpoint to a pack directory.
//
// Layers are packed one at a time (each with every core), so memory is bounded by the largest
// layer; with CUDA devices, one layer per device is computed while the next one is read. Every file is written under a
// temporary name and renamed; per-layer results are kept in
// `<out>/.duquant-work/` until quantized.safetensors and, last, manifest.json are written, so an
// interrupted run continues with --resume and ends with the same bytes as an uninterrupted one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/quant_config.hpp"

namespace duquant {

class LayerEngine;  // engine/layer_engine.hpp

// `duquant import` (duquant/convert.hpp): the layers' transforms are a runtime-written pack's,
// computed by `make_engine` from its npz files (which it also hands back to be copied as they are).
struct ImportedTransforms {
  std::filesystem::path source;                               // the runtime's pack folder, as given
  std::size_t source_npz = 0;                                 // its npz files
  std::vector<std::pair<std::string, std::string>> skipped;   // selected layers left out: name, why
  std::vector<std::string> ignored;                           // npz files of layers the selection does not pick
  std::function<std::unique_ptr<LayerEngine>()> make_engine;  // one engine for every layer
};

struct PackOptions {
  std::filesystem::path checkpoint;
  std::filesystem::path output;
  RunConfig config;
  bool resume = false;
  bool force = false;
  bool no_lock = false;                           // write without the folder's lock where the file system has none
  std::filesystem::path config_file;              // --config, read completely before the first write (an input)
  std::uint64_t max_shard_bytes = 4'000'000'000;  // quantized.safetensors is sharded past this
  // Calibration (docs/calibration.md): an activation dump, smoothing, folding.
  std::filesystem::path calib;                   // empty: no calibration
  std::optional<double> smooth_alpha;            // smoothing strength α in [0, 1]; needs `calib`
  std::filesystem::path fold_smoothing;          // write the checkpoint with 1/s folded into its norms here
  bool strict = false;                           // selected layers missing from the dump are an error
  std::function<void(const std::string&)> warn;  // one-line warnings (missing layers, ...)
  // Compute device (layer_engine.hpp, docs/cuda-backend.md): "cpu", "auto", "cuda", "cuda:0,1".
  std::string device = "cpu";
  std::function<void(const std::string&)> notice;  // one-line notices (auto fell back to the CPU)
  // Set by run_import only: the skipped layers leave the selection, the engine replaces --device's
  // and the manifest records the import.
  std::optional<ImportedTransforms> imported;
};

struct PackProgress {
  std::size_t index = 0;  // 1-based
  std::size_t total = 0;
  std::string name;
  std::uint64_t out_features = 0, in_features = 0;
  int wbits = 0;
  bool reused = false;           // taken from an earlier run (--resume)
  std::uint64_t bytes_done = 0;  // weight bytes of the layers finished so far
  std::uint64_t bytes_total = 0;
  double sqnr_db = 0;
};

struct PackSummary {
  std::size_t layers = 0;
  std::size_t reused = 0;
  std::uint64_t weight_bytes = 0;     // bytes of the selected weights and biases in the checkpoint
  std::uint64_t quantized_bytes = 0;  // bytes of quantized.safetensors (all shards)
  std::uint64_t npz_bytes = 0;
  double mean_sqnr_db = 0, worst_sqnr_db = 0, mean_rtn_sqnr_db = 0;
  std::string worst_layer;
  int shards = 0;
  // Calibration
  std::size_t calibrated = 0, smoothed = 0, held_out_layers = 0;
  double mean_output_rel_error = 0, worst_output_rel_error = 0;  // over layers with held-out calls
  std::string worst_output_layer;
  // Where the time went, summed over the layers packed in this run (with a GPU reading the next
  // layer overlaps computing the current one, so the sum can exceed the wall time).
  std::string device;          // the engines used: "cpu", "cuda:0,1"
  double read_seconds = 0;     // weights read and converted to float32 (and smoothed)
  double compute_seconds = 0;  // transform, sign choice, scale search, codes (the engine)
  double finish_seconds = 0;   // npz, conformance vectors, calibration, records
};

// Runs the pack. `progress` is called after each layer. Throws duquant::Error.
PackSummary run_pack(const PackOptions& options, const std::function<void(const PackProgress&)>& progress);

}  // namespace duquant

// The stages of `duquant pack` (run_pack, duquant/pack.hpp): resume -> compute -> assemble ->
// manifest. Each stage is a function of the run's fixed inputs (PackRun) and of the record the
// stages pass on (PackState), so that each can be run and tested alone. docs/architecture.md,
// "The pack pipeline"; docs/reliability.md for what the work folder promises.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "duquant/pack.hpp"
#include "engine/layer_engine.hpp"
#include "formats/digest.hpp"
#include "pack/calibration_plan.hpp"
#include "pack/pack_layer.hpp"
#include "select/checkpoint_names.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"

namespace duquant {

// What a finished layer leaves in the work folder (`<file>.json` beside `<file>.part`), enough to
// skip it on --resume and to write its manifest entry.
struct LayerRecord {
  std::string fingerprint;
  std::string npz_xxh128;
  std::string part_xxh128;
  std::uint64_t part_bytes = 0;
  LayerQuality quality;
  CalibrationFigures calibration;
  bool smoothed = false;
  // Where the layer's bytes are: its `.part` file, or (a fresh single-shard pack, which streams
  // quantized.safetensors while computing) this offset of the work folder's stream file.
  std::optional<std::uint64_t> stream_offset;
};

// The record's file text (exact doubles, so that a resumed manifest is identical), and the
// record read back: nullopt when the file is missing, not a regular file pack wrote, damaged, or of
// another fingerprint (the layer is packed again); a FIFO or device is refused (io).
// A record of another algorithm (or version) than `algorithm` is refused (usage): --resume does not
// mix layers of two algorithms; a record without one is of version 1 of the CPU reference.
std::string layer_record_text(const LayerRecord& r, const std::string& algorithm);
std::optional<LayerRecord> read_layer_record(const std::filesystem::path& path, const std::string& fingerprint,
                                             const std::string& algorithm);

// The checkpoint and the layers to pack, opened and checked before anything is created: a
// selection that matches nothing, --max-shard-size, shapes, biases and npz file names. Neither
// copied nor moved: the selection points into the layers, the layers into the checkpoint.
struct PackSource {
  explicit PackSource(const PackOptions& o);
  PackSource(const PackSource&) = delete;
  PackSource& operator=(const PackSource&) = delete;

  OpenedCheckpoint opened;
  std::vector<LinearLayer> linears;
  Selection selection;
  const formats::Checkpoint& checkpoint() const { return opened.checkpoint; }
};

// What every stage reads and none changes: the options, the source, the calibration plan, the
// work folder and the layers' identity.
struct PackRun {
  PackRun(const PackOptions& o, const PackSource& source, const CalibrationPlan& plan);

  const PackOptions& options;
  const PackSource& source;
  const CalibrationPlan& plan;
  std::filesystem::path work;                         // <out>/.duquant-work
  std::string config_text;                            // the configuration as one line of JSON
  Xxh128 fingerprint_prefix;                          // tool version and configuration, hashed once
  std::map<std::string, std::string> folded_digests;  // stored weight name -> digest in the folded copy
  std::string algorithm = "duquant-cpu";              // of the devices that compute (layout.hpp): name

  std::size_t layer_count() const { return source.selection.layers.size(); }
  // The npz and work-folder paths of the i-th selected layer.
  std::filesystem::path npz_path(std::size_t i) const;
  std::filesystem::path part_path(std::size_t i) const;
  std::filesystem::path record_path(std::size_t i) const;
  // The work folder's quantized.safetensors in the making (ShardStream): kept when a run fails, so
  // that --resume finds the layers streamed into it.
  std::filesystem::path stream_path() const;
  // The i-th layer's tensor bytes as its record places them (.part, or the stream file: in the work
  // folder, or already renamed to quantized.safetensors), checked against the
  // record's size and digest; io error naming the file otherwise (`stage` says when).
  std::string layer_bytes(std::size_t i, const LayerRecord& r, const char* stage) const;
  // The layer's identity: tool, configuration, name, bits, weight and bias digests, and the digest
  // of every calibration value it uses ("none" without calls).
  std::string fingerprint(std::size_t i, const std::string& weight_xxh128, const std::string& bias_xxh128,
                          const std::string& calib_digest) const;
  // Releases the layer's weight and bias pages: resident memory follows the largest layer.
  void release(std::size_t i) const;
};

// --fold-smoothing: writes the checkpoint copy with 1/s folded into its norms (through a link, the
// file it points to) and returns the folded weights' digests; empty without the option.
std::map<std::string, std::string> fold_smoothing_stage(const PackOptions& o, const PackSource& source,
                                                        const CalibrationPlan& plan);

// The record the stages pass on, one entry per selected layer in order.
// quantized.safetensors written while the layers are computed: on a fresh pack whose tensors fit
// one shard, each layer's bytes are appended (by the writer of its .part, from the same memory) as
// soon as its record is written, so the assemble stage has only to commit the file instead of
// copying every .part. Anything unexpected (a layer out of order, other tensors than planned)
// abandons it, and the assemble stage builds the file from the .part files as always.
class ShardStream;

struct PackState {
  explicit PackState(std::size_t count)
      : records(count), reused(count, false), weight_xxh128(count), bias_xxh128(count) {}
  std::vector<std::optional<LayerRecord>> records;      // after resume: the reused layers; after compute: every one
  std::vector<bool> reused;                             // taken from an earlier run
  std::vector<std::string> weight_xxh128, bias_xxh128;  // "" until the layer's bytes are read
  std::shared_ptr<ShardStream> stream;                  // null: assemble from the .part files
};

// The stream for a pack none of whose layers is reused and whose tensors fit one shard; null
// otherwise. Its temporary file is removed unless assemble_stage commits it.
std::shared_ptr<ShardStream> open_shard_stream(const PackRun& run, const PackState& state);
// Appends the i-th layer's tensors (`data`; `r` its record) when i is the next layer and its tensors
// are the planned ones, and returns their offset in the stream file; else abandons the stream and
// returns nullopt (the layer then needs its .part). Write errors throw.
std::optional<std::uint64_t> append_to_shard_stream(ShardStream& stream, const PackRun& run, std::size_t i,
                                                    const LayerRecord& r, std::span<const std::byte> data);
// Every layer appended, in order, as planned.
bool shard_stream_complete(const ShardStream& stream);

// Resume: with --resume, the layers an earlier run finished, recognised by fingerprint and by the
// digests of their npz and .part; every other layer is left empty, to be computed. Without
// --resume, nothing is read.
PackState resume_stage(const PackRun& run);

// Compute: reads, computes and finishes every layer without a record (npz, .part, record, in that
// order, each committed without fsync), calls `progress` after each layer, then syncs every npz with
// the folder and checks that the checkpoint did not change. Fills `summary`'s reused count and times.
void compute_stage(const PackRun& run, DevicePlan& devices, PackState& state, PackSummary& summary,
                   const std::function<void(const PackProgress&)>& progress);

// One file of quantized.safetensors (a shard, or the index) as the manifest lists it.
struct PackedFile {
  std::string name;
  std::uint64_t size = 0;
  std::string xxh128;
};
struct AssembledPack {
  std::vector<PackedFile> files;         // the shards in order, then the index when sharded
  std::vector<std::string> layer_shard;  // per layer: the shard holding its tensors
  int shards = 0;
  std::uint64_t quantized_bytes = 0;  // of every shard
};

// Assemble: quantized.safetensors (sharded past --max-shard-size, layers never split) from the
// .part files, each checked against its record's digest again, and the index when sharded.
AssembledPack assemble_stage(const PackRun& run, const PackState& state);

// Manifest: writes manifest.json from the records and the assembled files, last, and fills
// `summary`'s figures (npz bytes, quality, calibration, shards).
void manifest_stage(const PackRun& run, const PackState& state, const AssembledPack& assembled, PackSummary& summary);

}  // namespace duquant

// `duquant inspect`: what a checkpoint holds and what each preset would pack from it, or what a
// pack directory holds and how good each of its layers is (docs/inspect.md).
//
// The functions build plain reports; inspect_render turns them into text (aligned, 100 columns)
// or one JSON document, html_report.hpp into a self-contained page. Every problem with an input
// is a duquant::Error naming the file and, where it applies, the layer.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/quant_config.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace duquant {

// ---- layer classification -------------------------------------------------------------------

// Which part of the policy a linear layer belongs to, decided by pi0.5 and GR00T N1.5 module
// names (docs/inspect.md lists the rules).
enum class LayerGroup { vision, language_model, action_expert, other };
inline constexpr LayerGroup kLayerGroups[] = {LayerGroup::vision, LayerGroup::language_model, LayerGroup::action_expert,
                                              LayerGroup::other};
LayerGroup layer_group(std::string_view module);
std::string_view group_key(LayerGroup group) noexcept;    // "vision", "language_model", ...
std::string_view group_title(LayerGroup group) noexcept;  // "vision", "language model", ...

// The block type: the module's last name component without "_proj" ("q", "k", "down", "fc1",
// "dense", "linear", ...).
std::string block_type(std::string_view module);

// How heads lie in an attention projection's weight [O, I]: q/k/v hold a head's rows
// [h*hd, (h+1)*hd); o_proj (and SigLIP's out_proj) a head's columns.
enum class HeadAxis { none, rows, columns };
HeadAxis head_axis(std::string_view module);

// ---- head dimensions ------------------------------------------------------------------------

// Head dimension per group: from --head-dim (every group), or from a Hugging Face style
// config.json beside the checkpoint (top-level keys for every group, nested *text*/*llm*/
// *language* objects for the language model, *vision* for the vision tower, *expert*/*action*
// for the action expert; `head_dim`, `attention_head_dim`, or hidden_size / num_attention_heads).
struct HeadDims {
  std::optional<std::int64_t> all;
  std::map<LayerGroup, std::int64_t> by_group;
  std::string source;                 // "--head-dim", "<dir>/config.json", or empty
  std::vector<std::string> warnings;  // a config.json that could not be used, and why

  std::optional<std::int64_t> of(std::string_view module) const;
  bool known() const { return all.has_value() || !by_group.empty(); }
};

// Looks for config.json beside `checkpoint` (in it when it is a folder). Absence is no error; an
// unreadable or malformed file gives a warning and no head dimension.
HeadDims head_dims_from_config(const std::filesystem::path& checkpoint);

// ---- checkpoint inspection --------------------------------------------------------------------

struct GroupStats {
  LayerGroup group{};
  std::size_t layers = 0;
  std::size_t attention_layers = 0;
  std::uint64_t parameters = 0;               // weights and biases
  std::uint64_t bytes = 0;                    // as stored
  std::map<std::string, std::size_t> dtypes;  // weight dtype -> layers
};

struct PresetEstimate {
  std::string name;
  std::string description;
  std::size_t layers = 0;
  std::uint64_t bytes_in = 0;           // weights and biases of the selected layers, as stored
  std::uint64_t packed_bytes = 0;       // their estimated size in quantized.safetensors
  std::uint64_t conformance_bytes = 0;  // of which conformance vectors
  int block = 0, block_out = 0, wbits_default = 0;
  std::vector<std::pair<std::string, int>> selected;  // the layers it packs and their weight bits, in module order
};

struct CheckpointReport {
  std::string source;
  std::size_t files = 0, tensors = 0, linears = 0;
  std::vector<std::string> linear_names;  // every linear layer, in module order
  std::vector<GroupStats> groups;  // in kLayerGroups order, all four
  std::vector<PresetEstimate> presets;
  HeadDims head_dims;
  std::vector<std::string> warnings;
  // Written by `duquant bake`: its provenance (safetensors metadata "duquant.*"), else empty.
  struct Baked {
    std::string pack;             // the pack folder's name
    std::string manifest_xxh128;  // of its manifest.json
    std::string dtype;            // --dtype
    std::string activations;      // the A8 note
  };
  std::optional<Baked> baked;
};

// Bytes a layer takes in quantized.safetensors (its tensors as the pack's layout lists them,
// docs/pack-format.md): codes, scales, perm when permuting, R_in, R_out unless row_rot is 0, the
// bias (`bias_bytes`, as stored), and the conformance vectors test_x, test_y_fp, test_y_q.
std::uint64_t packed_layer_bytes(std::uint64_t out_features, std::uint64_t in_features, int wbits,
                                 const QuantConfig& quant, std::uint64_t bias_bytes);
// The conformance vectors' part of that.
std::uint64_t conformance_bytes(std::uint64_t out_features, std::uint64_t in_features);

CheckpointReport inspect_checkpoint(const formats::Checkpoint& checkpoint, HeadDims head_dims);

// ---- pack inspection --------------------------------------------------------------------------

struct Quality {
  double rel_fro_error = 0;
  std::optional<double> sqnr_db;  // null for an exact or all-zero layer
};

struct HeadError {
  std::int64_t head = 0;
  double rel_fro_error = 0;
  std::optional<double> sqnr_db;
};

struct PackLayerInfo {
  std::string name;
  LayerGroup group{};
  std::string block_type;
  std::uint64_t out_features = 0, in_features = 0;
  std::string dtype;         // empty when unknown (a runtime pack)
  int wbits = 0, abits = 0;  // 0 when unknown
  std::int64_t block = 0, block_out = 0;
  bool permute = false;
  double lambda_smooth = 0;
  bool bias = false;
  std::uint64_t bytes_in = 0;      // weight (and bias, assumed in the weight's dtype) as stored
  std::uint64_t packed_bytes = 0;  // the layer's bytes in quantized.safetensors
  std::string npz;                 // file name
  std::uint64_t npz_bytes = 0;
  std::string weight_xxh128;
  std::optional<Quality> duquant, rtn;
  // Calibrated packs: the output error on held-out calls (null: not measured) and smoothing.
  bool calibrated = false, smoothed = false;
  std::optional<double> output_rel_error;
  // Per-head error (inspect --checkpoint with a known head dimension).
  std::int64_t head_dim = 0;
  std::vector<HeadError> heads;
  std::string heads_note;  // why there are no per-head figures, when that was asked for
};

struct PackReport {
  std::string path;
  bool has_manifest = false;  // false: npz files only (a pack the Python runtime wrote)
  std::string tool;           // "duquant 0.1.0"
  nlohmann::ordered_json config = nlohmann::ordered_json::object();  // the manifest's, as written
  std::string checkpoint_source;
  std::string imported_from;                // `duquant import`: the runtime's folder (empty: packed here)
  std::vector<std::string> import_skipped;  // layers the import left out
  std::vector<PackLayerInfo> layers;       // worst DuQuant SQNR first (runtime packs: by name)
  std::vector<std::size_t> model_order;    // indices into `layers` in module order (block 2 before block 10)
  std::uint64_t quantized_file_bytes = 0;  // quantized.safetensors (+ shards, index) as listed
  std::string head_dim_source;
  std::vector<std::string> warnings;
  std::vector<std::string> notes;
};

// True for a folder that holds manifest.json or *.npz files.
bool looks_like_pack(const std::filesystem::path& path);

// Reads manifest.json (or, without one, every *.npz's meta). Throws duquant::Error: io for a
// missing or unreadable folder, format for a manifest or npz that violates the pack format.
PackReport inspect_pack(const std::filesystem::path& dir);

// Warnings for q/k/v layers whose block_out does not divide the head dimension (an output
// rotation then mixes rows of two heads).
void add_block_out_warnings(PackReport& report, const HeadDims& head_dims);

// Per-head error of attention layers: the checkpoint's weight against the pack's dequantized
// weight, for every layer whose head dimension is known. Resorts nothing.
void add_head_errors(PackReport& report, const formats::Checkpoint& checkpoint, const HeadDims& head_dims);

// Per-head error of `w` against `w_hat` (both [O, I] row-major) along `axis` with head width hd.
std::vector<HeadError> head_errors(const float* w, const float* w_hat, std::uint64_t out_features,
                                   std::uint64_t in_features, HeadAxis axis, std::int64_t head_dim);

// ---- rendering ------------------------------------------------------------------------------

std::string checkpoint_text(const CheckpointReport& report);
nlohmann::ordered_json checkpoint_json(const CheckpointReport& report);
std::string pack_text(const PackReport& report);
nlohmann::ordered_json pack_json(const PackReport& report);

// r.model_order, or (a report built by hand) the module order of r.layers' names.
std::vector<std::size_t> model_order_of(const PackReport& r);

// The longest common prefix of the layers' names that ends at a '.' (names are shown without it).
std::string common_name_prefix(const std::vector<PackLayerInfo>& layers);

// "1.23 MB", "456 B", ...
std::string human_bytes(std::uint64_t bytes);

}  // namespace duquant

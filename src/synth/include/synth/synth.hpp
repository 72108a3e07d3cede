// `duquant synth`: a deterministic checkpoint made by the tool itself -- the embedded default for
// demos, tests and benchmarks -- shaped like pi0.5 or like GR00T N1.5.
//
// pi0.5: its module names and shapes (reference section 6) with every width divided by `factor`
// (1, 2, 4, 8 or 16; factor 16 with 2 layers per stack gives exactly the shapes of the fixture
// pi05_tiny.safetensors). One file, unless more shards are asked for.
//
// GR00T N1.5: its module names and shapes (backbone vision tower, language model and connector;
// action head with its DiT, VL self-attention, category-specific encoders/decoder and embedding
// tables) with every model width divided by `factor`; counts that are not widths (32 embodiments,
// the 64 state and 32 action dimensions, 1024 positions, 32 future tokens, the 3x14x14 patch) are
// kept. Written sharded, like NVIDIA's releases: a folder of model-0000K-of-0000N.safetensors files
// and model.safetensors.index.json.
//
// Values are a pure function of (seed, tensor, element): the bytes do not depend on the thread
// count, and neither the name prefix nor the shard count changes any value. A few input channels
// of every 2-D weight are outliers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/dtype.hpp"
#include "formats/safetensors_writer.hpp"

namespace duquant {

enum class SynthModel { pi05, gr00t_n15 };

// "pi05" or "gr00t-n1.5" (the --model spellings).
const char* synth_model_name(SynthModel model) noexcept;
std::optional<SynthModel> parse_synth_model(std::string_view name) noexcept;

struct SynthOptions {
  // A layer or shard count left at this value takes the model's default.
  static constexpr int kModelDefault = -1;

  SynthModel model = SynthModel::pi05;
  int factor = 1;
  int llm_layers = kModelDefault;     // pi05 18, gr00t-n1.5 12
  int expert_layers = kModelDefault;  // pi05 only: 18
  int vision_layers = kModelDefault;  // 27
  int dit_layers = kModelDefault;     // gr00t-n1.5 only: 16
  int vl_layers = kModelDefault;      // gr00t-n1.5 only: 4 (action_head.vl_self_attention)
  formats::DType dtype = formats::DType::BF16;
  std::uint64_t seed = 0;
  int outlier_channels = 4;    // per 2-D weight
  float outlier_gain = 12.0f;  // how much larger those input channels are
  std::string prefix;          // prepended to every tensor name ("model.", "_groot_model.")
  int shards = kModelDefault;  // pi05 1, gr00t-n1.5 2; 1 to 99
};

// Validates the options (throws duquant::Error, usage, naming the option and value) and returns
// them with every default filled in.
SynthOptions resolve_synth_options(const SynthOptions& options);

// Lists the tensors, in storage (module) order, prefix included. Validates like
// resolve_synth_options.
std::vector<formats::TensorSpec> synth_tensors(const SynthOptions& options);

// The value of element `index` of tensor number `tensor` (in synth_tensors order), before
// conversion to the output dtype.
float synth_value(const SynthOptions& options, const formats::TensorSpec& spec, std::uint64_t tensor,
                  std::uint64_t index);

// True when the checkpoint is written as a folder (GR00T N1.5 always; pi0.5 with 2 shards or more).
bool synth_writes_folder(const SynthOptions& options);

// "model-00002-of-00003.safetensors": the file name of shard `k` (1-based) of `n`.
std::string synth_shard_name(int k, int n);

// The index of the first tensor of every shard: tensors in order, split by cumulative byte size
// into `shards` non-empty runs. Throws duquant::Error (usage) when there are fewer tensors.
std::vector<std::size_t> synth_shard_starts(const std::vector<formats::TensorSpec>& tensors, int shards);

// The `duquant.synth` metadata value: the model and every option. A pi0.5 checkpoint written with
// the original options (one file, no prefix, 4 outliers) keeps the original record, without
// `model=`, so that its bytes are unchanged.
std::string synth_metadata(const SynthOptions& options);

// Writes the checkpoint, streaming (memory does not grow with the size), every file atomically.
// A single file goes to `path`. A folder is created when missing; the index of an earlier
// checkpoint there is removed first, the shards are written, the index last, and then shard files
// of an earlier checkpoint (model-NNNNN-of-NNNNN.safetensors) that are not part of this one are
// removed; nothing else in the folder is touched. Returns the bytes written (all files).
std::uint64_t write_synth_checkpoint(const std::filesystem::path& path, const SynthOptions& options);

}  // namespace duquant

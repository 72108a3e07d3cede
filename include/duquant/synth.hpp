// `duquant synth`: a deterministic pi0.5-shaped checkpoint made by the tool itself -- the embedded
// default for demos, tests and benchmarks.
//
// Names and shapes are pi0.5's (reference section 6) with every width divided by `factor`
// (1, 2, 4, 8 or 16; factor 16 with 2 layers per stack gives exactly the shapes of the fixture
// pi05_tiny.safetensors). Values are a pure function of (seed, tensor, element): the bytes do not
// depend on the thread count. A few input channels of every linear weight are outliers.
#pragma once

#include <cstdint>
#include <filesystem>
#include <vector>

#include "formats/dtype.hpp"
#include "formats/safetensors_writer.hpp"

namespace duquant {

struct SynthOptions {
  int factor = 1;
  int llm_layers = 18;
  int expert_layers = 18;
  int vision_layers = 27;
  formats::DType dtype = formats::DType::BF16;
  std::uint64_t seed = 0;
  int outlier_channels = 4;    // per linear weight
  float outlier_gain = 12.0f;  // how much larger those input channels are
};

// Validates the options (throws duquant::Error, usage) and lists the tensors, in storage order.
std::vector<formats::TensorSpec> synth_tensors(const SynthOptions& options);

// The value of element `index` of tensor number `tensor` (in synth_tensors order), before
// conversion to the output dtype.
float synth_value(const SynthOptions& options, const formats::TensorSpec& spec, std::uint64_t tensor,
                  std::uint64_t index);

// Writes the checkpoint to `path` atomically, streaming (memory does not grow with the size).
// Returns the file size in bytes.
std::uint64_t write_synth_checkpoint(const std::filesystem::path& path, const SynthOptions& options);

}  // namespace duquant

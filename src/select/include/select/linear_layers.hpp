// The linear layers of a checkpoint: every 2-D tensor `<module>.weight`, with its 1-D
// `<module>.bias` of matching length when one exists -- except embedding tables, which the
// runtime never sees as nn.Linear: a module whose last name component contains "embed" (such as
// embed_tokens or position_embedding), a module whose last component is one of the known tables
// that carry no "embed" in their names (GR00T's future_tokens), and modules matching a
// --not-linear expression. Names are the checkpoint's after its renaming (checkpoint_names.hpp).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/safetensors_checkpoint.hpp"

namespace duquant {

struct LinearLayer {
  std::string name;                            // module name, without ".weight"
  std::string stored_name;                     // the module's name in the file (another prefix)
  const formats::TensorRef* weight = nullptr;  // [out_features, in_features]
  const formats::TensorRef* bias = nullptr;    // [out_features], or null
  std::uint64_t out_features = 0;
  std::uint64_t in_features = 0;
  // F32, F16 or BF16: only these can be quantized; other dtypes are listed and left alone.
  bool quantizable() const { return formats::converts_to_f32(weight->dtype); }
};

// True for a module name whose last component contains "embed" or is a known embedding table
// without "embed" in its name (kEmbeddingTables).
bool is_embedding_table(std::string_view module);
inline constexpr std::string_view kEmbeddingTables[] = {"future_tokens"};

// All linear layers, in module order (see module_order.hpp), less the modules that match one of
// `not_linear` (regular expressions, Python re.search semantics). Pointers stay valid while the
// checkpoint lives.
std::vector<LinearLayer> find_linear_layers(const formats::Checkpoint& checkpoint,
                                            const std::vector<std::string>& not_linear = {});

}  // namespace duquant

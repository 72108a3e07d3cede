// The linear layers of a checkpoint: every 2-D tensor `<module>.weight`, with its 1-D
// `<module>.bias` of matching length when one exists -- except embedding tables (a 2-D weight
// whose module's last name component contains "embed", such as embed_tokens or
// position_embedding), which the runtime never sees as nn.Linear.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "formats/safetensors_checkpoint.hpp"

namespace duquant {

struct LinearLayer {
  std::string name;                                // module name, without ".weight"
  const formats::TensorRef* weight = nullptr;      // [out_features, in_features]
  const formats::TensorRef* bias = nullptr;        // [out_features], or null
  std::uint64_t out_features = 0;
  std::uint64_t in_features = 0;
  // F32, F16 or BF16: only these can be quantized; other dtypes are listed and left alone.
  bool quantizable() const { return formats::converts_to_f32(weight->dtype); }
};

// True for a module name whose last component contains "embed".
bool is_embedding_table(std::string_view module);

// All linear layers, in module order (see module_order.hpp). Pointers stay valid while the
// checkpoint lives.
std::vector<LinearLayer> find_linear_layers(const formats::Checkpoint& checkpoint);

}  // namespace duquant

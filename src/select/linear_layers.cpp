#include "select/linear_layers.hpp"

#include <algorithm>
#include <iterator>

#include "base/regex.hpp"
#include "select/module_order.hpp"

namespace duquant {

bool is_embedding_table(std::string_view module) {
  const std::size_t dot = module.rfind('.');
  const std::string_view last = dot == std::string_view::npos ? module : module.substr(dot + 1);
  if (last.find("embed") != std::string_view::npos) return true;
  return std::find(std::begin(kEmbeddingTables), std::end(kEmbeddingTables), last) != std::end(kEmbeddingTables);
}

std::vector<LinearLayer> find_linear_layers(const formats::Checkpoint& checkpoint,
                                            const std::vector<std::string>& not_linear) {
  constexpr std::string_view kWeight = ".weight";
  std::vector<Regex> excluded;
  for (const std::string& pattern : not_linear) excluded.emplace_back(pattern, "--not-linear");
  std::vector<LinearLayer> found;
  for (const formats::TensorRef& t : checkpoint.tensors()) {
    if (t.shape.size() != 2 || t.name.size() <= kWeight.size() ||
        t.name.compare(t.name.size() - kWeight.size(), kWeight.size(), kWeight) != 0)
      continue;
    LinearLayer layer;
    layer.name = t.name.substr(0, t.name.size() - kWeight.size());
    if (is_embedding_table(layer.name)) continue;
    if (std::any_of(excluded.begin(), excluded.end(), [&](const Regex& r) { return r.search(layer.name); })) continue;
    layer.stored_name = t.stored_name.substr(0, t.stored_name.size() - std::min(t.stored_name.size(), kWeight.size()));
    layer.weight = &t;
    layer.out_features = t.shape[0];
    layer.in_features = t.shape[1];
    const formats::TensorRef* bias = checkpoint.find(layer.name + ".bias");
    if (bias != nullptr && bias->shape.size() == 1 && bias->shape[0] == layer.out_features) layer.bias = bias;
    found.push_back(std::move(layer));
  }
  std::vector<std::string> names;
  names.reserve(found.size());
  for (const auto& l : found) names.push_back(l.name);
  std::vector<LinearLayer> ordered;
  ordered.reserve(found.size());
  for (std::size_t i : module_order(names)) ordered.push_back(std::move(found[i]));
  return ordered;
}

}  // namespace duquant

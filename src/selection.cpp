#include "duquant/selection.hpp"

#include <algorithm>
#include <set>

#include "duquant/regex.hpp"

namespace duquant {

bool is_action_head(const std::string& name, Runtime runtime) {
  constexpr std::string_view head = "action_out_proj";
  const bool ends_in_head =
      name.size() >= head.size() && name.compare(name.size() - head.size(), head.size(), head) == 0;
  if (runtime == Runtime::gr00t)
    return ends_in_head ||
           (name.find("action_head") != std::string::npos && name.rfind("action_head.model.", 0) != 0);
  if (name == head) return true;
  return name.size() > head.size() && name.compare(name.size() - head.size(), head.size(), head) == 0 &&
         name[name.size() - head.size() - 1] == '.';
}

Selection select_layers(const std::vector<LinearLayer>& linears, const RunConfig& config) {
  return select_layers(linears, config.selection, config.quant.wbits_default, config.runtime);
}

Selection select_layers(const std::vector<LinearLayer>& linears, const SelectionConfig& config, int wbits_default,
                        Runtime runtime) {
  const Regex include(config.include, "include");
  const Regex exclude(config.exclude, "exclude");
  std::vector<std::pair<Regex, int>> rules;
  for (const auto& [pattern, bits] : config.wbits_rules) rules.emplace_back(Regex(pattern, "--wbits-rule"), bits);
  const std::set<std::string> wanted(config.layers.begin(), config.layers.end());

  Selection sel;
  sel.linear_count = linears.size();
  std::set<std::string> seen;
  for (const LinearLayer& layer : linears) {
    seen.insert(layer.name);
    if (layer.name.compare(0, config.scope.size(), config.scope) != 0) continue;
    if (!wanted.empty()) {
      if (wanted.count(layer.name) == 0) continue;
    } else if (!include.search(layer.name) || exclude.search(layer.name)) {
      continue;
    }
    if (is_action_head(layer.name, runtime) && !config.include_action_head) {
      sel.skipped_action_head.push_back(layer.name);
      continue;
    }
    if (!layer.quantizable()) {
      sel.skipped_dtype.push_back(layer.name);
      continue;
    }
    int bits = wbits_default;
    const auto exact = std::find_if(config.wbits.begin(), config.wbits.end(),
                                    [&](const auto& e) { return e.first == layer.name; });
    if (exact != config.wbits.end()) {
      bits = exact->second;
    } else {
      for (const auto& [rule, rule_bits] : rules) {
        if (rule.search(layer.name)) {
          bits = rule_bits;
          break;
        }
      }
    }
    sel.layers.push_back({&layer, bits});
  }
  for (const std::string& name : config.layers)
    if (seen.count(name) == 0) sel.layers_not_found.push_back(name);
  for (const auto& entry : config.wbits) {
    const std::string& name = entry.first;  // a structured binding cannot be captured before clang 16
    const bool used = std::any_of(sel.layers.begin(), sel.layers.end(),
                                  [&](const SelectedLayer& s) { return s.layer->name == name; });
    if (!used) sel.wbits_unused.push_back(name);
  }
  return sel;
}

}  // namespace duquant

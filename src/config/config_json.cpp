#include "config/config_json.hpp"

#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace duquant {

nlohmann::ordered_json config_json(const RunConfig& config) {
  const SelectionConfig& s = config.selection;
  const QuantConfig& q = config.quant;
  nlohmann::ordered_json j;
  j["runtime"] = runtime_name(config.runtime);
  j["preset"] = config.preset.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(config.preset);
  j["scope"] = s.scope;
  j["include"] = s.include;
  j["exclude"] = s.exclude;
  j["layers"] = s.layers;
  j["include_action_head"] = s.include_action_head;
  j["wbits_default"] = q.wbits_default;
  {  // one entry per name, where it first appears, with its last bits (as `wbits[name] = bits` would
     // give), in O(1) per name: --wbits may name every layer of the model
    nlohmann::ordered_json wbits = nlohmann::ordered_json::object();
    std::unordered_map<std::string_view, std::size_t> index;
    auto& entries = wbits.get_ref<nlohmann::ordered_json::object_t&>();
    for (const auto& [name, bits] : s.wbits) {
      const auto [it, fresh] = index.try_emplace(name, entries.size());
      if (fresh)
        entries.emplace_back(name, bits);
      else
        (entries.begin() + static_cast<std::ptrdiff_t>(it->second))->second = bits;
    }
    j["wbits"] = std::move(wbits);
  }
  j["wbits_rules"] = nlohmann::ordered_json::array();
  for (const auto& [pattern, bits] : s.wbits_rules) j["wbits_rules"].push_back({{"pattern", pattern}, {"bits", bits}});
  j["abits"] = q.abits;
  j["block"] = q.block;
  j["block_out"] = q.block_out;
  j["permute"] = q.permute;
  j["row_rot"] = row_rot_name(q.row_rot);
  j["lambda_smooth"] = q.lambda_smooth;
  j["act_pct"] = q.act_pct;
  j["calib_steps"] = q.calib_steps;
  j["not_linear"] = s.not_linear;
  const auto optional_text = [](const std::optional<std::string>& v) {
    return v ? nlohmann::ordered_json(*v) : nlohmann::ordered_json(nullptr);
  };
  j["strip_prefix"] = optional_text(config.naming.strip_prefix);
  j["add_prefix"] = optional_text(config.naming.add_prefix);
  return j;
}

}  // namespace duquant

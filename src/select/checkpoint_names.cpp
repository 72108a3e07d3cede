#include "select/checkpoint_names.hpp"

#include <fmt/format.h>

#include <map>
#include <set>

#include "duquant/error.hpp"
#include "formats/strict_json.hpp"

namespace duquant {
namespace {

enum class Family { pi, gr00t };

// Name parts that only a known model's tensors carry, at a component boundary: what comes before
// one of them is the model's root prefix.
struct Marker {
  std::string_view text;
  Family family;
};
constexpr Marker kMarkers[] = {
    {"paligemma_with_expert.", Family::pi},
    {"backbone.eagle_model.", Family::gr00t},
    {"action_head.model.", Family::gr00t},
};
// pi0/pi0.5 linears that sit beside paligemma_with_expert (no marker of their own).
constexpr std::string_view kPiTopLevel[] = {"action_in_proj",     "action_out_proj", "time_mlp_in",
                                            "time_mlp_out",       "state_proj",      "action_time_mlp_in",
                                            "action_time_mlp_out"};

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && s.compare(0, prefix.size(), prefix) == 0;
}

// The earliest marker of `name` at a component boundary: (family, position).
std::optional<std::pair<Family, std::size_t>> find_marker(std::string_view name) {
  std::optional<std::pair<Family, std::size_t>> best;
  for (const Marker& m : kMarkers) {
    for (std::size_t at = name.find(m.text); at != std::string_view::npos; at = name.find(m.text, at + 1)) {
      if (at != 0 && name[at - 1] != '.') continue;
      if (!best || at < best->second) best = std::make_pair(m.family, at);
      break;
    }
  }
  return best;
}

bool has_tensor_under(const formats::Checkpoint& ckpt, std::string_view prefix) {
  for (const formats::TensorRef* t : ckpt.stored_tensors())
    if (starts_with(t->stored_name, prefix)) return true;
  return false;
}

bool has_stored(const formats::Checkpoint& ckpt, const std::string& name) {
  for (const formats::TensorRef* t : ckpt.stored_tensors())
    if (t->stored_name == name) return true;
  return false;
}

std::string quoted_list(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& s : items) out += fmt::format("{}'{}'", out.empty() ? "" : ", ", s);
  return out;
}

}  // namespace

LayoutGuess guess_layout(const formats::Checkpoint& ckpt) {
  std::map<Family, std::set<std::string>> found;
  for (const formats::TensorRef* t : ckpt.stored_tensors())
    if (const auto m = find_marker(t->stored_name)) found[m->first].insert(t->stored_name.substr(0, m->second));
  LayoutGuess g;
  if (found.empty()) return g;
  if (found.size() > 1) {  // both models' names: nothing to guess from
    for (const auto& [family, prefixes] : found) g.prefixes.insert(g.prefixes.end(), prefixes.begin(), prefixes.end());
    return g;
  }
  const Family family = found.begin()->first;
  std::set<std::string> prefixes = found.begin()->second;
  if (family == Family::pi && prefixes.size() == 1 && !prefixes.begin()->empty()) {
    // The top-level linears must sit under the prefix too, or the prefix is not the model's root.
    for (std::string_view top : kPiTopLevel)
      if (has_stored(ckpt, std::string(top) + ".weight")) prefixes.insert("");
  }
  if (prefixes.size() > 1) {
    g.model = family == Family::pi ? "pi0/pi0.5" : "GR00T N1.5";
    g.prefixes.assign(prefixes.begin(), prefixes.end());
    return g;
  }
  const std::string prefix = *prefixes.begin();
  g.prefix = prefix;
  if (family == Family::pi) {
    if (has_stored(ckpt, prefix + "time_mlp_in.weight"))
      g.model = "pi0.5";
    else if (has_stored(ckpt, prefix + "state_proj.weight") || has_stored(ckpt, prefix + "action_time_mlp_in.weight"))
      g.model = "pi0";
    else
      g.model = "pi0/pi0.5";
    g.layout = prefix.empty() ? "OpenPI" : prefix == "model." ? "LeRobot" : "prefixed";
  } else {
    g.model = "GR00T N1.5";
    g.layout = prefix.empty() ? "NVIDIA" : prefix == "_groot_model." ? "LeRobot" : "prefixed";
  }
  return g;
}

std::optional<std::string> NameMapping::runtime_name(std::string_view stored) const {
  if (!starts_with(stored, checkpoint_prefix)) return std::nullopt;
  return runtime_prefix + std::string(stored.substr(checkpoint_prefix.size()));
}

std::string NameMapping::stored_name(std::string_view runtime) const {
  if (!starts_with(runtime, runtime_prefix)) return std::string(runtime);
  return checkpoint_prefix + std::string(runtime.substr(runtime_prefix.size()));
}

NameMapping resolve_names(const formats::Checkpoint& ckpt, const NamingOptions& options) {
  const LayoutGuess guess = guess_layout(ckpt);
  NameMapping m;
  m.model = guess.model;
  m.layout = guess.layout;
  if (options.strip_prefix || options.add_prefix) {
    m.how = "flags";
    m.checkpoint_prefix = options.strip_prefix.value_or("");
    m.runtime_prefix = options.add_prefix.value_or("");
    DQ_CHECK(m.checkpoint_prefix.empty() || has_tensor_under(ckpt, m.checkpoint_prefix), usage,
             "--strip-prefix '{}': no tensor of {} starts with it{}", m.checkpoint_prefix, ckpt.source().string(),
             guess.prefix && !guess.prefix->empty()
                 ? fmt::format(" (its {} tensors sit under '{}')", guess.model, *guess.prefix)
                 : std::string());
    return m;
  }
  if (guess.prefix && !guess.prefix->empty()) {
    m.how = "detected";
    m.checkpoint_prefix = *guess.prefix;
  } else {
    m.how = "none";
  }
  return m;
}

void apply_names(formats::Checkpoint& ckpt, NameMapping& m) {
  m.set_aside = 0;
  m.example_set_aside.clear();
  if (m.identity()) return;
  ckpt.rename([&](const std::string& stored) {
    std::optional<std::string> name = m.runtime_name(stored);
    if (!name && m.set_aside++ == 0) m.example_set_aside = stored;
    return name;
  });
}

OpenedCheckpoint open_checkpoint(const std::filesystem::path& path, const NamingOptions& options,
                                 const std::optional<NameMapping>& fixed,
                                 const std::function<void(const std::string&)>& notice,
                                 const std::function<void(const std::string&)>& warn) {
  OpenedCheckpoint o{formats::Checkpoint::open(path), {}};
  const bool explicit_flags = options.strip_prefix || options.add_prefix;
  // A recorded mapping holds where its prefix exists in this checkpoint; otherwise (the same
  // weights in another layout) the names are found as for any checkpoint.
  if (fixed && !explicit_flags &&
      (fixed->checkpoint_prefix.empty() || has_tensor_under(o.checkpoint, fixed->checkpoint_prefix)) &&
      (fixed->how == "flags" || !fixed->checkpoint_prefix.empty())) {
    o.names = *fixed;
    o.names.how = "manifest";
  } else {
    o.names = resolve_names(o.checkpoint, options);
  }
  apply_names(o.checkpoint, o.names);
  if (!o.names.identity() && notice) notice(describe_names(o.names, path.string()));
  if (o.names.how == "none" && warn) {
    const LayoutGuess g = guess_layout(o.checkpoint);
    if (g.prefixes.size() > 1) warn(fmt::format("{}: {}", path.string(), ambiguous_layout_text(g)));
  }
  return o;
}

std::string describe_names(const NameMapping& m, const std::string& source) {
  std::string what;
  if (m.how == "detected") {
    what = fmt::format(
        "{} in {}'s layout: every tensor of the model is stored under '{}'; layers are selected and "
        "named without it, as the runtime names its modules (--strip-prefix '' keeps the stored names)",
        m.model, m.layout, m.checkpoint_prefix);
  } else {
    std::string change;
    if (!m.checkpoint_prefix.empty()) change = fmt::format("'{}' removed", m.checkpoint_prefix);
    if (!m.runtime_prefix.empty())
      change += fmt::format("{}'{}' put before them", change.empty() ? "" : " and ", m.runtime_prefix);
    what = fmt::format("names are read with {} ({})", change,
                       m.how == "manifest" ? "as the pack recorded" : "--strip-prefix/--add-prefix");
  }
  if (m.set_aside > 0)
    what += fmt::format("; {} tensor{} outside '{}' {} no part of the model (e.g. '{}')", m.set_aside,
                        m.set_aside == 1 ? "" : "s", m.checkpoint_prefix, m.set_aside == 1 ? "is" : "are",
                        m.example_set_aside);
  return fmt::format("{}: {}", source, what);
}

std::string ambiguous_layout_text(const LayoutGuess& g) {
  if (g.model.empty())
    return fmt::format(
        "names of both pi0/pi0.5 and GR00T N1.5 under {}: names are read as stored (use --strip-prefix "
        "to choose)",
        quoted_list(g.prefixes));
  return fmt::format("{} names under several prefixes ({}): names are read as stored (use --strip-prefix to choose)",
                     g.model, quoted_list(g.prefixes));
}

nlohmann::ordered_json names_json(const NameMapping& m) {
  nlohmann::ordered_json j;
  j["checkpoint_prefix"] = m.checkpoint_prefix;
  j["runtime_prefix"] = m.runtime_prefix;
  j["how"] = m.how;
  j["model"] = m.model;
  j["layout"] = m.layout;
  j["set_aside"] = m.set_aside;
  return j;
}

NameMapping names_from_json(const nlohmann::json& j, const std::string& label) {
  DQ_CHECK(j.is_object(), format, "{}: checkpoint.names: expected an object, found {}", label, formats::json_kind(j));
  NameMapping m;
  auto text = [&](const char* key, std::string& out) {
    DQ_CHECK(j.contains(key) && j.at(key).is_string(), format, "{}: checkpoint.names.{}: expected a string", label,
             key);
    out = j.at(key).get<std::string>();
  };
  text("checkpoint_prefix", m.checkpoint_prefix);
  text("runtime_prefix", m.runtime_prefix);
  text("how", m.how);
  DQ_CHECK(m.how == "none" || m.how == "detected" || m.how == "flags" || m.how == "manifest", format,
           "{}: checkpoint.names.how: '{}' is not none, detected, flags or manifest", label, m.how);
  if (j.contains("model") && j.at("model").is_string()) m.model = j.at("model").get<std::string>();
  if (j.contains("layout") && j.at("layout").is_string()) m.layout = j.at("layout").get<std::string>();
  return m;
}

}  // namespace duquant

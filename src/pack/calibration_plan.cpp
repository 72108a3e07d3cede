#include "pack/calibration_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <string_view>
#include <unordered_map>

#include "duquant/error.hpp"
#include "pack/pack_layer.hpp"

namespace duquant {

LayerCalibration CalibrationPlan::for_layer(const LinearLayer& layer) const {
  LayerCalibration c;
  if (!dump) return c;
  const auto src = source_of.find(layer.name);
  if (src == source_of.end()) return c;
  c.dump = &*dump;
  c.name = src->second;
  c.calls = dump->calls(src->second);
  if (const SmoothGroup* g = smoothing_group(layer.name)) c.smooth = scales.at(g->key);
  return c;
}

const SmoothGroup* CalibrationPlan::smoothing_group(const std::string& layer) const {
  const auto it = group_of.find(layer);
  if (it == group_of.end()) return nullptr;
  const SmoothGroup& g = groups[it->second];
  return scales.count(g.key) ? &g : nullptr;
}

namespace {

bool has_calls(const formats::CalibDump& dump, const std::string& layer) {
  const auto* calls = dump.calls(layer);
  return calls != nullptr && !calls->empty();
}

}  // namespace

CalibrationPlan plan_calibration(const PackOptions& o, const formats::Checkpoint& ckpt,
                                 const std::vector<LinearLayer>& linears, const Selection& selection) {
  CalibrationPlan plan;
  const QuantConfig& q = o.config.quant;
  if (o.calib.empty()) {
    DQ_CHECK(!o.smooth_alpha, usage, "--smooth-alpha needs --calib: smoothing scales come from the activations");
    DQ_CHECK(o.fold_smoothing.empty(), usage, "--fold-smoothing needs --calib and --smooth-alpha");
    DQ_CHECK(!o.strict, usage, "--strict needs --calib (it makes layers missing from the dump an error)");
    return plan;
  }
  DQ_CHECK(o.fold_smoothing.empty() || o.smooth_alpha, usage, "--fold-smoothing needs --smooth-alpha");
  if (o.smooth_alpha)
    DQ_CHECK(std::isfinite(*o.smooth_alpha) && *o.smooth_alpha >= 0 && *o.smooth_alpha <= 1, usage,
             "--smooth-alpha {} is outside [0, 1]", *o.smooth_alpha);
  plan.dump = formats::CalibDump::open(o.calib);
  const formats::CalibDump& dump = *plan.dump;
  const std::string dump_label = o.calib.string();

  // A dump may name a layer as the runtime does or as the checkpoint stores it (another prefix,
  // checkpoint_names.hpp): the key under which `layer` has calls, or "" when it has none.
  std::map<std::string, std::string> stored_of;
  for (const LinearLayer& l : linears) stored_of[l.name] = l.stored_name;
  std::set<std::string> warned_both;
  auto key_of = [&](const std::string& layer) -> std::string {
    if (has_calls(dump, layer)) {
      const auto st = stored_of.find(layer);
      if (st != stored_of.end() && st->second != layer && has_calls(dump, st->second) && o.warn &&
          warned_both.insert(layer).second)
        o.warn(
            fmt::format("{}: holds calls under both '{}' and '{}'; the first is used", dump_label, layer, st->second));
      return layer;
    }
    const auto st = stored_of.find(layer);
    return st != stored_of.end() && has_calls(dump, st->second) ? st->second : std::string();
  };

  // Every selected layer's calls: the widths must match before any work is done.
  for (const SelectedLayer& s : selection.layers) {
    const LinearLayer& l = *s.layer;
    const std::string key = key_of(l.name);
    if (key.empty()) continue;
    for (const formats::DumpCall& c : *dump.calls(key))
      DQ_CHECK(c.cols == l.in_features, format,
               "{}: layer '{}' call {} is [{}, {}] but the layer's weight is [{}, {}]: the dump has width {}, the "
               "layer reads {}",
               dump_label, key, c.name, c.rows, c.cols, l.out_features, l.in_features, c.cols, l.in_features);
    plan.source_of[l.name] = key;
  }

  // Groups: layers reading the same input share its calls and, with smoothing, one s.
  plan.groups = smoothing_groups(ckpt, linears, selection.layers);
  // Hash maps, not a scan of the selection per group (a group per layer: O(n^2) at 20,000 layers).
  std::unordered_map<std::string_view, std::size_t> selected_at;  // name -> position in the selection
  selected_at.reserve(selection.layers.size());
  for (std::size_t k = 0; k < selection.layers.size(); ++k) selected_at.try_emplace(selection.layers[k].layer->name, k);
  std::unordered_map<std::string_view, const LinearLayer*> linear_named;  // the last of a name, as a scan finds it
  linear_named.reserve(linears.size());
  for (const LinearLayer& l : linears) linear_named[l.name] = &l;
  std::vector<std::size_t> members;
  for (std::size_t gi = 0; gi < plan.groups.size(); ++gi) {
    const SmoothGroup& g = plan.groups[gi];
    std::string source;
    for (const std::string& m : g.layers)
      if (const std::string key = key_of(m); !key.empty()) {
        source = key;
        break;
      }
    // The selected members, in selection order (the order of the checks and of their messages).
    members.clear();
    for (const std::string& m : g.layers)
      if (const auto at = selected_at.find(m); at != selected_at.end()) members.push_back(at->second);
    std::sort(members.begin(), members.end());
    members.erase(std::unique(members.begin(), members.end()), members.end());
    for (const std::size_t k : members) {
      const SelectedLayer& s = selection.layers[k];
      plan.group_of[s.layer->name] = gi;
      if (!plan.source_of.count(s.layer->name) && !source.empty()) {
        // A member missing from the dump reads the same input as `source`; its widths were
        // checked against the group's common in_features by smoothing_groups.
        for (const formats::DumpCall& c : *dump.calls(source))
          DQ_CHECK(c.cols == s.layer->in_features, format, "{}: layer '{}' call {} has width {}, layer '{}' reads {}",
                   dump_label, source, c.name, c.cols, s.layer->name, s.layer->in_features);
        plan.source_of[s.layer->name] = source;
      }
    }
  }
  for (const SelectedLayer& s : selection.layers)
    if (!plan.source_of.count(s.layer->name)) plan.missing.push_back(s.layer->name);
  if (!plan.missing.empty()) {
    std::string list;
    for (std::size_t k = 0; k < plan.missing.size(); ++k) list += (k ? ", " : "") + plan.missing[k];
    DQ_CHECK(!o.strict, format, "{}: {} of the {} selected layers are not in the dump (--strict): {}", dump_label,
             plan.missing.size(), selection.layers.size(), list);
    if (o.warn)
      o.warn(fmt::format("{} of the {} selected layers are not in the dump {} and get no activation scales: {}",
                         plan.missing.size(), selection.layers.size(), dump_label, list));
  }

  if (!o.smooth_alpha) return plan;
  std::vector<float> x;
  for (const SmoothGroup& g : plan.groups) {
    if (!o.fold_smoothing.empty() && !g.norm) continue;  // nothing to fold 1/s into: s = 1
    if (!o.fold_smoothing.empty() && *g.norm == NormKind::ada_rms && plan.group_of.count(g.key + ".dense")) {
      // The fold would change a layer this pack quantizes from the original weights.
      if (o.warn)
        o.warn(fmt::format(
            "{}: not smoothed: its adaptive norm's dense layer is selected too, and folding would change it", g.key));
      continue;
    }
    std::string source;
    for (const std::string& m : g.layers)
      if (const std::string key = key_of(m); !key.empty()) {
        source = key;
        break;
      }
    if (source.empty()) continue;  // its layers are in `missing`
    const auto first_it = linear_named.find(g.layers.front());
    const LinearLayer* first = first_it == linear_named.end() ? nullptr : first_it->second;
    DQ_CHECK(first != nullptr, internal, "smoothing group '{}': layer '{}' not found", g.key, g.layers.front());
    const auto n = static_cast<std::size_t>(first->in_features);
    // max |X_j| over the calibration calls of the group's input.
    std::vector<float> act_absmax(n, 0.0f);
    const auto& calls = *dump.calls(source);
    const std::size_t steps = std::min(calls.size(), static_cast<std::size_t>(q.calib_steps));
    for (std::size_t k = 0; k < steps; ++k) {
      dump.read(source, calls[k], x);
      check_packable_call(dump, source, calls[k], x);
      for (std::size_t e = 0; e < x.size(); ++e) act_absmax[e % n] = std::max(act_absmax[e % n], std::fabs(x[e]));
    }
    // max |W_j| over the stacked weights of every member.
    std::vector<float> w_absmax(n, 0.0f);
    for (const std::string& m : g.layers) {
      const auto l_it = linear_named.find(m);
      const LinearLayer* l = l_it == linear_named.end() ? nullptr : l_it->second;
      DQ_CHECK(l != nullptr && l->in_features == first->in_features, internal, "smoothing group '{}': member '{}'",
               g.key, m);
      const std::vector<float> w = load_weight(ckpt, *l);
      for (std::size_t e = 0; e < w.size(); ++e) w_absmax[e % n] = std::max(w_absmax[e % n], std::fabs(w[e]));
      ckpt.release(*l->weight);
    }
    plan.scales[g.key] = smoothing_scales(act_absmax, w_absmax, *o.smooth_alpha);
  }
  return plan;
}

}  // namespace duquant

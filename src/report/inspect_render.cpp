// inspect: the reports as text (aligned columns, at most 100 wide) and as one JSON document.
#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "duquant/inspect.hpp"
#include "select/module_order.hpp"

namespace duquant {
namespace {

using ojson = nlohmann::ordered_json;

std::string digits(std::uint64_t v) {  // 1234567 -> "1,234,567"
  std::string s = std::to_string(v), out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(s[i]);
  }
  return out;
}

double ratio(std::uint64_t a, std::uint64_t b) { return b ? static_cast<double>(a) / static_cast<double>(b) : 0.0; }

ojson opt(const std::optional<double>& v) { return v ? ojson(*v) : ojson(nullptr); }

std::string db(const std::optional<double>& v) { return v ? fmt::format("{:.2f}", *v) : std::string("exact"); }

// The words of pi0.5/GR00T names that the table abbreviates, in the order it does so.
constexpr std::pair<const char*, const char*> kAbbreviations[] = {
    {"language_model", "lm"}, {"gemma_expert", "expert"}, {"vision_tower", "vision"}, {"vision_model.", ""},
    {"self_attn", "attn"},    {"paligemma.", ""},         {"encoder.", ""},           {"layers.", "L"}};
constexpr int kShortenings = 2 + static_cast<int>(std::size(kAbbreviations));

// A module name shortened `stage` steps: 0 as it is, 1 without path parts that are just "model",
// then one more of kAbbreviations per step.
std::string shortened(const std::string& name, int stage) {
  if (stage == 0) return name;
  std::string s;
  std::size_t pos = 0;
  while (pos <= name.size()) {
    std::size_t end = name.find('.', pos);
    if (end == std::string::npos) end = name.size();
    const std::string part = name.substr(pos, end - pos);
    if (part != "model") s.append(s.empty() ? "" : ".").append(part);
    pos = end + 1;
  }
  for (int k = 0; k + 2 <= stage; ++k) {
    const auto& [from, to] = kAbbreviations[k];
    for (std::size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + std::string_view(to).size()))
      s.replace(at, std::string_view(from).size(), to);
  }
  return s;
}

// Every name of a table shortened alike (the fewest steps after which all fit `width`), so that one
// module is never spelled two ways in one table; a name still too long then loses its middle.
std::vector<std::string> fit_all(const std::vector<std::string>& names, std::size_t width) {
  int stage = 0;
  while (stage + 1 < kShortenings && std::any_of(names.begin(), names.end(), [&](const std::string& n) {
           return shortened(n, stage).size() > width;
         }))
    ++stage;
  std::vector<std::string> out;
  for (const std::string& n : names) {
    std::string s = shortened(n, stage);
    if (s.size() > width) {
      const std::size_t keep = width - 2, head = keep / 3;
      s = s.substr(0, head) + ".." + s.substr(s.size() - (keep - head));
    }
    out.push_back(std::move(s));
  }
  return out;
}

// Word-wraps `text` to `width` columns, every line starting with `indent`.
std::string wrap(const std::string& text, const std::string& indent, std::size_t width) {
  std::string out, line = indent;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t end = text.find(' ', pos);
    if (end == std::string::npos) end = text.size();
    const std::string word = text.substr(pos, end - pos);
    if (line.size() > indent.size() && line.size() + 1 + word.size() > width) {
      out.append(line).append("\n");
      line = indent;
      line.append("  ");
    } else if (line.size() > indent.size()) {
      line.push_back(' ');
    }
    line.append(word);
    pos = end + 1;
  }
  return out.append(line).append("\n");
}

const HeadError* worst_head(const PackLayerInfo& l) {
  const HeadError* worst = nullptr;
  for (const HeadError& h : l.heads)
    if (worst == nullptr || h.rel_fro_error > worst->rel_fro_error) worst = &h;
  return worst;
}

ojson quality_json(const Quality& q) { return {{"rel_fro_error", q.rel_fro_error}, {"sqnr_db", opt(q.sqnr_db)}}; }
ojson head_json(const HeadError& h) {
  return {{"head", h.head}, {"rel_fro_error", h.rel_fro_error}, {"sqnr_db", opt(h.sqnr_db)}};
}

struct PackTotals {
  std::uint64_t bytes_in = 0, packed = 0, npz = 0;
  std::map<int, std::size_t> wbits;
  double sum_dq = 0, sum_rtn = 0;
  std::size_t counted = 0;
  const PackLayerInfo* worst = nullptr;
};

PackTotals totals_of(const PackReport& r) {
  PackTotals t;
  for (const PackLayerInfo& l : r.layers) {
    t.bytes_in += l.bytes_in;
    t.packed += l.packed_bytes;
    t.npz += l.npz_bytes;
    if (l.wbits) ++t.wbits[l.wbits];
    if (l.duquant && l.rtn && l.duquant->sqnr_db && l.rtn->sqnr_db) {
      t.sum_dq += *l.duquant->sqnr_db;
      t.sum_rtn += *l.rtn->sqnr_db;
      ++t.counted;
      if (t.worst == nullptr || *l.duquant->sqnr_db < *t.worst->duquant->sqnr_db) t.worst = &l;
    }
  }
  return t;
}

std::string config_value(const ojson& c, const char* key) {
  const auto it = c.find(key);
  if (it == c.end()) return "?";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_boolean()) return it->get<bool>() ? "on" : "off";
  if (it->is_null()) return "-";
  return it->dump();
}

}  // namespace

std::vector<std::size_t> model_order_of(const PackReport& r) {
  if (r.model_order.size() == r.layers.size()) return r.model_order;
  std::vector<std::string> names;
  for (const PackLayerInfo& l : r.layers) names.push_back(l.name);
  return module_order(names);
}

std::string common_name_prefix(const std::vector<PackLayerInfo>& layers) {
  if (layers.empty()) return {};
  std::string p = layers.front().name;
  for (const auto& l : layers) {
    std::size_t n = 0;
    while (n < p.size() && n < l.name.size() && p[n] == l.name[n]) ++n;
    p.resize(n);
  }
  const auto dot = p.rfind('.');
  return dot == std::string::npos ? std::string() : p.substr(0, dot + 1);
}

std::string human_bytes(std::uint64_t b) {
  const double v = static_cast<double>(b);
  if (b < 1000) return fmt::format("{} B", b);
  if (v < 1e6) return fmt::format("{:.1f} KB", v / 1e3);
  if (v < 1e9) return fmt::format("{:.2f} MB", v / 1e6);
  return fmt::format("{:.2f} GB", v / 1e9);
}

// ---- checkpoint -------------------------------------------------------------------------------

std::string checkpoint_text(const CheckpointReport& r) {
  std::string out;
  out += fmt::format("checkpoint: {}\n", r.source);
  out += fmt::format("  {} file{}, {} tensors, {} linear layers\n", r.files, r.files == 1 ? "" : "s", r.tensors,
                     r.linears);
  if (r.baked)
    out += fmt::format("  baked by duquant from pack {} (manifest xxh128 {}), --dtype {}; activations {}\n",
                       r.baked->pack, r.baked->manifest_xxh128, r.baked->dtype, r.baked->activations);
  if (r.head_dims.known()) {
    std::string hd;
    if (r.head_dims.all) hd = fmt::format("{}", *r.head_dims.all);
    for (const auto& [g, d] : r.head_dims.by_group)
      hd.append(hd.empty() ? "" : ", ").append(fmt::format("{} {}", group_title(g), d));
    out += fmt::format("  head_dim: {} (from {})\n", hd, r.head_dims.source);
  } else {
    out += "  head_dim: unknown (no config.json beside the checkpoint; give --head-dim N)\n";
  }
  out += fmt::format("\n{:<16}{:>8}{:>7}{:>15}{:>12}  {}\n", "group", "layers", "attn", "parameters", "bytes",
                     "weight dtypes");
  std::uint64_t layers = 0, attn = 0, params = 0, bytes = 0;
  for (const GroupStats& g : r.groups) {
    std::string dtypes;
    for (const auto& [d, n] : g.dtypes) dtypes.append(dtypes.empty() ? "" : ", ").append(fmt::format("{} x{}", d, n));
    out += fmt::format("{:<16}{:>8}{:>7}{:>15}{:>12}  {}\n", group_title(g.group), g.layers, g.attention_layers,
                       digits(g.parameters), human_bytes(g.bytes), dtypes.empty() ? "-" : dtypes);
    layers += g.layers;
    attn += g.attention_layers;
    params += g.parameters;
    bytes += g.bytes;
  }
  out += fmt::format("{:<16}{:>8}{:>7}{:>15}{:>12}\n", "total", layers, attn, digits(params), human_bytes(bytes));
  out += fmt::format("\nwhat each preset would pack (estimated bytes in quantized.safetensors):\n");
  out += fmt::format("{:<20}{:>7}{:>13}{:>13}{:>13}{:>8}{:>8}\n", "preset", "layers", "weights in", "packed", "saved",
                     "saving", "ratio");
  for (const PresetEstimate& p : r.presets) {
    const bool grows = p.packed_bytes > p.bytes_in;
    const std::uint64_t diff = grows ? p.packed_bytes - p.bytes_in : p.bytes_in - p.packed_bytes;
    const double saving = p.bytes_in ? 100.0 * (1.0 - ratio(p.packed_bytes, p.bytes_in)) : 0.0;
    out += fmt::format("{:<20}{:>7}{:>13}{:>13}{:>13}{:>7.1f}%{:>7.2f}x\n", p.name, p.layers, human_bytes(p.bytes_in),
                       human_bytes(p.packed_bytes), fmt::format("{}{}", grows ? "-" : "", human_bytes(diff)), saving,
                       ratio(p.bytes_in, p.packed_bytes));
  }
  return out;
}

ojson checkpoint_json(const CheckpointReport& r) {
  ojson j;
  j["kind"] = "checkpoint";
  j["checkpoint"] = r.source;
  j["files"] = r.files;
  j["tensors"] = r.tensors;
  j["linear_layers"] = r.linears;
  if (r.baked)
    j["baked"] = {{"pack", r.baked->pack},
                  {"manifest_xxh128", r.baked->manifest_xxh128},
                  {"dtype", r.baked->dtype},
                  {"activations", r.baked->activations}};
  ojson hd;
  hd["source"] = r.head_dims.source.empty() ? ojson(nullptr) : ojson(r.head_dims.source);
  hd["all"] = r.head_dims.all ? ojson(*r.head_dims.all) : ojson(nullptr);
  hd["by_group"] = ojson::object();
  for (const auto& [g, d] : r.head_dims.by_group) hd["by_group"][std::string(group_key(g))] = d;
  j["head_dim"] = hd;
  j["groups"] = ojson::array();
  ojson totals = {{"layers", 0}, {"attention_layers", 0}, {"parameters", 0}, {"bytes", 0}};
  for (const GroupStats& g : r.groups) {
    ojson e;
    e["group"] = group_key(g.group);
    e["title"] = group_title(g.group);
    e["layers"] = g.layers;
    e["attention_layers"] = g.attention_layers;
    e["parameters"] = g.parameters;
    e["bytes"] = g.bytes;
    e["dtypes"] = ojson::object();
    for (const auto& [d, n] : g.dtypes) e["dtypes"][d] = n;
    j["groups"].push_back(std::move(e));
    totals["layers"] = totals["layers"].get<std::uint64_t>() + g.layers;
    totals["attention_layers"] = totals["attention_layers"].get<std::uint64_t>() + g.attention_layers;
    totals["parameters"] = totals["parameters"].get<std::uint64_t>() + g.parameters;
    totals["bytes"] = totals["bytes"].get<std::uint64_t>() + g.bytes;
  }
  j["totals"] = totals;
  j["presets"] = ojson::array();
  for (const PresetEstimate& p : r.presets) {
    const auto saved = static_cast<std::int64_t>(p.bytes_in) - static_cast<std::int64_t>(p.packed_bytes);
    j["presets"].push_back({{"name", p.name},
                            {"description", p.description},
                            {"layers", p.layers},
                            {"wbits_default", p.wbits_default},
                            {"block", p.block},
                            {"block_out", p.block_out},
                            {"bytes_in", p.bytes_in},
                            {"packed_bytes", p.packed_bytes},
                            {"conformance_bytes", p.conformance_bytes},
                            {"saved_bytes", saved},
                            {"saving", p.bytes_in ? static_cast<double>(saved) / static_cast<double>(p.bytes_in) : 0.0},
                            {"ratio", ratio(p.bytes_in, p.packed_bytes)}});
  }
  j["warnings"] = r.warnings;
  return j;
}

// ---- pack -------------------------------------------------------------------------------------

std::string pack_text(const PackReport& r) {
  const PackTotals t = totals_of(r);
  std::string out;
  out += fmt::format("pack: {}\n", r.path);
  if (r.has_manifest) {
    out += fmt::format("  format:  duquant-pack, written by {}; checkpoint {}\n", r.tool.empty() ? "?" : r.tool,
                       r.checkpoint_source.empty() ? "?" : r.checkpoint_source);
    if (!r.imported_from.empty())
      out += fmt::format("  import:  the runtime's pack {} (its npz files and rotations; {} layer(s) left out)\n",
                         r.imported_from, r.import_skipped.size());
    const ojson& c = r.config;
    out += fmt::format("  config:  preset {}, runtime {}, scope '{}'\n", config_value(c, "preset"),
                       config_value(c, "runtime"), config_value(c, "scope"));
    out += fmt::format("           W{} A{}, block {}, block_out {}, permute {}, row_rot {}, lambda_smooth {}\n",
                       config_value(c, "wbits_default"), config_value(c, "abits"), config_value(c, "block"),
                       config_value(c, "block_out"), config_value(c, "permute"), config_value(c, "row_rot"),
                       config_value(c, "lambda_smooth"));
    std::string bits;
    for (const auto& [b, n] : t.wbits) bits.append(bits.empty() ? "" : ", ").append(fmt::format("W{} x{}", b, n));
    out += fmt::format("  layers:  {} ({})\n", r.layers.size(), bits);
    out += fmt::format("  bytes:   weights in {} -> quantized {}; ratio {:.2f}x, saving {:.1f}%\n",
                       human_bytes(t.bytes_in), human_bytes(t.packed), ratio(t.bytes_in, t.packed),
                       t.bytes_in ? 100.0 * (1.0 - ratio(t.packed, t.bytes_in)) : 0.0);
    out += fmt::format("           quantized.safetensors files {}, npz files {}\n", human_bytes(r.quantized_file_bytes),
                       human_bytes(t.npz));
    if (t.counted) {
      const double dq = t.sum_dq / static_cast<double>(t.counted), rtn = t.sum_rtn / static_cast<double>(t.counted);
      out += fmt::format(
          "  SQNR:    mean {:.2f} dB DuQuant, {:.2f} dB round-to-nearest ({:+.2f} dB); worst "
          "{:.2f} dB\n",
          dq, rtn, dq - rtn, *t.worst->duquant->sqnr_db);
    }
  } else {
    out += fmt::format("  format:  npz files only (a pack written by the Python runtime), {} layers, {}\n",
                       r.layers.size(), human_bytes(t.npz));
  }
  for (const std::string& n : r.notes) out += wrap(fmt::format("note: {}", n), "  ", 98);

  const std::string prefix = common_name_prefix(r.layers);
  const bool any_heads = std::any_of(r.layers.begin(), r.layers.end(), [](const auto& l) { return !l.heads.empty(); });
  const std::size_t name_width = any_heads ? 34 : 44;
  const bool any_calib =
      std::any_of(r.layers.begin(), r.layers.end(), [](const PackLayerInfo& l) { return l.calibrated; });
  std::size_t width = 5;
  for (const auto& l : r.layers) width = std::max(width, std::min(name_width, l.name.size() - prefix.size()));
  out += "\n";
  if (r.has_manifest) {
    out += "per-layer quality, worst DuQuant SQNR first";
    out += prefix.empty() ? std::string(":\n") : fmt::format("; names after\n'{}':\n", prefix);
    out +=
        fmt::format("{:>3}  {:<{}}  {:>10} {:>2} {:>8} {:>8} {:>7} {:>7}{}{}\n", "#", "layer", width, "shape", "W",
                    "DuQuant", "RTN", "gain", "rel.err", any_calib ? "  out.err" : "", any_heads ? "  worst head" : "");
    out += fmt::format("{:>3}  {:<{}}  {:>10} {:>2} {:>8} {:>8} {:>7} {:>7}{}{}\n", "", "", width, "[out x in]", "",
                       "dB", "dB", "dB", "", any_calib ? "  W·A    " : "", any_heads ? "  (rel.err, dB)" : "");
  } else {
    out += prefix.empty() ? std::string("layers:\n") : fmt::format("layers; names after '{}':\n", prefix);
    out += fmt::format("{:>3}  {:<{}}  {:>10} {:>6} {:>6} {:>5} {:>7} {:>10}{}\n", "#", "layer", width, "shape",
                       "block", "b_out", "perm", "lambda", "npz", any_heads ? "  worst head" : "");
  }
  std::vector<std::string> table_names;
  for (const PackLayerInfo& l : r.layers) table_names.push_back(l.name.substr(prefix.size()));
  const std::vector<std::string> fitted = fit_all(table_names, width);
  std::size_t i = 0;
  for (const PackLayerInfo& l : r.layers) {
    const std::string& name = fitted[i];
    const std::string shape = fmt::format("{}x{}", l.out_features, l.in_features);
    std::string head;
    if (const HeadError* h = worst_head(l))
      head = fmt::format("  h{} {:.4f} {}", h->head, h->rel_fro_error, db(h->sqnr_db));
    else if (any_heads && head_axis(l.name) != HeadAxis::none)
      head = "  -";
    ++i;
    if (r.has_manifest) {
      std::string dq = "-", rtn = "-", gain = "-", rel = "-";
      if (l.duquant && l.rtn) {
        dq = db(l.duquant->sqnr_db);
        rtn = db(l.rtn->sqnr_db);
        if (l.duquant->sqnr_db && l.rtn->sqnr_db) gain = fmt::format("{:+.2f}", *l.duquant->sqnr_db - *l.rtn->sqnr_db);
        rel = fmt::format("{:.4f}", l.duquant->rel_fro_error);
      }
      std::string calib;
      if (any_calib)
        calib =
            fmt::format("  {:>7}{}", l.output_rel_error ? fmt::format("{:.4f}", *l.output_rel_error) : std::string("-"),
                        l.smoothed ? "s" : " ");
      out += fmt::format("{:>3}  {:<{}}  {:>10} {:>2} {:>8} {:>8} {:>7} {:>7}{}{}\n", i, name, width, shape, l.wbits,
                         dq, rtn, gain, rel, calib, head);
    } else {
      out += fmt::format("{:>3}  {:<{}}  {:>10} {:>6} {:>6} {:>5} {:>7} {:>10}{}\n", i, name, width, shape, l.block,
                         l.block_out, l.permute ? "on" : "off", fmt::format("{:g}", l.lambda_smooth),
                         human_bytes(l.npz_bytes), head);
    }
  }
  for (const PackLayerInfo& l : r.layers)
    if (!l.heads_note.empty() && l.heads.empty())
      out += wrap(fmt::format("no per-head error for {}: {}", l.name.substr(prefix.size()), l.heads_note), "  ", 98);
  return out;
}

ojson pack_json(const PackReport& r) {
  const PackTotals t = totals_of(r);
  ojson j;
  j["kind"] = "pack";
  j["pack"] = r.path;
  j["format"] = r.has_manifest ? "duquant-pack" : "runtime-npz";
  j["tool"] = r.tool.empty() ? ojson(nullptr) : ojson(r.tool);
  j["checkpoint"] = r.checkpoint_source.empty() ? ojson(nullptr) : ojson(r.checkpoint_source);
  if (!r.imported_from.empty()) j["imported"] = {{"source", r.imported_from}, {"skipped", r.import_skipped}};
  j["config"] = r.config;
  ojson totals;
  totals["layers"] = r.layers.size();
  totals["wbits"] = ojson::object();
  for (const auto& [b, n] : t.wbits) totals["wbits"][std::to_string(b)] = n;
  totals["bytes_in"] = t.bytes_in;
  totals["packed_bytes"] = t.packed;
  totals["quantized_file_bytes"] = r.quantized_file_bytes;
  totals["npz_bytes"] = t.npz;
  totals["ratio"] = ratio(t.bytes_in, t.packed);
  totals["mean_sqnr_db"] = t.counted ? ojson{{"duquant", t.sum_dq / static_cast<double>(t.counted)},
                                             {"rtn", t.sum_rtn / static_cast<double>(t.counted)}}
                                     : ojson(nullptr);
  totals["worst"] = t.worst ? ojson{{"name", t.worst->name}, {"sqnr_db", *t.worst->duquant->sqnr_db}} : ojson(nullptr);
  j["totals"] = totals;
  j["layers"] = ojson::array();
  for (const std::size_t i : model_order_of(r)) {  // model order (layer 2 before layer 10), whatever r.layers' order
    const PackLayerInfo& l = r.layers[i];
    ojson e;
    e["name"] = l.name;
    e["group"] = group_key(l.group);
    e["block_type"] = l.block_type;
    e["shape"] = {l.out_features, l.in_features};
    e["dtype"] = l.dtype.empty() ? ojson(nullptr) : ojson(l.dtype);
    e["wbits"] = l.wbits ? ojson(l.wbits) : ojson(nullptr);
    e["abits"] = l.abits ? ojson(l.abits) : ojson(nullptr);
    e["block"] = l.block;
    e["block_out"] = l.block_out;
    e["permute"] = l.permute;
    e["lambda_smooth"] = l.lambda_smooth;
    e["bias"] = l.bias;
    e["bytes_in"] = r.has_manifest ? ojson(l.bytes_in) : ojson(nullptr);
    e["packed_bytes"] = r.has_manifest ? ojson(l.packed_bytes) : ojson(nullptr);
    e["npz"] = l.npz.empty() ? ojson(nullptr) : ojson{{"name", l.npz}, {"size", l.npz_bytes}};
    if (l.duquant && l.rtn) {
      ojson q = {{"duquant", quality_json(*l.duquant)}, {"rtn", quality_json(*l.rtn)}};
      q["gain_db"] =
          l.duquant->sqnr_db && l.rtn->sqnr_db ? ojson(*l.duquant->sqnr_db - *l.rtn->sqnr_db) : ojson(nullptr);
      e["quality"] = q;
    } else {
      e["quality"] = nullptr;
    }
    e["calibration"] =
        l.calibrated ? ojson{{"output_rel_error", opt(l.output_rel_error)}, {"smoothed", l.smoothed}} : ojson(nullptr);
    if (!l.heads.empty()) {
      ojson h;
      h["head_dim"] = l.head_dim;
      h["axis"] = head_axis(l.name) == HeadAxis::rows ? "rows" : "columns";
      h["worst"] = head_json(*worst_head(l));
      h["all"] = ojson::array();
      for (const HeadError& x : l.heads) h["all"].push_back(head_json(x));
      e["heads"] = h;
    } else {
      e["heads"] = nullptr;
    }
    if (!l.heads_note.empty()) e["heads_note"] = l.heads_note;
    j["layers"].push_back(std::move(e));
  }
  j["head_dim_source"] = r.head_dim_source.empty() ? ojson(nullptr) : ojson(r.head_dim_source);
  j["warnings"] = r.warnings;
  j["notes"] = r.notes;
  return j;
}

}  // namespace duquant

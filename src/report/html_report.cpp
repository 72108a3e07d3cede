#include "report/html_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "duquant/error.hpp"
#include "formats/atomic_file.hpp"
#include "html_maps.hpp"
#include "report/layer_grid.hpp"

namespace duquant {
namespace {

constexpr std::string_view kStyle = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1f2937;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:22px 0 6px}h3{font-size:14px;margin:14px 0 4px}
p.meta{margin:2px 0;color:#4b5563;font-size:13px}
table{border-collapse:collapse;font-size:12px}
th,td{padding:3px 8px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap}
th{background:#f3f4f6}
td.name,th.name{text-align:left;font-family:ui-monospace,monospace}
td.bad{color:#b91c1c;font-weight:600}
.note{color:#92400e;font-size:13px}
.maps{display:flex;flex-wrap:wrap;gap:8px 28px;align-items:flex-start}
.mapbox{display:flex;flex-direction:column;gap:2px}
section.part{break-inside:avoid;page-break-inside:avoid}
svg text{font-size:10px;fill:#1f2937}
svg text.caption{font-size:12px;font-weight:600}
svg text.head{fill:#4b5563}svg text.row{fill:#4b5563}
svg rect.none{fill:#f9fafb;stroke:#e5e7eb}
svg g.unsel rect{fill:#f3f4f6}svg g.unsel text{fill:#9ca3af}
svg g.sel-2 rect,svg g.sel-3 rect{fill:#1e3a8a}svg g.sel-4 rect{fill:#2563eb}
svg g.sel-5 rect,svg g.sel-6 rect{fill:#60a5fa}svg g.sel-7 rect,svg g.sel-8 rect{fill:#bfdbfe}
svg g.sel-2 text,svg g.sel-3 text,svg g.sel-4 text{fill:#fff}
@page{size:landscape;margin:10mm}
@media print{body{margin:0}h2{break-after:avoid}}
)";

std::string f2(const std::optional<double>& v) { return v ? fmt::format("{:.2f}", *v) : std::string("exact"); }

std::string page_start(const std::string& title) {
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  out.append("<meta name=\"viewport\" content=\"width=device-width\"><title>")
      .append(html_escape(title))
      .append("</title><style>")
      .append(kStyle)
      .append("</style></head><body>\n");
  return out;
}

std::optional<double> gain_db(const PackLayerInfo& l) {
  if (l.duquant && l.rtn && l.duquant->sqnr_db && l.rtn->sqnr_db) return *l.duquant->sqnr_db - *l.rtn->sqnr_db;
  return std::nullopt;
}

const HeadError* worst_head_of(const PackLayerInfo& l) {
  const HeadError* worst = nullptr;
  for (const HeadError& h : l.heads)
    if (worst == nullptr || h.rel_fro_error > worst->rel_fro_error) worst = &h;
  return worst;
}

// Hover text of a layer's cells: its full name and every figure.
std::string layer_title(const PackLayerInfo& l) {
  std::string t = fmt::format("{}\n[{} x {}] W{}", l.name, l.out_features, l.in_features, l.wbits);
  if (l.duquant && l.rtn) {
    t += fmt::format("\nDuQuant {} dB (rel. error {:.4f})\nround-to-nearest {} dB (rel. error {:.4f})",
                     f2(l.duquant->sqnr_db), l.duquant->rel_fro_error, f2(l.rtn->sqnr_db), l.rtn->rel_fro_error);
    if (const auto g = gain_db(l)) t += fmt::format("\ngain {:+.2f} dB", *g);
  }
  if (l.calibrated)
    t += l.output_rel_error ? fmt::format("\nheld-out output error (W{} A{}) {:.4f}{}", l.wbits, l.abits,
                                          *l.output_rel_error, l.smoothed ? ", smoothed" : "")
                            : std::string("\nheld-out output error: not measured");
  if (const HeadError* h = worst_head_of(l))
    t += fmt::format("\nworst head h{}: rel. error {:.4f} ({} dB)", h->head, h->rel_fro_error, f2(h->sqnr_db));
  return t;
}

// The maps of a pack's layers: laid out from the names in model order (so that parts and columns come
// in the pack's order, not the worst-first order of r.layers), their cells indices into r.layers.
LayerGrids grids_of(const PackReport& r) {
  const std::vector<std::size_t> order = model_order_of(r);
  std::vector<std::string> names;
  for (std::size_t i : order) names.push_back(r.layers[i].name);
  LayerGrids grids = layer_grids(names);
  for (LayerGrid& g : grids.grids)
    for (auto& c : g.cells)
      if (c) c = order[*c];
  for (std::size_t& i : grids.other) i = order[i];
  return grids;
}

std::string part_heading(const LayerGrid& g, std::size_t layers) {
  return fmt::format("<h3>{}: {} <span class=\"meta\">({} layers; rows {} to {})</span></h3>\n",
                     group_title(layer_group(g.part + ".")), html_escape(g.part), layers, g.rows.front(),
                     g.rows.back());
}

std::size_t placed(const LayerGrid& g) {
  return static_cast<std::size_t>(std::count_if(g.cells.begin(), g.cells.end(), [](const auto& c) { return c; }));
}

std::string mapbox(const std::string& map, const std::string& legend) {
  return "<div class=\"mapbox\">" + map + legend + "</div>\n";
}

// The two maps of every part: DuQuant SQNR and its gain over round-to-nearest.
std::string quality_maps(const PackReport& r, const LayerGrids& grids) {
  std::vector<std::optional<double>> sqnr, gain;
  for (const PackLayerInfo& l : r.layers) {
    sqnr.push_back(l.duquant ? l.duquant->sqnr_db : std::nullopt);
    gain.push_back(gain_db(l));
  }
  const html::ColorScale s_scale =
      html::scale_over(html::ColorScale::Kind::higher_better, sqnr, "dB", "DuQuant SQNR (dB; blue is better)");
  const html::ColorScale g_scale = html::scale_over(html::ColorScale::Kind::centered, gain, "dB",
                                                    "gain over round-to-nearest (dB; red: DuQuant is worse)");
  std::string out;
  for (const LayerGrid& g : grids.grids) {
    out += "<section class=\"part\">\n" + part_heading(g, placed(g)) + "<div class=\"maps\">\n";
    out += mapbox(
        html::map_svg(g, "sqnr", "DuQuant SQNR (dB)", s_scale,
                      [&](std::size_t i) {
                        const PackLayerInfo& l = r.layers[i];
                        return html::Cell{sqnr[i], sqnr[i] ? "" : (l.duquant ? "exact" : "-"), layer_title(l), ""};
                      }),
        html::legend_svg(s_scale, "sqnr"));
    out += mapbox(html::map_svg(g, "gain", "gain over round-to-nearest (dB)", g_scale,
                                [&](std::size_t i) {
                                  return html::Cell{gain[i], gain[i] ? "" : "-", layer_title(r.layers[i]), ""};
                                }),
                  html::legend_svg(g_scale, "gain"));
    out += "</div>\n</section>\n";
  }
  return out;
}

// Per-head error: the worst head's SQNR of each attention projection, every part's map side by side.
std::string head_maps(const PackReport& r, const LayerGrids& grids) {
  std::vector<std::optional<double>> worst;
  for (const PackLayerInfo& l : r.layers) {
    const HeadError* h = worst_head_of(l);
    worst.push_back(h ? h->sqnr_db : std::nullopt);
  }
  const html::ColorScale scale =
      html::scale_over(html::ColorScale::Kind::higher_better, worst, "dB", "worst head's SQNR (dB; blue is better)");
  std::string out = "<section class=\"part\"><div class=\"maps\">\n";
  for (const LayerGrid& g : grids.grids) {
    auto has_heads = [&](std::size_t c) {
      for (std::size_t row = 0; row < g.rows.size(); ++row)
        if (const auto i = g.at(row, c); i && !r.layers[*i].heads.empty()) return true;
      return false;
    };
    bool any = false;
    for (std::size_t c = 0; c < g.columns.size(); ++c) any = any || has_heads(c);
    if (!any) continue;
    out +=
        mapbox(html::map_svg(
                   g, "heads", fmt::format("{}: worst head, SQNR (dB)", group_title(layer_group(g.part + "."))), scale,
                   [&](std::size_t i) {
                     const HeadError* h = worst_head_of(r.layers[i]);
                     std::string text = "-";
                     if (h)
                       text = fmt::format("h{} {}", h->head,
                                          h->sqnr_db ? fmt::format("{:.1f}", *h->sqnr_db) : std::string("exact"));
                     return html::Cell{worst[i], text, layer_title(r.layers[i]), ""};
                   },
                   has_heads),
               "");
  }
  out += "</div>\n" + html::legend_svg(scale, "heads") + "</section>\n";
  return out;
}

// Calibrated packs: the output error on held-out calls, every part's map side by side.
std::string calibration_maps(const PackReport& r, const LayerGrids& grids) {
  std::vector<std::optional<double>> err;
  std::size_t calibrated = 0, smoothed = 0;
  for (const PackLayerInfo& l : r.layers) {
    err.push_back(l.calibrated ? l.output_rel_error : std::nullopt);
    calibrated += l.calibrated ? 1 : 0;
    smoothed += l.smoothed ? 1 : 0;
  }
  const html::ColorScale scale = html::scale_over(html::ColorScale::Kind::lower_better, err, "",
                                                  "held-out output error, W and A quantized (blue is better)");
  std::string out = fmt::format(
      "<p class=\"meta\">{} of {} layers calibrated, {} smoothed; the error is ‖y_q − y‖/‖y‖ on held-out dumped "
      "calls through the whole W{} A{} contract (n/m: not measured)</p>\n<section class=\"part\"><div "
      "class=\"maps\">\n",
      calibrated, r.layers.size(), smoothed, r.layers.empty() ? 0 : r.layers.front().wbits,
      r.layers.empty() ? 0 : r.layers.front().abits);
  for (const LayerGrid& g : grids.grids) {
    const bool any =
        std::any_of(g.cells.begin(), g.cells.end(), [&](const auto& c) { return c && r.layers[*c].calibrated; });
    if (!any) continue;
    out += mapbox(html::map_svg(g, "output",
                                fmt::format("{}: held-out output error", group_title(layer_group(g.part + "."))), scale,
                                [&](std::size_t i) {
                                  const PackLayerInfo& l = r.layers[i];
                                  return html::Cell{err[i], err[i] ? "" : (l.calibrated ? "n/m" : "-"), layer_title(l),
                                                    l.smoothed ? "smoothed" : ""};
                                }),
                  "");
  }
  out += "</div>\n" + html::legend_svg(scale, "output") + "</section>\n";
  return out;
}

// A table of layers: name (without `prefix`), shape, bits, figures.
std::string layer_table(const PackReport& r, const std::vector<std::size_t>& rows, const std::string& prefix,
                        const char* css) {
  std::string t = fmt::format(
      "<table class=\"{}\"><thead><tr><th>#</th><th class=\"name\">layer</th><th>shape</th><th>W</th>"
      "<th>DuQuant dB</th><th>RTN dB</th><th>gain dB</th><th>rel. error</th><th>out. error</th><th>worst head</th>"
      "</tr></thead><tbody>\n",
      css);
  std::size_t n = 0;
  for (std::size_t i : rows) {
    const PackLayerInfo& l = r.layers[i];
    const auto g = gain_db(l);
    const HeadError* h = worst_head_of(l);
    t += fmt::format(
        "<tr><td>{}</td><td class=\"name\" title=\"{}\">{}</td><td>{}x{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}"
        "</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
        ++n, html_escape(l.name), html_escape(l.name.substr(prefix.size())), l.out_features, l.in_features,
        l.wbits ? std::to_string(l.wbits) : "-", l.duquant ? f2(l.duquant->sqnr_db) : "-",
        l.rtn ? f2(l.rtn->sqnr_db) : "-", g && *g < 0 ? " class=\"bad\"" : "", g ? fmt::format("{:+.2f}", *g) : "-",
        l.duquant ? fmt::format("{:.4f}", l.duquant->rel_fro_error) : "-",
        l.output_rel_error ? fmt::format("{:.4f}", *l.output_rel_error) : "-",
        h ? fmt::format("h{} {:.4f}", h->head, h->rel_fro_error) : "-");
  }
  t += "</tbody></table>\n";
  return t;
}

// Which layers each preset selects from a checkpoint, as maps of the checkpoint's parts.
std::string preset_maps(const CheckpointReport& r) {
  const LayerGrids grids = layer_grids(r.linear_names);
  const html::ColorScale categorical{html::ColorScale::Kind::categorical, 0, 1, "", ""};
  std::string out;
  for (const PresetEstimate& p : r.presets) {
    if (p.selected.empty()) continue;
    std::map<std::string, int> bits(p.selected.begin(), p.selected.end());
    out += fmt::format("<section class=\"part\"><h3>{} <span class=\"meta\">{} ({} layers)</span></h3>\n",
                       html_escape(p.name), html_escape(p.description), p.selected.size());
    out += "<div class=\"maps\">\n";
    for (const LayerGrid& g : grids.grids) {
      const bool touched = std::any_of(g.cells.begin(), g.cells.end(),
                                       [&](const auto& c) { return c && bits.count(r.linear_names[*c]); });
      if (!touched) continue;
      out += mapbox(
          html::map_svg(g, "preset", fmt::format("{}: {}", group_title(layer_group(g.part + ".")), g.part), categorical,
                        [&](std::size_t i) {
                          const auto b = bits.find(r.linear_names[i]);
                          if (b == bits.end())
                            return html::Cell{std::nullopt, "-", r.linear_names[i] + "\nnot selected", "unsel"};
                          return html::Cell{std::nullopt, fmt::format("W{}", b->second),
                                            fmt::format("{}\nW{}", r.linear_names[i], b->second),
                                            fmt::format("sel-{}", b->second)};
                        }),
          "");
    }
    std::vector<std::string> others;
    for (std::size_t i : grids.other)
      if (bits.count(r.linear_names[i]))
        others.push_back(fmt::format("{} (W{})", r.linear_names[i], bits[r.linear_names[i]]));
    out += "</div>\n";
    if (!others.empty())
      out += fmt::format("<p class=\"meta\">also: {}</p>\n", html_escape(fmt::format("{}", fmt::join(others, ", "))));
    out += "</section>\n";
  }
  return out;
}

}  // namespace

std::string html_escape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out.push_back(c);
    }
  }
  return out;
}

std::string pack_html(const PackReport& r) {
  std::string out = page_start(fmt::format("duquant inspect: {}", r.path));
  out += fmt::format("<h1>duquant inspect: {}</h1>\n", html_escape(r.path));
  const std::string text = pack_text(r);  // the summary lines, as the terminal shows them
  for (std::size_t pos = 0, n = 0; pos < text.size() && n < 9; ++n) {
    const std::size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end - pos);
    if (line.empty()) break;
    if (n > 0) out += fmt::format("<p class=\"meta\">{}</p>\n", html_escape(line));
    pos = end == std::string::npos ? text.size() : end + 1;
  }
  for (const std::string& w : r.warnings) out += fmt::format("<p class=\"note\">warning: {}</p>\n", html_escape(w));
  const LayerGrids grids = grids_of(r);
  const bool any_quality =
      std::any_of(r.layers.begin(), r.layers.end(), [](const auto& l) { return l.duquant.has_value(); });
  const std::string prefix = common_name_prefix(r.layers);
  out += "<h2>Quality by layer and projection</h2>\n";
  if (any_quality) {
    out +=
        "<p class=\"meta\">One pair of maps per model part: rows are the block index, columns the projection; the "
        "first map gives each layer's DuQuant SQNR, the second DuQuant's gain over plain round-to-nearest. A "
        "cell's title (hover) holds the full name and every figure.</p>\n";
    out += quality_maps(r, grids);
  } else {
    out += "<p class=\"note\">No quality figures: they need the manifest.json that duquant pack writes.</p>\n";
  }
  if (!grids.other.empty()) {
    out += "<h2>Layers outside the maps</h2>\n";
    out += layer_table(r, grids.other, prefix, "other");
  }
  if (std::any_of(r.layers.begin(), r.layers.end(), [](const auto& l) { return !l.heads.empty(); })) {
    out += "<h2>Per-head error of the attention projections</h2>\n";
    out += head_maps(r, grids);
  }
  if (std::any_of(r.layers.begin(), r.layers.end(), [](const auto& l) { return l.calibrated; })) {
    out += "<h2>Calibration and smoothing</h2>\n";
    out += calibration_maps(r, grids);
  }
  if (any_quality) {
    // The one listing not in model order: r.layers is worst DuQuant SQNR first.
    std::vector<std::size_t> worst;
    for (std::size_t i = 0; i < r.layers.size() && worst.size() < 20; ++i)
      if (r.layers[i].duquant) worst.push_back(i);
    out += fmt::format("<h2>The {} worst layers, lowest DuQuant SQNR first</h2>\n", worst.size());
    if (!prefix.empty()) out += fmt::format("<p class=\"meta\">names after '{}'</p>\n", html_escape(prefix));
    out += layer_table(r, worst, prefix, "worst");
  }
  out += "</body></html>\n";
  return out;
}

std::string checkpoint_html(const CheckpointReport& r) {
  std::string out = page_start(fmt::format("duquant inspect: {}", r.source));
  out += fmt::format("<h1>duquant inspect: {}</h1>\n", html_escape(r.source));
  out += fmt::format("<p class=\"meta\">{} file{}, {} tensors, {} linear layers</p>\n", r.files,
                     r.files == 1 ? "" : "s", r.tensors, r.linears);
  for (const std::string& w : r.warnings) out += fmt::format("<p class=\"note\">warning: {}</p>\n", html_escape(w));
  out +=
      "<h2>Linear layers by group</h2>\n<table><thead><tr><th class=\"name\">group</th><th>layers</th>"
      "<th>attention</th><th>parameters</th><th>bytes</th></tr></thead><tbody>\n";
  for (const GroupStats& g : r.groups)
    out += fmt::format("<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                       group_title(g.group), g.layers, g.attention_layers, g.parameters, human_bytes(g.bytes));
  out +=
      "</tbody></table>\n<h2>What each preset would pack</h2>\n<table><thead><tr><th class=\"name\">preset</th>"
      "<th>layers</th><th>weights in</th><th>packed (est.)</th><th>ratio</th></tr></thead><tbody>\n";
  for (const PresetEstimate& p : r.presets)
    out += fmt::format("<tr><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2f}x</td></tr>\n",
                       html_escape(p.name), p.layers, human_bytes(p.bytes_in), human_bytes(p.packed_bytes),
                       p.packed_bytes ? static_cast<double>(p.bytes_in) / static_cast<double>(p.packed_bytes) : 0.0);
  out += "</tbody></table>\n<h2>What each preset would select, by layer and projection</h2>\n";
  out += preset_maps(r);
  out += "</body></html>\n";
  return out;
}

void write_html_file(const std::filesystem::path& file, const std::string& html) {
  try {
    formats::AtomicFile f(file);
    f.write(html);
    f.commit();
  } catch (const std::filesystem::filesystem_error& e) {
    fail(ErrorKind::io, "{}: cannot write the HTML report: {}", file.string(), e.what());
  }
}

}  // namespace duquant

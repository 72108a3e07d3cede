#include "report/html_report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>

#include "duquant/error.hpp"
#include "formats/atomic_file.hpp"

namespace duquant {
namespace {

constexpr std::string_view kStyle = R"(
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#1f2937;background:#fff}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
p.meta{margin:2px 0;color:#4b5563;font-size:13px}
table{border-collapse:collapse;font-size:12px}
th,td{padding:3px 8px;border-bottom:1px solid #e5e7eb;text-align:right;white-space:nowrap}
th{background:#f3f4f6;position:sticky;top:0}
td.name,th.name{text-align:left;font-family:ui-monospace,monospace}
td.bad{color:#b91c1c;font-weight:600}
.note{color:#92400e;font-size:13px}
svg text{font-size:11px;fill:#1f2937}
svg text.group{font-size:13px;font-weight:600}
svg text.axis{fill:#6b7280}
svg line.grid{stroke:#e5e7eb;stroke-width:1}
rect.dq{fill:#2563eb}rect.rtn{fill:#f59e0b}
)";

std::string f2(const std::optional<double>& v) { return v ? fmt::format("{:.2f}", *v) : std::string("exact"); }

// Canonical order of block types in the chart; others follow alphabetically.
int type_rank(const std::string& t) {
  static const char* order[] = {"q", "k", "v", "o", "out", "gate", "up", "down", "fc1", "fc2", "dense", "linear"};
  for (int i = 0; i < 12; ++i)
    if (t == order[i]) return i;
  return 100;
}

std::string page_start(const std::string& title) {
  std::string out = "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">";
  out.append("<meta name=\"viewport\" content=\"width=device-width\"><title>")
      .append(html_escape(title))
      .append("</title><style>")
      .append(kStyle)
      .append("</style></head><body>\n");
  return out;
}

// The bar chart: per block type a heading, per layer two bars (DuQuant, round-to-nearest).
std::string sqnr_chart(const PackReport& r) {
  std::map<std::pair<int, std::string>, std::vector<const PackLayerInfo*>> groups;
  double max_db = 0;
  for (const PackLayerInfo& l : r.layers) {
    groups[{type_rank(l.block_type), l.block_type}].push_back(&l);
    for (const auto& q : {l.duquant, l.rtn})
      if (q && q->sqnr_db) max_db = std::max(max_db, *q->sqnr_db);
  }
  const std::string prefix = common_name_prefix(r.layers);
  const double axis_max = std::max(5.0, std::ceil(max_db / 5.0) * 5.0);
  const int label_w = 340, bar_w = 560, width = label_w + bar_w + 80, row = 26, group_h = 30, top = 40;
  int height = top + 10;
  for (const auto& [key, layers] : groups) height += group_h + row * static_cast<int>(layers.size());
  std::string svg = fmt::format(
      "<svg role=\"img\" aria-label=\"per-layer SQNR, DuQuant and round-to-nearest\" width=\"{}\" height=\"{}\" "
      "viewBox=\"0 0 {} {}\">\n",
      width, height, width, height);
  auto x_of = [&](double v) { return label_w + bar_w * std::clamp(v, 0.0, axis_max) / axis_max; };
  // legend and axis
  svg += fmt::format(
      "<line x1=\"{}\" y1=\"12\" x2=\"{}\" y2=\"12\" stroke=\"#2563eb\" stroke-width=\"10\"/>"
      "<text x=\"{}\" y=\"16\">DuQuant</text>",
      label_w, label_w + 14, label_w + 20);
  svg += fmt::format(
      "<line x1=\"{}\" y1=\"12\" x2=\"{}\" y2=\"12\" stroke=\"#f59e0b\" stroke-width=\"10\"/>"
      "<text x=\"{}\" y=\"16\">round-to-nearest</text>",
      label_w + 90, label_w + 104, label_w + 110);
  svg += fmt::format("<text x=\"{}\" y=\"16\" class=\"axis\">SQNR (dB, higher is better)</text>\n", label_w + 250);
  for (double v = 0; v <= axis_max + 1e-9; v += axis_max <= 40 ? 5 : 10) {
    const double x = x_of(v);
    svg += fmt::format(
        "<line class=\"grid\" x1=\"{:.1f}\" y1=\"{}\" x2=\"{:.1f}\" y2=\"{}\"/>"
        "<text class=\"axis\" x=\"{:.1f}\" y=\"{}\" text-anchor=\"middle\">{:g}</text>\n",
        x, top - 8, x, height - 6, x, top - 12 + 0, v);
  }
  int y = top;
  for (const auto& [key, layers] : groups) {
    y += group_h;
    svg += fmt::format("<text class=\"group\" x=\"4\" y=\"{}\">{} ({} layer{})</text>\n", y - 9,
                       html_escape(key.second), layers.size(), layers.size() == 1 ? "" : "s");
    std::vector<const PackLayerInfo*> sorted = layers;
    std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
    for (const PackLayerInfo* l : sorted) {
      std::string label = l->name.substr(prefix.size());
      if (label.size() > 52) label = label.substr(0, 16).append("..").append(label.substr(label.size() - 34));
      svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", label_w - 8, y + 15,
                         html_escape(label));
      int dy = 2;
      for (const auto& [cls, method, q] :
           {std::tuple{"dq", "DuQuant", l->duquant}, std::tuple{"rtn", "round-to-nearest", l->rtn}}) {
        const std::optional<double> v = q ? q->sqnr_db : std::nullopt;
        const double w = v ? x_of(*v) - label_w : 0.0;
        svg += fmt::format(
            "<rect class=\"bar {}\" x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"10\"><title>{}: {} {} dB"
            "</title></rect><text x=\"{:.1f}\" y=\"{}\" class=\"axis\">{}</text>\n",
            cls, label_w, y + dy, w, html_escape(l->name), method, f2(v), label_w + w + 4, y + dy + 9,
            q ? f2(v) : "n/a");
        dy += 11;
      }
      y += row;
    }
  }
  svg += "</svg>\n";
  return svg;
}

std::string pack_table(const PackReport& r) {
  std::string t =
      "<table><thead><tr><th>#</th><th class=\"name\">layer</th><th>group</th><th>type</th>"
      "<th>shape</th><th>W</th><th>block</th><th>block_out</th><th>DuQuant dB</th><th>RTN dB</th>"
      "<th>gain dB</th><th>rel. error</th><th>worst head</th><th>bytes in</th><th>packed</th></tr>"
      "</thead><tbody>\n";
  std::size_t i = 0;
  for (const PackLayerInfo& l : r.layers) {
    std::string dq = "-", rtn = "-", gain = "-", rel = "-", head = "-";
    bool bad = false;
    if (l.duquant && l.rtn) {
      dq = f2(l.duquant->sqnr_db);
      rtn = f2(l.rtn->sqnr_db);
      if (l.duquant->sqnr_db && l.rtn->sqnr_db) {
        gain = fmt::format("{:+.2f}", *l.duquant->sqnr_db - *l.rtn->sqnr_db);
        bad = *l.duquant->sqnr_db < *l.rtn->sqnr_db;
      }
      rel = fmt::format("{:.4f}", l.duquant->rel_fro_error);
    }
    const HeadError* worst = nullptr;
    for (const HeadError& h : l.heads)
      if (worst == nullptr || h.rel_fro_error > worst->rel_fro_error) worst = &h;
    if (worst) head = fmt::format("h{} {:.4f} ({} dB)", worst->head, worst->rel_fro_error, f2(worst->sqnr_db));
    t += fmt::format(
        "<tr><td>{}</td><td class=\"name\">{}</td><td>{}</td><td>{}</td><td>{}x{}</td><td>{}</td>"
        "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td{}>{}</td><td>{}</td><td>{}</td><td>{}</td>"
        "<td>{}</td></tr>\n",
        ++i, html_escape(l.name), group_title(l.group), html_escape(l.block_type), l.out_features, l.in_features,
        l.wbits ? std::to_string(l.wbits) : "-", l.block, l.block_out, dq, rtn, bad ? " class=\"bad\"" : "", gain, rel,
        head, r.has_manifest ? human_bytes(l.bytes_in) : "-",
        r.has_manifest ? human_bytes(l.packed_bytes) : human_bytes(l.npz_bytes));
  }
  t += "</tbody></table>\n";
  return t;
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
  for (std::size_t pos = 0, n = 0; pos < text.size() && n < 8; ++n) {
    const std::size_t end = text.find('\n', pos);
    const std::string line = text.substr(pos, end - pos);
    if (line.empty()) break;
    if (n > 0) out += fmt::format("<p class=\"meta\">{}</p>\n", html_escape(line));
    pos = end == std::string::npos ? text.size() : end + 1;
  }
  for (const std::string& w : r.warnings) out += fmt::format("<p class=\"note\">warning: {}</p>\n", html_escape(w));
  const bool any_quality =
      std::any_of(r.layers.begin(), r.layers.end(), [](const auto& l) { return l.duquant.has_value(); });
  out += "<h2>Per-layer SQNR by block type</h2>\n";
  if (any_quality) {
    const std::string prefix = common_name_prefix(r.layers);
    if (!prefix.empty()) out += fmt::format("<p class=\"meta\">names after '{}'</p>\n", html_escape(prefix));
    out += sqnr_chart(r);
  } else
    out += "<p class=\"note\">No quality figures: they need the manifest.json that duquant pack writes.</p>\n";
  out += "<h2>Layers, worst DuQuant SQNR first</h2>\n";
  out += pack_table(r);
  out += "</body></html>\n";
  return out;
}

std::string checkpoint_html(const CheckpointReport& r) {
  std::string out = page_start(fmt::format("duquant inspect: {}", r.source));
  out += fmt::format("<h1>duquant inspect: {}</h1>\n", html_escape(r.source));
  out += fmt::format("<p class=\"meta\">{} files, {} tensors, {} linear layers</p>\n", r.files, r.tensors, r.linears);
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
  out += "</tbody></table>\n</body></html>\n";
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

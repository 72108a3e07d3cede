#include "html_maps.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

#include "report/html_report.hpp"

namespace duquant::html {
namespace {

struct Rgb {
  double r, g, b;
};

// ColorBrewer's RdYlBu (red: bad, blue: good), and its diverging centre.
constexpr std::array<Rgb, 5> kRamp = {Rgb{215, 48, 39}, Rgb{252, 141, 89}, Rgb{254, 224, 144}, Rgb{145, 191, 219},
                                      Rgb{69, 117, 180}};
constexpr Rgb kCentre{247, 247, 247};

Rgb mix(Rgb a, Rgb b, double t) { return {a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t}; }

// t in [0, 1]: 0 bad (red), 1 good (blue).
Rgb ramp(double t) {
  t = std::clamp(t, 0.0, 1.0) * static_cast<double>(kRamp.size() - 1);
  const auto k = std::min<std::size_t>(static_cast<std::size_t>(t), kRamp.size() - 2);
  return mix(kRamp[k], kRamp[k + 1], t - static_cast<double>(k));
}

Rgb color_of(const ColorScale& s, double v) {
  switch (s.kind) {
    case ColorScale::Kind::higher_better: return ramp(s.hi > s.lo ? (v - s.lo) / (s.hi - s.lo) : 1.0);
    case ColorScale::Kind::lower_better: return ramp(s.hi > s.lo ? (s.hi - v) / (s.hi - s.lo) : 1.0);
    case ColorScale::Kind::centered: {
      const double t = s.hi > 0 ? std::clamp(v / s.hi, -1.0, 1.0) : 0.0;
      return t < 0 ? mix(kCentre, kRamp.front(), -t) : mix(kCentre, kRamp.back(), t);
    }
    case ColorScale::Kind::categorical: break;
  }
  return kCentre;
}

std::string hex(Rgb c) {
  return fmt::format("#{:02x}{:02x}{:02x}", static_cast<int>(std::lround(c.r)), static_cast<int>(std::lround(c.g)),
                     static_cast<int>(std::lround(c.b)));
}

// Dark text on light cells, white on dark ones (relative luminance).
const char* ink(Rgb c) { return 0.2126 * c.r + 0.7152 * c.g + 0.0722 * c.b > 140 ? "#111827" : "#ffffff"; }

std::string value_text(const ColorScale& s, double v) {
  if (s.kind == ColorScale::Kind::lower_better) return fmt::format("{:.3f}", v);
  if (s.kind == ColorScale::Kind::centered) return fmt::format("{:+.1f}", v);
  return fmt::format("{:.1f}", v);
}

constexpr int kCellW = 64, kCellH = 18, kLabelW = 40, kHeadH = 34, kCaptionH = 18;
constexpr int kCharW = 6, kCaptionCharW = 7;  // pixels per character of a head (10 px) and of a caption (12 px, bold)

}  // namespace

ColorScale scale_over(ColorScale::Kind kind, const std::vector<std::optional<double>>& values, std::string unit,
                      std::string legend) {
  ColorScale s;
  s.kind = kind;
  s.unit = std::move(unit);
  s.legend = std::move(legend);
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& v : values)
    if (v && std::isfinite(*v)) {
      lo = std::min(lo, *v);
      hi = std::max(hi, *v);
    }
  if (!(lo <= hi)) lo = hi = 0;
  const double step = kind == ColorScale::Kind::lower_better ? 0.01 : 1.0;
  if (kind == ColorScale::Kind::centered) {
    s.lo = 0;
    s.hi = std::max(step, std::ceil(std::max(std::abs(lo), std::abs(hi)) / step) * step);
    return s;
  }
  s.lo = std::floor(lo / step) * step;
  s.hi = std::ceil(hi / step) * step;
  if (s.hi - s.lo < step) s.hi = s.lo + step;
  return s;
}

std::string map_svg(const LayerGrid& grid, const std::string& metric, const std::string& caption,
                    const ColorScale& scale, const std::function<Cell(std::size_t)>& cell,
                    const std::function<bool(std::size_t)>& keep_column) {
  std::vector<std::size_t> cols;
  for (std::size_t c = 0; c < grid.columns.size(); ++c)
    if (!keep_column || keep_column(c)) cols.push_back(c);
  std::vector<std::string> kept;
  for (std::size_t c : cols) kept.push_back(grid.columns[c]);
  const std::vector<std::string> labels = column_labels(kept);
  // Each column as wide as its head's longer line needs (never cut), at least kCellW; x0[k] its left.
  std::vector<int> x0(cols.size() + 1, kLabelW);
  for (std::size_t k = 0; k < cols.size(); ++k) {
    const std::size_t dot = labels[k].rfind('.');
    const std::size_t longest = dot == std::string::npos ? labels[k].size() : std::max(dot, labels[k].size() - dot - 1);
    x0[k + 1] = x0[k] + std::max(kCellW, static_cast<int>(longest) * kCharW + 8);
  }
  const int width = std::max(x0.back() + 2, static_cast<int>(caption.size()) * kCaptionCharW);
  const int height = kCaptionH + kHeadH + kCellH * static_cast<int>(grid.rows.size()) + 2;
  std::string svg = fmt::format(
      "<svg class=\"map\" data-metric=\"{}\" data-rows=\"{}\" data-cols=\"{}\" width=\"{}\" height=\"{}\" "
      "viewBox=\"0 0 {} {}\" role=\"img\" aria-label=\"{}\">\n<text class=\"caption\" x=\"0\" y=\"13\">{}</text>\n",
      metric, grid.rows.size(), cols.size(), width, height, width, height, html_escape(caption), html_escape(caption));
  // Column heads: the projection, its parent module on a first line when it has one.
  svg += fmt::format("<text class=\"head\" x=\"{}\" y=\"{}\" text-anchor=\"end\">layer</text>\n", kLabelW - 6,
                     kCaptionH + kHeadH - 6);
  for (std::size_t k = 0; k < cols.size(); ++k) {
    const std::string& label = labels[k];
    const std::size_t dot = label.rfind('.');
    const int x = (x0[k] + x0[k + 1]) / 2;
    if (dot != std::string::npos)
      svg += fmt::format("<text class=\"head\" x=\"{}\" y=\"{}\" text-anchor=\"middle\">{}</text>", x,
                         kCaptionH + kHeadH - 18, html_escape(label.substr(0, dot)));
    svg += fmt::format(
        "<text class=\"head col\" data-col=\"{}\" x=\"{}\" y=\"{}\" "
        "text-anchor=\"middle\"><title>{}</title>{}</text>\n",
        html_escape(kept[k]), x, kCaptionH + kHeadH - 6, html_escape(kept[k]),
        html_escape(dot == std::string::npos ? label : label.substr(dot + 1)));
  }
  for (std::size_t r = 0; r < grid.rows.size(); ++r) {
    const int y = kCaptionH + kHeadH + kCellH * static_cast<int>(r);
    svg += fmt::format("<text class=\"row\" data-row=\"{}\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                       grid.rows[r], kLabelW - 6, y + 13, grid.rows[r]);
    for (std::size_t k = 0; k < cols.size(); ++k) {
      const int x = x0[k], cell_w = x0[k + 1] - x0[k];
      const auto at = grid.at(r, cols[k]);
      if (!at) {
        svg += fmt::format("<rect class=\"none\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"/>", x + 1, y + 1,
                           cell_w - 2, kCellH - 2);
        continue;
      }
      const Cell c = cell(*at);
      std::string fill = "#e5e7eb";
      const char* text_ink = "#374151";
      std::string text = c.text;
      if (c.value && scale.kind != ColorScale::Kind::categorical) {
        const Rgb rgb = color_of(scale, *c.value);
        fill = hex(rgb);
        text_ink = ink(rgb);
        if (text.empty()) text = value_text(scale, *c.value);
      }
      svg += fmt::format(
          "<g class=\"cell{}{}\" data-row=\"{}\" data-col=\"{}\"><title>{}</title><rect x=\"{}\" y=\"{}\" "
          "width=\"{}\" height=\"{}\"{}/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\"{}>{}</text></g>\n",
          c.css.empty() ? "" : " ", c.css, grid.rows[r], html_escape(grid.columns[cols[k]]), html_escape(c.title),
          x + 1, y + 1, cell_w - 2, kCellH - 2,
          scale.kind == ColorScale::Kind::categorical ? std::string() : fmt::format(" fill=\"{}\"", fill),
          x + cell_w / 2, y + 13,
          scale.kind == ColorScale::Kind::categorical ? std::string() : fmt::format(" fill=\"{}\"", text_ink),
          html_escape(text));
    }
    svg += "\n";
  }
  svg += "</svg>\n";
  return svg;
}

std::string legend_svg(const ColorScale& s, const std::string& metric) {
  constexpr int kSteps = 7, kSwatchW = 44, kSwatchH = 12;
  const int width = std::max(kSteps * kSwatchW + 4, static_cast<int>(s.legend.size()) * 7 + 8);
  std::string svg = fmt::format(
      "<svg class=\"legend\" data-metric=\"{}\" width=\"{}\" height=\"44\" viewBox=\"0 0 {} 44\" role=\"img\" "
      "aria-label=\"{}\">\n<text class=\"caption\" x=\"0\" y=\"11\">{}</text>\n",
      metric, width, width, html_escape(s.legend), html_escape(s.legend));
  for (int k = 0; k < kSteps; ++k) {
    const double t = static_cast<double>(k) / (kSteps - 1);
    const double v = s.kind == ColorScale::Kind::centered ? -s.hi + 2 * s.hi * t : s.lo + (s.hi - s.lo) * t;
    const int x = 2 + k * kSwatchW;
    svg += fmt::format(
        "<rect class=\"swatch\" x=\"{}\" y=\"16\" width=\"{}\" height=\"{}\" fill=\"{}\"/><text x=\"{}\" y=\"40\" "
        "text-anchor=\"middle\">{}</text>\n",
        x, kSwatchW, kSwatchH, hex(color_of(s, v)), x + kSwatchW / 2, value_text(s, v));
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace duquant::html

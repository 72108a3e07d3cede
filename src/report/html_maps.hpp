// The maps of the HTML report (html_report.cpp): one SVG per model part and figure, rows the block
// index, columns the projection, each cell coloured by the figure with its value printed and the
// layer's full name and figures in its title; and the colour scale's legend. Static SVG, no script.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "report/layer_grid.hpp"

namespace duquant::html {

// How values map to colours: blue is good, red is bad, whatever the figure.
struct ColorScale {
  enum class Kind { higher_better, lower_better, centered, categorical };
  Kind kind = Kind::higher_better;
  double lo = 0, hi = 1;  // the range (centered: -hi..hi)
  std::string unit;       // "dB", "" ...
  std::string legend;     // what the colour means, e.g. "DuQuant SQNR (dB): blue is better"
};

// A scale over `values` (nullopt skipped): rounded outward to whole units (to 0.01 for errors).
ColorScale scale_over(ColorScale::Kind kind, const std::vector<std::optional<double>>& values, std::string unit,
                      std::string legend);

struct Cell {
  std::optional<double> value;  // nullopt: drawn grey, `text` printed
  std::string text;             // what the cell prints
  std::string title;            // hover text: the full name and the figures
  std::string css;              // extra class (categorical colours: "sel-4", "unsel")
};

// One map: `cell(name_index)` for each placed layer of the grid. `metric` names the figure in the
// SVG's data-metric attribute; `caption` heads it. Columns for which `keep_column` is false are
// left out (null: all).
std::string map_svg(const LayerGrid& grid, const std::string& metric, const std::string& caption,
                    const ColorScale& scale, const std::function<Cell(std::size_t)>& cell,
                    const std::function<bool(std::size_t column)>& keep_column = nullptr);

// The legend of a scale: swatches from one end to the other with their values.
std::string legend_svg(const ColorScale& scale, const std::string& metric);

}  // namespace duquant::html

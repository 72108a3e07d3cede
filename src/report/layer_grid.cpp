#include "report/layer_grid.hpp"

#include <algorithm>
#include <charconv>
#include <map>
#include <string_view>

#include "select/module_order.hpp"

namespace duquant {
namespace {

std::vector<std::string> components(std::string_view name) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (true) {
    const std::size_t dot = name.find('.', start);
    out.emplace_back(name.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start));
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return out;
}

std::optional<std::int64_t> block_index(const std::string& c) {
  if (c.empty() || c.size() > 9 || !std::all_of(c.begin(), c.end(), [](char ch) { return ch >= '0' && ch <= '9'; }))
    return std::nullopt;
  std::int64_t v = 0;
  std::from_chars(c.data(), c.data() + c.size(), v);
  return v;
}

std::string joined(const std::vector<std::string>& parts, std::size_t from, std::size_t to) {
  std::string out;
  for (std::size_t k = from; k < to; ++k) out.append(k > from ? "." : "").append(parts[k]);
  return out;
}

// Where a projection goes among its part's columns: attention (q, k, v, o in every spelling) before
// the MLP (gate, up, down; fc1, fc2; GR00T's ff.net.0, ff.net.2); a second attention after the first.
int column_rank(const std::string& column) {
  static const std::vector<std::pair<std::string_view, int>> kinds = {
      {"q_proj", 0}, {"to_q", 0},     {"k_proj", 1},    {"to_k", 1},  {"v_proj", 2},    {"to_v", 2},
      {"o_proj", 3}, {"out_proj", 3}, {"to_out", 3},    {"dense", 4}, {"gate_proj", 5}, {"up_proj", 6},
      {"fc1", 7},    {"net.0", 7},    {"down_proj", 8}, {"fc2", 9},   {"net.2", 9}};
  int rank = 50;
  for (const auto& [token, r] : kinds)
    if (column.find(token) != std::string::npos) {
      rank = r;
      break;
    }
  if (column.find("attn2") != std::string::npos || column.find("cross_attn") != std::string::npos) rank += 10;
  return rank;
}

}  // namespace

LayerGrids layer_grids(const std::vector<std::string>& names) {
  LayerGrids out;
  std::map<std::string, std::size_t> grid_of;  // part -> position in out.grids
  struct Placed {
    std::int64_t row;
    std::string column;
    std::size_t name;
  };
  std::vector<std::vector<Placed>> placed;
  for (std::size_t i : module_order(names)) {
    const std::vector<std::string> c = components(names[i]);
    std::optional<std::size_t> at;
    for (std::size_t k = 1; k + 1 < c.size() && !at; ++k)
      if (block_index(c[k])) at = k;
    if (!at) {
      out.other.push_back(i);
      continue;
    }
    const std::string part = joined(c, 0, *at);
    auto [it, fresh] = grid_of.emplace(part, out.grids.size());
    if (fresh) {
      out.grids.push_back(LayerGrid{part, {}, {}, {}});
      placed.emplace_back();
    }
    placed[it->second].push_back({*block_index(c[*at]), joined(c, *at + 1, c.size()), i});
  }
  for (std::size_t g = 0; g < out.grids.size(); ++g) {
    LayerGrid& grid = out.grids[g];
    for (const Placed& p : placed[g]) {
      grid.rows.push_back(p.row);
      if (std::find(grid.columns.begin(), grid.columns.end(), p.column) == grid.columns.end())
        grid.columns.push_back(p.column);  // first appearance in module order breaks ties below
    }
    std::sort(grid.rows.begin(), grid.rows.end());
    grid.rows.erase(std::unique(grid.rows.begin(), grid.rows.end()), grid.rows.end());
    std::stable_sort(grid.columns.begin(), grid.columns.end(),
                     [](const std::string& a, const std::string& b) { return column_rank(a) < column_rank(b); });
    grid.cells.assign(grid.rows.size() * grid.columns.size(), std::nullopt);
    for (const Placed& p : placed[g]) {
      const auto r =
          static_cast<std::size_t>(std::lower_bound(grid.rows.begin(), grid.rows.end(), p.row) - grid.rows.begin());
      const auto col = static_cast<std::size_t>(std::find(grid.columns.begin(), grid.columns.end(), p.column) -
                                                grid.columns.begin());
      grid.cells[r * grid.columns.size() + col] = p.name;  // a name twice (not in a checkpoint): the last
    }
  }
  return out;
}

std::vector<std::string> column_labels(const std::vector<std::string>& columns) {
  if (columns.size() < 2) return columns;
  std::vector<std::vector<std::string>> split;
  for (const std::string& c : columns) split.push_back(components(c));
  std::size_t common = 0;
  while (true) {
    bool same = true;
    for (const auto& s : split)
      if (s.size() <= common + 1 || s[common] != split.front()[common]) same = false;
    if (!same) break;
    ++common;
  }
  std::vector<std::string> out;
  for (const auto& s : split) out.push_back(joined(s, common, s.size()));
  return out;
}

}  // namespace duquant

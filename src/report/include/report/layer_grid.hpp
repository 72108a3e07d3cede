// Layers laid out as maps, one per model part: rows are the block index (numeric order), columns
// the projection (the module path after the index). `inspect --html` draws them (docs/inspect.md).
//
// A name splits at its first purely numeric component after the first: the part is what precedes it
// (`paligemma_with_expert.gemma_expert.model.layers`, `action_head.model.transformer_blocks`), the
// row its value, the column what follows (`self_attn.q_proj`, `ff.net.2`). A name without such a
// component, or with nothing after it, fits no grid.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace duquant {

struct LayerGrid {
  std::string part;                               // the names' common start before the index
  std::vector<std::int64_t> rows;                 // block indices present, ascending
  std::vector<std::string> columns;               // projections, attention before MLP, q k v o, gate up down
  std::vector<std::optional<std::size_t>> cells;  // rows × columns, row-major: an index into the names
  std::optional<std::size_t> at(std::size_t row, std::size_t column) const {
    return cells[row * columns.size() + column];
  }
};

struct LayerGrids {
  std::vector<LayerGrid> grids;    // in module order of their first layer
  std::vector<std::size_t> other;  // names that fit no grid, in module order
};

LayerGrids layer_grids(const std::vector<std::string>& names);

// The columns' labels without their common leading components ("self_attn.q_proj" stays whole when
// "mlp.up_proj" is a column too; "attn1.to_q" becomes "to_q" when every column starts with "attn1.").
std::vector<std::string> column_labels(const std::vector<std::string>& columns);

}  // namespace duquant

// The order in which layers are listed: module-tree order reconstructed from names.
//
// Names are grouped as a tree of dotted components (so a block's modules stay together); siblings
// keep the order in which they first appear in the checkpoint, except that purely numeric siblings
// (`layers.0`, `layers.1`, ..., `layers.10`) are ordered numerically. For a checkpoint written in
// module order this is the module order the runtime iterates; for one written alphabetically it
// still lists layer 2 before layer 10.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace duquant {

// Returns the permutation of `names` (indices into it) in module order. Stable and deterministic.
std::vector<std::size_t> module_order(const std::vector<std::string>& names);

}  // namespace duquant

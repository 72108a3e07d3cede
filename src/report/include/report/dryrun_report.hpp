// What `list-linears` prints: the runtime's own dry-run lines (so existing log greps keep
// working), the runtime's help when nothing matches, and a JSON form for machines.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "config/quant_config.hpp"
#include "select/checkpoint_names.hpp"
#include "select/selection.hpp"

namespace duquant {

// "[DUQUANT] SCOPE filter: '<scope>'", "[DUQUANT] Matched Linear layers: N", one
// "[DUQUANT][DRYRUN] <name>: Linear(<I>-><O>) W4 A8 perm=True block_in=16 block_out=16 row_rot=restore"
// line per layer and "[DUQUANT] Dry-run total layers listed: N" (tag GR00T-DUQUANT for GR00T).
std::string dryrun_text(const Selection& selection, const RunConfig& config);

// The help printed when the selection is empty: how many linear layers exist, the first 10 names,
// and how many names start with the scope without its trailing dot (the runtime's lines); then
// what the checkpoint looks like (model guessed, prefix found) and, for a preset, which model's
// names it expects.
std::string no_match_text(const std::vector<LinearLayer>& linears, const RunConfig& config, const LayoutGuess& layout,
                          const NameMapping& names);

// Per layer: name, shape, dtype, wbits, abits, bias, bytes, and what its pack files take
// (tensor_bytes, npz_bytes, packed_bytes); totals, with the size of the whole pack directory
// (packed_bytes: npz files, quantized.safetensors, the manifest's estimate; docs/cli.md); and the
// config. `opened` (the checkpoint listed, named `source` by the user) gives what the manifest
// records about it; without it the manifest's estimate leaves that out.
nlohmann::ordered_json selection_json(const Selection& selection, const RunConfig& config,
                                      const OpenedCheckpoint* opened = nullptr, const std::string& source = {});

}  // namespace duquant

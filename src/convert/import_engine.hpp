// The layer engine of `duquant import`: a layer's transform is the runtime's (its npz's perm, Rin and
// Rout); the codes, scales and figures are computed from them on the CPU, as the runtime computes them.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "engine/layer_engine.hpp"

namespace duquant {

// `npz_xxh128`: for each layer to import, the digest of its npz as it was checked; a file that no
// longer has it is refused (it changed after the checks), so the bytes copied are the bytes checked.
std::unique_ptr<LayerEngine> make_import_engine(std::filesystem::path source,
                                                std::map<std::string, std::string> npz_xxh128);

}  // namespace duquant

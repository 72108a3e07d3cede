// Folding the smoothing scales into a copy of the checkpoint (docs/calibration.md).
#pragma once

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "formats/safetensors_checkpoint.hpp"
#include "math/smoothing.hpp"

namespace duquant {

// Writes a copy of the checkpoint (one safetensors file, atomically) where, for every group with
// a norm and an entry in `scales` (key -> s), the norm's tensors are divided by s as NormKind says
// and every member's weight is smoothed_weight(W, s). Every other tensor is copied byte for byte,
// with its name, dtype and shape; the metadata is kept. Groups without a norm must not appear in
// `scales` (duquant::Error, internal).
//
// Details: tensors are written in the input's order (Checkpoint::tensors(): shards by file name,
// then data offset); for a sharded input the metadata is the union of the shards' (the first
// shard wins a key that differs). New values are computed in float32 from the float32 value and
// rounded to the tensor's own dtype; the gate rows of an ada_rms dense keep their bytes. Memory
// stays bounded (tensors are copied from the mapping and released one by one, modified ones are
// recomputed in chunks of rows). Errors (duquant::Error; no file is left under `out`): `out`
// naming an input file or the checkpoint's index (usage); a key of `scales` that is no group, a
// group without a norm, a scale count other than the members' in_features, groups that do not
// match the checkpoint (internal); a scale that is not positive and finite (numeric); a member
// weight that is not F32/F16/BF16 (format) -- all before the output is created; and a finite
// value that would overflow its dtype once folded, e.g. an F16 norm weight divided by a tiny s
// (numeric, found while writing; the partial output is removed).
// `member_weight_digests`, when given, receives the XXH3-128 of every smoothed member weight as
// written (stored name -> hex): what `verify` recognises the folded checkpoint by.
void write_folded_checkpoint(const formats::Checkpoint& ckpt, const std::vector<SmoothGroup>& groups,
                             const std::map<std::string, std::vector<float>>& scales, const std::filesystem::path& out,
                             std::map<std::string, std::string>* member_weight_digests = nullptr);

}  // namespace duquant

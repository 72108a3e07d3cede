// The naming contract (docs/selection.md, "Checkpoint layouts and names"): how the tensor names
// stored in a checkpoint become the module names the target runtime uses.
//
// Selection, presets, pack file and tensor names, verify, inspect and calibration dumps all speak
// of layers by the runtime's module names. A checkpoint may store them under a root prefix
// (LeRobot stores pi0/pi0.5 under `model.` and GR00T under `_groot_model.`): when every tensor of
// a known model sits under one prefix, that prefix is recognised and removed, and a notice says
// so. `--strip-prefix P` / `--add-prefix P` say it for any other layout (`--strip-prefix ''`
// keeps the stored names). Tensors outside a removed prefix are set aside: they are no part of
// the runtime's model, but a copy of the checkpoint (--fold-smoothing) still holds them.
#pragma once

#include <nlohmann/json.hpp>

#include <cstddef>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/quant_config.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace duquant {

// What a checkpoint's names look like.
struct LayoutGuess {
  std::string model;                  // "pi0.5", "pi0", "pi0/pi0.5", "GR00T N1.5", or "" (no known model)
  std::optional<std::string> prefix;  // the root prefix every tensor of that model sits under ("" for none)
  std::vector<std::string> prefixes;  // when several prefixes hold the model (ambiguous): all of them
  std::string layout;                 // "OpenPI", "LeRobot", "NVIDIA", "prefixed", ""
};
LayoutGuess guess_layout(const formats::Checkpoint& checkpoint);

struct NameMapping {
  std::string checkpoint_prefix;  // removed from stored names; tensors without it are set aside
  std::string runtime_prefix;     // put before what is left
  std::string how;                // "none" (stored names), "detected", "flags", "manifest"
  std::string model;              // as guessed (informational)
  std::string layout;             // as guessed (informational)
  std::size_t set_aside = 0;      // tensors outside checkpoint_prefix
  std::string example_set_aside;  // the first of them, for messages

  bool identity() const noexcept { return checkpoint_prefix.empty() && runtime_prefix.empty(); }
  // The runtime's name of a stored name, or nullopt when it lies outside checkpoint_prefix.
  std::optional<std::string> runtime_name(std::string_view stored) const;
  // The stored name of a runtime name (the inverse, for names under runtime_prefix).
  std::string stored_name(std::string_view runtime) const;
};

// The mapping for `checkpoint`: from `options` when either prefix is given, else detected
// (guess_layout). An explicit --strip-prefix that no tensor starts with throws duquant::Error (usage).
NameMapping resolve_names(const formats::Checkpoint& checkpoint, const NamingOptions& options);
// Renames the checkpoint's tensors (formats::Checkpoint::rename) and counts what was set aside.
void apply_names(formats::Checkpoint& checkpoint, NameMapping& mapping);

// Opens `path` and applies `fixed` when given (a pack's recorded mapping), else the mapping
// resolved from `options`. Calls `notice` with a line for a user when the names change, and
// `warn` when a known model's names are ambiguous.
struct OpenedCheckpoint {
  formats::Checkpoint checkpoint;
  NameMapping names;
};
OpenedCheckpoint open_checkpoint(const std::filesystem::path& path, const NamingOptions& options,
                                 const std::optional<NameMapping>& fixed = std::nullopt,
                                 const std::function<void(const std::string&)>& notice = {},
                                 const std::function<void(const std::string&)>& warn = {});

// One line for a user: what was found and how names are read.
std::string describe_names(const NameMapping& mapping, const std::string& source);
// Why a checkpoint with a known model's names under several prefixes is read as stored.
std::string ambiguous_layout_text(const LayoutGuess& guess);

// The manifest's "names" object (checkpoint section) and back. Reading validates the fields and
// throws duquant::Error (format) naming `label`.
nlohmann::ordered_json names_json(const NameMapping& mapping);
NameMapping names_from_json(const nlohmann::json& j, const std::string& label);

}  // namespace duquant

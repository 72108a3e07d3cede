// `duquant verify`: proves a pack directory is sound, or says exactly what is wrong.
//
// Works on our packs (manifest.json + quantized.safetensors + npz) and on packs the Python runtime
// wrote (npz only). Every problem found is a Finding with a stable reason code (docs/verify.md
// lists them) and a message naming the file, member or tensor and the numbers; a layer is OK, WARN
// or FAIL by its worst finding. Findings never stop the run: every layer is checked.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "config/quant_config.hpp"

namespace duquant {

// Named tolerances (docs/verify.md explains each).
inline constexpr double kOrthogonalityTolerance = 1e-4;  // max |RᵀR − I| of a stored rotation
inline constexpr double kTransformTolerance = 1e-4;      // ‖y_pack − x Wᵀ‖ / ‖x Wᵀ‖ without quantization
inline constexpr double kConformanceTolerance = 1e-5;    // max |Δ| / max |y| of recomputed test_y_*
inline constexpr double kQualityTolerance = 1e-3;        // relative, recomputed vs claimed rel. error
inline constexpr double kQualityFloor = 1e-6;            // absolute: rel. errors below are float32 rounding
inline constexpr double kEigenbasisTolerance = 1e-3;     // ‖offdiag(RᵀGR)‖ / ‖G‖ (rotations fit W)
inline constexpr double kEnergyTieTolerance = 1e-6;      // relative: channels this close may trade places
inline constexpr double kEigenGapTolerance = 1e-5;       // relative to λ_max: eigenvalues treated as repeated
inline constexpr double kSubspaceTolerance = 1e-2;  // 1 − Σcos² of a column against its eigenspace (no checkpoint)
// With the checkpoint: a column's allowed 1 − Σcos² is max(floor, (noise · λ_max / gap)²), gap the
// distance from its eigenvalue to the nearest one outside its cluster (Davis-Kahan: a float32 solver's
// error in an eigenvector is about its residual over that gap).
inline constexpr double kRotationNoise = 1e-4;           // relative to λ_max: residual of float32 rotations
inline constexpr double kSubspaceFloor = 1e-5;           // 1 − Σcos² always allowed (float32 storage)
inline constexpr double kReferenceQualityFactor = 1.01;  // ours at most reference × this

enum class Level { ok, info, warn, fail };
const char* level_name(Level level) noexcept;  // "OK", "INFO", "WARN", "FAIL"

struct Finding {
  Level level = Level::ok;
  std::string reason;   // stable code, e.g. "perm", "rotation", "stale"
  std::string message;  // what and where, with the numbers
};

struct LayerVerdict {
  std::string name;
  std::string file;  // npz file name ("" when the layer has none)
  std::vector<Finding> findings;
  nlohmann::ordered_json numbers;  // measured values (errors, tolerances) for --json
  Level level() const;             // worst finding (info counts as OK)
};

struct VerifyOptions {
  std::filesystem::path pack;
  std::optional<std::filesystem::path> checkpoint;
  std::optional<std::filesystem::path> reference;
  // Selection for packs without a manifest (the Python runtime's): which layers should be there.
  // Unset: the missing-layer check is skipped for such packs (an INFO says so).
  std::optional<RunConfig> selection;
  int wbits_default = 4;  // weight bits for npz-only packs' quality figures
  // How the checkpoint's names are read; unset: as the manifest recorded, else as detected.
  NamingOptions naming;
};

struct VerifyReport {
  std::filesystem::path pack;
  bool has_manifest = false;
  std::vector<Finding> pack_findings;  // directory-level: manifest, file checksums, notes
  std::vector<LayerVerdict> layers;    // sorted by name
  std::size_t count(Level level) const;
  Level worst() const;
};

// Runs every check. Throws duquant::Error only for unusable input (the pack folder, checkpoint or
// reference cannot be opened at all); everything else becomes findings.
VerifyReport run_verify(const VerifyOptions& options);

nlohmann::ordered_json verify_report_json(const VerifyReport& report);

}  // namespace duquant

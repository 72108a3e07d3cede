// The configuration of a run: which layers, and how they are quantized. Defaults are the runtime's
// (reference section 5). Values arrive as strings from presets, environment variables and flags
// (see settings.hpp) and are validated once, into these types.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace duquant {

inline constexpr std::string_view kDefaultInclude =
    ".*(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2|gate_proj|up_proj|down_proj).*";
inline constexpr std::string_view kDefaultExclude = "(?:^|\\.)(norm|ln|layernorm|emb)(?:\\.|$)";

enum class RowRot { restore, off, propagate };
// The runtime's spelling: "restore", "0", "propagate".
std::string_view row_rot_name(RowRot mode) noexcept;

struct QuantConfig {
  int wbits_default = 4;
  int abits = 8;
  int block = 16;
  int block_out = 16;  // BLOCK_OUT defaults to BLOCK
  bool permute = true;
  RowRot row_rot = RowRot::restore;
  double lambda_smooth = 0.15;
  double act_pct = 99.9;
  int calib_steps = 32;
};

struct SelectionConfig {
  std::string scope;  // name prefix; empty selects from the whole model
  std::string include{kDefaultInclude};
  std::string exclude{kDefaultExclude};
  std::vector<std::string> layers;  // exact names; when non-empty include/exclude do not apply
  bool include_action_head = false;
  std::vector<std::pair<std::string, int>> wbits;        // exact layer name -> weight bits
  std::vector<std::pair<std::string, int>> wbits_rules;  // regex -> weight bits, first match wins
};

// Which runtime's conventions apply: its environment prefix and its log tag.
enum class Runtime { openpi, gr00t };
std::string_view runtime_env_prefix(Runtime runtime) noexcept;  // "OPENPI_DUQUANT_", "GR00T_DUQUANT_"
std::string_view runtime_log_tag(Runtime runtime) noexcept;     // "DUQUANT", "GR00T-DUQUANT"

struct RunConfig {
  SelectionConfig selection;
  QuantConfig quant;
  Runtime runtime = Runtime::openpi;
  std::string preset;  // name of the preset applied, if any
};


}  // namespace duquant

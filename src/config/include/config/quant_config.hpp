// The configuration of a run: which layers, and how they are quantized. Defaults are the runtime's
// (reference section 5). Values arrive as strings from presets, environment variables and flags
// (see settings.hpp) and are validated once, into these types.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace duquant {

// Which runtime's conventions apply (docs/selection.md): its default selection, its action-head
// rule, its environment prefix and its log tag.
enum class Runtime { openpi, gr00t };
std::string_view runtime_name(Runtime runtime) noexcept;        // "openpi", "gr00t"
std::string_view runtime_env_prefix(Runtime runtime) noexcept;  // "OPENPI_DUQUANT_", "GR00T_DUQUANT_"
std::string_view runtime_log_tag(Runtime runtime) noexcept;     // "DUQUANT", "GR00T-DUQUANT"

// OpenPI's defaults (reference section 5).
inline constexpr std::string_view kDefaultInclude =
    ".*(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2|gate_proj|up_proj|down_proj).*";
inline constexpr std::string_view kDefaultExclude = "(?:^|\\.)(norm|ln|layernorm|emb)(?:\\.|$)";
// The GR00T port's defaults: the language model's projections and the DiT's attention and
// feed-forward linears; never the vision tower, norms, embeddings or the category-specific parts.
inline constexpr std::string_view kGr00tDefaultInclude =
    ".*(?:backbone\\.eagle_model\\.language_model\\..*\\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
    "action_head\\.model\\..*(?:attn1\\.to_(?:q|k|v)|attn1\\.to_out\\.0|ff\\.net\\.(?:0\\.proj|2))).*";
inline constexpr std::string_view kGr00tDefaultExclude =
    "(?:^|\\.)(?:vision_model|vision|radio|norm|ln|layernorm|embed|lm_head|timestep_encoder|state_encoder|"
    "action_encoder|action_decoder|future_tokens|vl_self_attention)(?:\\.|$)";
std::string_view default_include(Runtime runtime) noexcept;
std::string_view default_exclude(Runtime runtime) noexcept;

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
  std::vector<std::string> not_linear;                   // --not-linear: module names (regex) that are no linear layer
};

// How stored tensor names become the runtime's module names (checkpoint_names.hpp). Unset: the
// prefix of a known layout is found by itself.
struct NamingOptions {
  std::optional<std::string> strip_prefix;  // --strip-prefix ("" keeps the names as stored)
  std::optional<std::string> add_prefix;    // --add-prefix
};

struct RunConfig {
  SelectionConfig selection;
  QuantConfig quant;
  NamingOptions naming;
  Runtime runtime = Runtime::openpi;
  std::string preset;  // name of the preset applied, if any
};

}  // namespace duquant

// duquant synth -o FILE: writes the embedded default checkpoint (pi0.5-shaped, deterministic).
#include <fmt/format.h>

#include <filesystem>
#include <memory>

#include "cli/commands.hpp"
#include "duquant/error.hpp"
#include "duquant/synth.hpp"

namespace duquant::cli {
namespace {

struct Synth {
  std::string output;
  SynthOptions options;
  std::optional<int> layers;
  std::string dtype = "bf16";
  bool force = false;

  int run() {
    std::string upper;
    for (char ch : dtype) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    const auto parsed = formats::parse_dtype(upper);
    DQ_CHECK(parsed && formats::converts_to_f32(*parsed), usage, "--dtype: '{}' is not bf16, f16 or f32", dtype);
    options.dtype = *parsed;
    if (layers) options.llm_layers = options.expert_layers = options.vision_layers = *layers;
    DQ_CHECK(force || !std::filesystem::exists(output), usage, "{}: exists (use --force to replace it)", output);
    const std::uint64_t bytes = write_synth_checkpoint(output, options);
    fmt::print("wrote {} ({:.1f} MB): pi0.5-shaped, factor {}, {} LLM / {} expert / {} vision layers, {}\n", output,
               static_cast<double>(bytes) / 1e6, options.factor, options.llm_layers, options.expert_layers,
               options.vision_layers, formats::dtype_name(options.dtype));
    return 0;
  }
};

}  // namespace

Action register_synth(CLI::App& app) {
  auto cmd = std::make_shared<Synth>();
  CLI::App* c = app.add_subcommand("synth", "Write a deterministic synthetic pi0.5-shaped checkpoint");
  c->add_option("-o,--output", cmd->output, "Output .safetensors file")->required();
  c->add_option("--factor", cmd->options.factor, "Divide every width by 1, 2, 4, 8 or 16")->capture_default_str();
  c->add_option("--layers", cmd->layers, "Transformer layers of every stack (default 18 / 18 / 27)");
  c->add_option("--llm-layers", cmd->options.llm_layers, "Language model layers")->capture_default_str();
  c->add_option("--expert-layers", cmd->options.expert_layers, "Action expert layers")->capture_default_str();
  c->add_option("--vision-layers", cmd->options.vision_layers, "Vision tower layers")->capture_default_str();
  c->add_option("--dtype", cmd->dtype, "bf16, f16 or f32")->capture_default_str();
  c->add_option("--seed", cmd->options.seed, "Seed of the values")->capture_default_str();
  c->add_option("--outliers", cmd->options.outlier_channels, "Outlier input channels per linear weight")
      ->capture_default_str();
  c->add_flag("--force", cmd->force, "Replace an existing file");
  return [cmd, c]() { return c->parsed() ? cmd->run() : -1; };
}

}  // namespace duquant::cli

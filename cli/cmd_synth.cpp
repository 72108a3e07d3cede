// duquant synth -o PATH [--model pi05|gr00t-n1.5]: writes the embedded default checkpoint
// (deterministic; pi0.5- or GR00T N1.5-shaped; one file or a sharded folder).
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <system_error>

#include "cli/commands.hpp"
#include "duquant/error.hpp"
#include "formats/output_paths.hpp"
#include "formats/regular_file.hpp"
#include "synth/synth.hpp"

namespace duquant::cli {
namespace {

namespace fs = std::filesystem;

struct Synth {
  std::string output;
  std::string model = "pi05";
  SynthOptions options;
  std::optional<int> layers, llm_layers, expert_layers, vision_layers, dit_layers, vl_layers, shards;
  std::optional<std::string> prefix;
  std::string dtype = "bf16";
  bool force = false;

  // --layers N sets every stack of the model; a stack's own option overrides it.
  void apply_layers(bool pi05) {
    auto pick = [&](const std::optional<int>& own, bool has_stack) {
      return own ? *own : layers && has_stack ? *layers : SynthOptions::kModelDefault;
    };
    options.llm_layers = pick(llm_layers, true);
    options.vision_layers = pick(vision_layers, true);
    options.expert_layers = pick(expert_layers, pi05);
    options.dit_layers = pick(dit_layers, !pi05);
    options.vl_layers = pick(vl_layers, !pi05);
  }

  // A folder output may be missing or empty (or anything with --force); a file output may be
  // missing, or with --force a regular file (through a symbolic link: the file it points to).
  // Returns where to write. A device, a FIFO or a socket is refused and never opened.
  fs::path check_output(bool folder) const {
    const std::string label = "-o " + output;
    const fs::file_status status = formats::status_of(output, label);
    if (folder) {
      if (!fs::exists(status)) return output;
      std::error_code ec;
      DQ_CHECK(fs::is_directory(status), usage,
               "{}: exists and is not a folder (--model {} with {} shard(s) writes a folder)", output, model,
               options.shards);
      DQ_CHECK(force || fs::is_empty(output, ec), usage,
               "{}: folder exists and is not empty (use --force to replace the checkpoint in it)", output);
      return output;
    }
    DQ_CHECK(!fs::is_directory(status), usage,
             "{}: is a folder (--model pi05 with one shard writes a file; use --shards N for a folder)", output);
    return formats::check_output_file(output, "-o", force, false).target;
  }

  std::string summary(std::uint64_t bytes) const {
    const SynthOptions& o = options;
    const std::string stacks =
        o.model == SynthModel::pi05
            ? fmt::format("{} LLM / {} expert / {} vision layers", o.llm_layers, o.expert_layers, o.vision_layers)
            : fmt::format("{} LLM / {} vision / {} DiT / {} VL layers", o.llm_layers, o.vision_layers, o.dit_layers,
                          o.vl_layers);
    return fmt::format("wrote {} ({:.1f} MB): {}, factor {}, {}, {}, {} shard{}, {}\n", output,
                       static_cast<double>(bytes) / 1e6, synth_model_name(o.model), o.factor, stacks,
                       formats::dtype_name(o.dtype), o.shards, o.shards == 1 ? "" : "s",
                       o.prefix.empty() ? std::string("no prefix") : fmt::format("prefix '{}'", o.prefix));
  }

  int run() {
    const auto parsed_model = parse_synth_model(model);
    DQ_CHECK(parsed_model, usage, "--model: '{}' is not pi05 or gr00t-n1.5", model);
    options.model = *parsed_model;
    std::string upper;
    for (char ch : dtype) upper += static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    const auto parsed = formats::parse_dtype(upper);
    DQ_CHECK(parsed && formats::converts_to_f32(*parsed), usage, "--dtype: '{}' is not bf16, f16 or f32", dtype);
    options.dtype = *parsed;
    apply_layers(options.model == SynthModel::pi05);
    if (shards) options.shards = *shards;
    if (prefix) {
      DQ_CHECK(!prefix->empty(), usage, "--prefix: must not be empty (leave the option out for no prefix)");
      options.prefix = *prefix;
    }
    options = resolve_synth_options(options);
    const fs::path target = check_output(synth_writes_folder(options));
    const std::uint64_t bytes = write_synth_checkpoint(target, options);
    fmt::print("{}", summary(bytes));
    return 0;
  }
};

}  // namespace

Action register_synth(CLI::App& app) {
  auto cmd = std::make_shared<Synth>();
  CLI::App* c = app.add_subcommand("synth", "Write a deterministic synthetic pi0.5- or GR00T N1.5-shaped checkpoint");
  c->add_option("-o,--output", cmd->output,
                "Output: a .safetensors file (pi05, one shard) or a folder of shards and an index")
      ->required();
  c->add_option("--model", cmd->model, "pi05 or gr00t-n1.5")->capture_default_str();
  c->add_option("--factor", cmd->options.factor, "Divide every width by 1, 2, 4, 8 or 16")->capture_default_str();
  c->add_option("--layers", cmd->layers, "Transformer layers of every stack of the model");
  c->add_option("--llm-layers", cmd->llm_layers, "Language model layers (pi05 18, gr00t-n1.5 12)");
  c->add_option("--expert-layers", cmd->expert_layers, "pi05: action expert layers (18)");
  c->add_option("--vision-layers", cmd->vision_layers, "Vision tower layers (27)");
  c->add_option("--dit-layers", cmd->dit_layers, "gr00t-n1.5: DiT blocks of the action head (16)");
  c->add_option("--vl-layers", cmd->vl_layers, "gr00t-n1.5: VL self-attention blocks of the action head (4)");
  c->add_option("--dtype", cmd->dtype, "bf16, f16 or f32")->capture_default_str();
  c->add_option("--seed", cmd->options.seed, "Seed of the values")->capture_default_str();
  c->add_option("--outliers", cmd->options.outlier_channels, "Outlier input channels per linear weight")
      ->capture_default_str();
  c->add_option("--shards", cmd->shards,
                "Safetensors files, 1 to 99 (pi05 1, gr00t-n1.5 2); pi05 with more than 1 writes a folder");
  c->add_option("--prefix", cmd->prefix, "Prepend to every tensor name, ending in '.' (model., _groot_model.)");
  c->add_flag("--force", cmd->force, "Replace an existing file, or the checkpoint in a non-empty folder");
  return [cmd, c]() { return c->parsed() ? cmd->run() : -1; };
}

}  // namespace duquant::cli

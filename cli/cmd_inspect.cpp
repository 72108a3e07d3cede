// duquant inspect PACKDIR|CKPT [--json] [--head-dim N] [--html FILE] [--checkpoint CKPT]: what a
// checkpoint holds and what each preset would pack, or what a pack holds and which layers hurt.
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <optional>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "duquant/error.hpp"
#include "duquant/html_report.hpp"
#include "duquant/inspect.hpp"
#include "formats/regular_file.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/strict_json.hpp"

namespace duquant::cli {
namespace {

// Names come from file names too, which need not be UTF-8: replace what is not, never throw.
std::string dump(const nlohmann::ordered_json& j) {
  return formats::dump_json(j, 2);
}

struct Inspect {
  std::string target;
  std::optional<std::string> checkpoint;
  std::optional<std::int64_t> head_dim;
  std::optional<std::string> html;
  bool json = false;
  std::optional<std::string> strip_prefix, add_prefix;

  NamingOptions naming() const { return NamingOptions{strip_prefix, add_prefix}; }

  HeadDims head_dims(const std::filesystem::path& beside) const {
    if (head_dim) {
      HeadDims d;
      d.all = *head_dim;
      d.source = "--head-dim";
      return d;
    }
    return head_dims_from_config(beside);
  }

  int run() const {
    DQ_CHECK(!head_dim || (*head_dim >= 1 && *head_dim <= (1 << 20)), usage, "--head-dim: {} is not a head dimension "
             "(1 to 1048576)", head_dim.value_or(0));
    // A link loop or an over-long name: an io error naming the path (status_of), never an exception.
    DQ_CHECK(std::filesystem::exists(formats::status_of(target)), io, "{}: no such file or directory", target);
    if (looks_like_pack(target)) return run_pack();
    DQ_CHECK(!checkpoint, usage, "--checkpoint applies to a pack directory; {} is not one (no manifest.json, no .npz)",
             target);
    const OpenedCheckpoint opened = open_checkpoint(target, naming(), std::nullopt, notice, warn);
    const CheckpointReport report = inspect_checkpoint(opened.checkpoint, head_dims(target));
    for (const std::string& w : report.warnings) warn(w);
    if (html) write_html_file(*html, checkpoint_html(report));
    if (json) fmt::print("{}\n", dump(checkpoint_json(report)));
    else fmt::print("{}", checkpoint_text(report));
    return 0;
  }

  int run_pack() const {
    PackReport report = inspect_pack(target);
    const HeadDims dims = head_dims(checkpoint ? std::filesystem::path(*checkpoint) : std::filesystem::path(target));
    report.head_dim_source = dims.source;
    report.warnings.insert(report.warnings.end(), dims.warnings.begin(), dims.warnings.end());
    add_block_out_warnings(report, dims);
    if (checkpoint) {
      const OpenedCheckpoint opened = open_checkpoint(*checkpoint, naming(), std::nullopt, notice, warn);
      add_head_errors(report, opened.checkpoint, dims);
    } else if (dims.known()) {
      report.notes.push_back("per-head error needs the checkpoint: add --checkpoint CKPT");
    }
    for (const std::string& w : report.warnings) warn(w);
    if (html) write_html_file(*html, pack_html(report));
    if (json) fmt::print("{}\n", dump(pack_json(report)));
    else fmt::print("{}", pack_text(report));
    return 0;
  }
};

}  // namespace

Action register_inspect(CLI::App& app) {
  auto cmd = std::make_shared<Inspect>();
  CLI::App* c = app.add_subcommand(
      "inspect", "Show what a checkpoint holds and what each preset would pack, or a pack's layers and quality");
  c->add_option("target", cmd->target, "pack directory, or checkpoint (safetensors file, sharded index, folder)")
      ->required();
  c->add_flag("--json", cmd->json, "Print one JSON document instead of text");
  c->add_option("--head-dim", cmd->head_dim, "Attention head dimension (default: from config.json beside the checkpoint)");
  c->add_option("--checkpoint", cmd->checkpoint, "The packed checkpoint: per-head error of attention layers");
  c->add_option("--html", cmd->html, "Also write a self-contained HTML report (table and SQNR chart) to FILE");
  c->add_option("--strip-prefix", cmd->strip_prefix,
                "Remove this prefix from the checkpoint's names (default: a known layout's, e.g. LeRobot's 'model.')");
  c->add_option("--add-prefix", cmd->add_prefix, "Put this prefix before the checkpoint's names");
  return [cmd, c]() { return c->parsed() ? cmd->run() : -1; };
}

}  // namespace duquant::cli

// duquant inspect PACKDIR|CKPT [--json] [--head-dim N] [--html FILE] [--checkpoint CKPT]: what a
// checkpoint holds and what each preset would pack, or what a pack holds and which layers hurt.
#include <fmt/format.h>

#include <filesystem>
#include <memory>
#include <optional>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "duquant/error.hpp"
#include "duquant/inspect.hpp"
#include "formats/folder_lock.hpp"
#include "formats/output_paths.hpp"
#include "formats/regular_file.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/strict_json.hpp"
#include "report/html_report.hpp"

namespace duquant::cli {
namespace {

namespace fs = std::filesystem;

// The files of a checkpoint inspect reads: its shards, the index or file named, config.json beside.
void add_checkpoint_inputs(formats::InputSet& in, const formats::Checkpoint& ckpt, const std::string& label) {
  for (const auto& f : ckpt.files()) in.add(f.path, label);
  std::error_code ec;
  const bool folder = fs::is_directory(ckpt.source(), ec);
  if (!folder) in.add(ckpt.source(), label);
  const fs::path dir = folder ? ckpt.source() : ckpt.source().parent_path();
  for (const char* name : {"model.safetensors.index.json", "config.json"}) {
    const fs::path p = (dir.empty() ? fs::path(".") : dir) / name;
    if (fs::exists(p, ec)) in.add(p, label);
  }
}

// The files of a pack folder inspect reads (the manifest, npz files, quantized.safetensors and its
// shards and index); a report written beside them is not one of them.
void add_pack_inputs(formats::InputSet& in, const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string n = it->path().filename().string();
    const bool npz = n.size() > 4 && n.compare(n.size() - 4, 4, ".npz") == 0;
    if (npz || n == "manifest.json" || n.rfind("quantized", 0) == 0) in.add(it->path(), "pack file");
  }
}

// Names come from file names too, which need not be UTF-8: replace what is not, never throw.
std::string dump(const nlohmann::ordered_json& j) { return formats::dump_json(j, 2); }

struct Inspect {
  std::string target;
  std::optional<std::string> checkpoint;
  std::optional<std::int64_t> head_dim;
  std::optional<std::string> html;
  bool json = false, force = false;
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

  // --html: a regular file (replaced only with --force), or "-" for standard output instead of the
  // text report; never one of the inputs. Checked before the work, written after it.
  std::optional<formats::OutputFile> html_output(const formats::InputSet& inputs) const {
    if (!html) return std::nullopt;
    const formats::OutputFile out = formats::check_output_file(*html, "--html", force, true);
    DQ_CHECK(!(out.to_stdout && json), usage, "--html - and --json both write to standard output; choose one");
    if (!out.to_stdout) inputs.check_output_file(out.target, "--html " + *html);
    return out;
  }

  // The report: the page (to its file, or to standard output instead of the text), then the text.
  void emit(const std::optional<formats::OutputFile>& out, const std::string& page, const std::string& text) const {
    if (out && !out->to_stdout) write_html_file(out->target, page);
    if (out && out->to_stdout)
      fmt::print("{}", page);
    else
      fmt::print("{}", text);
  }

  int run() const {
    DQ_CHECK(!head_dim || (*head_dim >= 1 && *head_dim <= (1 << 20)), usage,
             "--head-dim: {} is not a head dimension "
             "(1 to 1048576)",
             head_dim.value_or(0));
    // A link loop or an over-long name: an io error naming the path (status_of), never an exception.
    DQ_CHECK(std::filesystem::exists(formats::status_of(target)), io, "{}: no such file or directory", target);
    if (looks_like_pack(target)) return run_pack();
    DQ_CHECK(!checkpoint, usage, "--checkpoint applies to a pack directory; {} is not one (no manifest.json, no .npz)",
             target);
    const OpenedCheckpoint opened = open_checkpoint(target, naming(), std::nullopt, notice, warn);
    formats::InputSet inputs;
    add_checkpoint_inputs(inputs, opened.checkpoint, "checkpoint file");
    const auto out = html_output(inputs);
    const CheckpointReport report = inspect_checkpoint(opened.checkpoint, head_dims(target));
    for (const std::string& w : report.warnings) warn(w);
    emit(out, out ? checkpoint_html(report) : std::string(),
         json ? dump(checkpoint_json(report)) + "\n" : checkpoint_text(report));
    return 0;
  }

  int run_pack() const {
    formats::InputSet inputs;
    add_pack_inputs(inputs, target);
    std::optional<OpenedCheckpoint> opened;
    if (checkpoint) {
      opened.emplace(open_checkpoint(*checkpoint, naming(), std::nullopt, notice, warn));
      add_checkpoint_inputs(inputs, opened->checkpoint, "--checkpoint file");
    }
    const auto out = html_output(inputs);
    PackReport report = inspect_pack(target);
    // A pack being written now: what is read may change under the report.
    if (const auto holder = formats::folder_lock_holder(target))
      report.warnings.push_back(
          fmt::format("being-written: a pack is being written into {} now ({}); this report may "
                      "not match the pack that results",
                      target, *holder));
    const HeadDims dims = head_dims(checkpoint ? std::filesystem::path(*checkpoint) : std::filesystem::path(target));
    report.head_dim_source = dims.source;
    report.warnings.insert(report.warnings.end(), dims.warnings.begin(), dims.warnings.end());
    add_block_out_warnings(report, dims);
    if (opened) {
      add_head_errors(report, opened->checkpoint, dims);
    } else if (dims.known()) {
      report.notes.push_back("per-head error needs the checkpoint: add --checkpoint CKPT");
    }
    for (const std::string& w : report.warnings) warn(w);
    emit(out, out ? pack_html(report) : std::string(), json ? dump(pack_json(report)) + "\n" : pack_text(report));
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
  c->add_option("--head-dim", cmd->head_dim,
                "Attention head dimension (default: from config.json beside the checkpoint)");
  c->add_option("--checkpoint", cmd->checkpoint, "The packed checkpoint: per-head error of attention layers");
  c->add_option("--html", cmd->html,
                "Also write a self-contained HTML report (table and SQNR chart) to FILE; '-' writes it to standard "
                "output instead of the text");
  c->add_flag("--force", cmd->force, "Replace an existing --html file");
  c->add_option("--strip-prefix", cmd->strip_prefix,
                "Remove this prefix from the checkpoint's names (default: a known layout's, e.g. LeRobot's 'model.')");
  c->add_option("--add-prefix", cmd->add_prefix, "Put this prefix before the checkpoint's names");
  return [cmd, c]() { return c->parsed() ? cmd->run() : -1; };
}

}  // namespace duquant::cli

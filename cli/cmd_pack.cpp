// duquant pack CKPT -o DIR [configuration]: DuQuant packing on the CPU or CUDA devices.
#include <fmt/format.h>
#include <omp.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <system_error>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "cli/process_guard.hpp"
#include "duquant/error.hpp"
#include "duquant/pack.hpp"
#include "report/dryrun_report.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"

namespace duquant::cli {
namespace {

std::uint64_t parse_size(const std::string& text) {
  std::size_t used = 0;
  double value = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    fail(ErrorKind::usage, "--max-shard-size: '{}' is not a size (e.g. 4GB, 500MB, 1000000)", text);
  }
  std::string unit = text.substr(used);
  for (auto& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  double mult = 1;
  if (unit.empty() || unit == "B")
    mult = 1;
  else if (unit == "KB" || unit == "K")
    mult = 1e3;
  else if (unit == "MB" || unit == "M")
    mult = 1e6;
  else if (unit == "GB" || unit == "G")
    mult = 1e9;
  else if (unit == "KIB")
    mult = 1024.0;
  else if (unit == "MIB")
    mult = 1024.0 * 1024;
  else if (unit == "GIB")
    mult = 1024.0 * 1024 * 1024;
  else
    fail(ErrorKind::usage, "--max-shard-size: unknown unit '{}' in '{}'", unit, text);
  DQ_CHECK(value * mult >= 1 && value * mult < 1.8e19, usage, "--max-shard-size: '{}' is out of range", text);
  return static_cast<std::uint64_t>(value * mult);
}

struct Pack {
  std::string checkpoint;
  std::string output;
  ConfigFlags flags;
  bool resume = false, force = false, no_lock = false;
  int threads = 0;
  std::string max_shard = "4GB";
  std::string calib, fold_smoothing;
  std::optional<double> smooth_alpha;
  bool strict = false;
  std::string device = "auto";

  int run() {
    DQ_CHECK(!(resume && force), usage, "--resume and --force exclude each other");
    apply_threads(threads, "--threads");
    PackOptions o;
    o.checkpoint = checkpoint;
    o.output = output;
    o.config = build_config(flags);
    o.resume = resume;
    o.force = force;
    o.no_lock = no_lock;
    if (flags.config_file) o.config_file = *flags.config_file;
    o.max_shard_bytes = parse_size(max_shard);
    o.calib = calib;
    o.smooth_alpha = smooth_alpha;
    o.fold_smoothing = fold_smoothing;
    o.strict = strict;
    o.warn = [](const std::string& text) { fmt::print(stderr, "duquant: warning: {}\n", text); };
    o.device = device;
    o.notice = [](const std::string& text) { fmt::print(stderr, "duquant: notice: {}\n", text); };

    {  // the same warnings as list-linears, before the long part (opening reads headers only)
      const OpenedCheckpoint opened = open_named_checkpoint(checkpoint, o.config);
      const std::vector<LinearLayer> linears = find_linear_layers(opened.checkpoint, o.config.selection.not_linear);
      const Selection selection = select_layers(linears, o.config);
      warn_about_selection(selection, opened.checkpoint);
      note_pack_progress(0, selection.layers.size());  // what an interruption says before the first layer
      if (selection.layers.empty())                    // what list-linears would say, before the error
        fmt::print(stderr, "{}", no_match_text(linears, o.config, guess_layout(opened.checkpoint), opened.names));
    }
    const bool tty = ::isatty(STDERR_FILENO) != 0;
    const auto start = std::chrono::steady_clock::now();
    auto seconds = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
    fmt::print("duquant pack: {} -> {} ({} threads)\n", checkpoint, output, omp_get_max_threads());
    // A standard output that cannot be written (full, read-only, its reader gone) stops the pack here,
    // before any work: exit 4 (cli/main.cpp), not a finished pack whose log was lost.
    if (std::fflush(stdout) != 0) throw std::system_error(errno, std::generic_category(), "standard output");
    note_pack_output(output);  // what an interruption says
    const PackSummary s = run_pack(o, [&](const PackProgress& p) {
      note_pack_progress(p.index, p.total);
      const std::string what = fmt::format("[{}/{}] {} [{}x{}] -> W{}{}", p.index, p.total, p.name, p.out_features,
                                           p.in_features, p.wbits, p.reused ? " (reused)" : "");
      if (tty) {
        const double t = seconds();
        const double rate = t > 0 ? static_cast<double>(p.bytes_done) / t : 0;
        const double eta = rate > 0 ? static_cast<double>(p.bytes_total - p.bytes_done) / rate : 0;
        const int width = 24;
        const int filled = static_cast<int>(width * p.index / p.total);
        fmt::print(stderr, "\r\033[K[{}{}] {}/{}  {:.0f} MB/s  ETA {:.0f}s  {}", std::string(filled, '#'),
                   std::string(width - filled, '.'), p.index, p.total, rate / 1e6, eta, p.name);
        if (p.index == p.total) fmt::print(stderr, "\n");
      } else {
        fmt::print("{}  SQNR {:.2f} dB\n", what, p.sqnr_db);
        std::fflush(stdout);
      }
    });
    const double t = seconds();
    fmt::print("packed {} layers ({} reused) into {}\n", s.layers, s.reused, output);
    fmt::print(
        "  weights in: {:.1f} MB   quantized.safetensors: {:.1f} MB in {} file{}   npz: {:.1f} MB   ratio {:.2f}x\n",
        s.weight_bytes / 1e6, s.quantized_bytes / 1e6, s.shards, s.shards == 1 ? "" : "s", s.npz_bytes / 1e6,
        s.quantized_bytes ? static_cast<double>(s.weight_bytes) / static_cast<double>(s.quantized_bytes) : 0.0);
    fmt::print("  SQNR: mean {:.2f} dB (round-to-nearest {:.2f} dB), worst {:.2f} dB ({})\n", s.mean_sqnr_db,
               s.mean_rtn_sqnr_db, s.worst_sqnr_db, s.worst_layer);
    if (!calib.empty()) {
      fmt::print("  calibration: {} of {} layers from {}{}\n", s.calibrated, s.layers, calib,
                 s.smoothed ? fmt::format(", {} smoothed (alpha {})", s.smoothed, *smooth_alpha) : std::string());
      if (s.held_out_layers > 0)
        fmt::print("  output error on held-out calls (W{} A{}): mean {:.4f}, worst {:.4f} ({})\n",
                   o.config.quant.wbits_default, o.config.quant.abits, s.mean_output_rel_error,
                   s.worst_output_rel_error, s.worst_output_layer);
      else
        fmt::print("  output error: not measured (the dump has no calls beyond --calib-steps {})\n",
                   o.config.quant.calib_steps);
      if (!fold_smoothing.empty()) fmt::print("  folded checkpoint: {}\n", fold_smoothing);
    }
    fmt::print("  wall time {:.2f} s on {} (reading {:.2f} s, computing {:.2f} s, writing {:.2f} s)\n", t, s.device,
               s.read_seconds, s.compute_seconds, s.finish_seconds);
    return 0;
  }
};

}  // namespace

Action register_pack(CLI::App& app) {
  auto cmd = std::make_shared<Pack>();
  CLI::App* c = app.add_subcommand("pack", "Quantize the selected layers and write a pack directory");
  c->add_option("checkpoint", cmd->checkpoint, "safetensors file, sharded index, or folder")->required();
  c->add_option("-o,--output", cmd->output, "Pack directory to write")->required();
  c->add_flag("--resume", cmd->resume, "Continue an interrupted pack: keep the layers already done and verified");
  c->add_flag("--force", cmd->force,
              "Replace the pack files of a non-empty output folder (and an existing --fold-smoothing file)");
  c->add_flag("--no-lock", cmd->no_lock,
              "Write even where the file system cannot lock the output folder (some NFS, FUSE); nothing then "
              "stops a second writer");
  c->add_option("--threads", cmd->threads, "Threads (default: all cores); the output does not depend on it");
  c->add_option("--max-shard-size", cmd->max_shard, "Shard quantized.safetensors past this size (default 4GB)");
  c->add_option("--device", cmd->device,
                "auto (a GPU when present, else the CPU), cpu, cuda, or cuda:N[,M...] to split the layers between GPUs")
      ->capture_default_str();
  c->add_option("--calib", cmd->calib, "Calibration activation dump (HDF5 or safetensors; docs/calibration-dumps.md)")
      ->group("Calibration");
  c->add_option("--smooth-alpha", cmd->smooth_alpha,
                "Smoothing strength 0-1: s_j = max|X_j|^a / max|W_j|^(1-a), stored as smooth_scale (needs --calib)")
      ->group("Calibration");
  c->add_option("--fold-smoothing", cmd->fold_smoothing,
                "Write the checkpoint with 1/s folded into its norms to this .safetensors file")
      ->group("Calibration");
  c->add_flag("--strict", cmd->strict, "Selected layers missing from the dump are an error, not a warning")
      ->group("Calibration");
  add_config_flags(*c, cmd->flags);
  return [cmd, c]() { return c->parsed() ? cmd->run() : -1; };
}

}  // namespace duquant::cli

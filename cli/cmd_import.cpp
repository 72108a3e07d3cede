// duquant import RUNTIME_PACKDIR --checkpoint CKPT -o OUT [configuration]: a pack folder the Python
// runtime wrote (npz files only) checked against its checkpoint and made a complete duquant pack.
#include <fmt/format.h>
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <memory>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "cli/process_guard.hpp"
#include "duquant/convert.hpp"
#include "duquant/error.hpp"

namespace duquant::cli {
namespace {

struct Import {
  std::string source, checkpoint, output;
  ConfigFlags flags;
  bool skip_stale = false, no_lock = false;
  int threads = 0;

  int run() {
    apply_threads(threads, "--threads");
    ImportOptions o;
    o.source = source;
    o.skip_stale = skip_stale;
    o.pack.checkpoint = checkpoint;
    o.pack.output = output;
    o.pack.config = build_config(flags);
    o.pack.no_lock = no_lock;
    if (flags.config_file) o.pack.config_file = *flags.config_file;
    o.pack.device = "cpu";
    o.pack.warn = [](const std::string& text) { warn(text); };
    o.pack.notice = [](const std::string& text) { notice(text); };
    const auto start = std::chrono::steady_clock::now();
    fmt::print("duquant import: {} (with {}) -> {} ({} threads)\n", source, checkpoint, output, omp_get_max_threads());
    std::fflush(stdout);
    const ImportSummary s = run_import(o, [](const PackProgress& p) {
      note_pack_progress(p.index, p.total);
      fmt::print("[{}/{}] {} [{}x{}] -> W{}  SQNR {:.2f} dB\n", p.index, p.total, p.name, p.out_features, p.in_features,
                 p.wbits, p.sqnr_db);
      std::fflush(stdout);
    });
    const double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fmt::print("imported {} of the {} npz files of {} into {}\n", s.pack.layers, s.source_npz, source, output);
    fmt::print("  npz files copied as they are; codes and scales recomputed from the runtime's perm and rotations\n");
    fmt::print(
        "  quantized.safetensors: {:.1f} MB in {} file{}   SQNR: mean {:.2f} dB (round-to-nearest {:.2f} dB), "
        "worst {:.2f} dB ({})\n",
        s.pack.quantized_bytes / 1e6, s.pack.shards, s.pack.shards == 1 ? "" : "s", s.pack.mean_sqnr_db,
        s.pack.mean_rtn_sqnr_db, s.pack.worst_sqnr_db, s.pack.worst_layer);
    if (!s.skipped.empty()) {
      fmt::print("  skipped {} stale or missing layer{} (--skip-stale; the runtime packs them again when it starts):\n",
                 s.skipped.size(), s.skipped.size() == 1 ? "" : "s");
      for (const auto& [name, why] : s.skipped) fmt::print("    {}: {}\n", name, why);
    }
    if (!s.ignored.empty())
      fmt::print("  not selected, not imported: {} npz file{}\n", s.ignored.size(), s.ignored.size() == 1 ? "" : "s");
    fmt::print("  wall time {:.2f} s\n", t);
    return 0;
  }
};

}  // namespace

Action register_import(CLI::App& app) {
  auto cmd = std::make_shared<Import>();
  CLI::App* c = app.add_subcommand(
      "import", "Check a pack folder the Python runtime wrote against its checkpoint and make it a complete pack");
  c->add_option("source", cmd->source, "The runtime's pack folder (one .npz per layer, no manifest)")->required();
  c->add_option("--checkpoint", cmd->checkpoint, "The checkpoint the runtime packed: safetensors file, index or folder")
      ->required();
  c->add_option("-o,--output", cmd->output, "Pack directory to write (new, or an empty folder)")->required();
  c->add_flag("--skip-stale", cmd->skip_stale,
              "Leave out (and list) layers whose npz does not fit the checkpoint or is missing, instead of refusing");
  c->add_flag("--no-lock", cmd->no_lock, "Write even where the file system cannot lock the output folder");
  c->add_option("--threads", cmd->threads, "Threads (default: all cores); the output does not depend on it");
  add_config_flags(*c, cmd->flags);
  return [cmd, c]() { return c->parsed() ? cmd->run() : -1; };
}

}  // namespace duquant::cli

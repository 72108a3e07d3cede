// duquant bake PACK --checkpoint CKPT -o OUT [--dtype same|f32|bf16|f16] [--force]
#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <map>
#include <memory>
#include <system_error>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "duquant/convert.hpp"
#include "duquant/error.hpp"

namespace duquant::cli {
namespace {

struct Bake {
  std::string pack, checkpoint, output;
  std::string dtype = "same";
  bool force = false;
  int threads = 0;

  static BakeDType parse_dtype(const std::string& text) {
    static const std::map<std::string, BakeDType> names = {
        {"same", BakeDType::same}, {"f32", BakeDType::f32}, {"bf16", BakeDType::bf16}, {"f16", BakeDType::f16}};
    const auto it = names.find(text);
    DQ_CHECK(it != names.end(), usage, "--dtype: '{}' is not one of same, f32, bf16, f16", text);
    return it->second;
  }

  int run() {
    apply_threads(threads, "--threads");
    BakeOptions o;
    o.pack = pack;
    o.checkpoint = checkpoint;
    o.output = output;
    o.dtype = parse_dtype(dtype);
    o.force = force;
    o.warn = [](const std::string& text) { warn(text); };
    fmt::print("duquant bake: {} + {} -> {} (--dtype {})\n", pack, checkpoint, output, dtype);
    // A standard output that cannot be written stops here, before any work (exit 4).
    if (std::fflush(stdout) != 0) throw std::system_error(errno, std::generic_category(), "standard output");
    const BakeSummary s = run_bake(o);
    double worst = 0;
    std::string worst_layer;
    for (const BakedLayer& l : s.layers) {
      fmt::print("{}  {}  rounding {:.3e}  quant.err {:.4f}\n", l.name, l.dtype, l.rounding_rel, l.quantization_rel);
      if (l.rounding_rel >= worst) {
        worst = l.rounding_rel;
        worst_layer = l.name;
      }
    }
    fmt::print("baked {} layers into {}: {} safetensors file{}, {} tensors copied byte for byte, {:.1f} MB{}\n",
               s.layers.size(), output, s.files, s.files == 1 ? "" : "s", s.copied_tensors,
               static_cast<double>(s.bytes) / 1e6,
               s.other_files ? fmt::format(", {} other files copied", s.other_files) : std::string());
    if (!s.layers.empty()) fmt::print("  rounding to the output dtype: max {:.3e} ({})\n", worst, worst_layer);
    fmt::print(
        "  activations: not quantized: the A8 activation contract is not represented (x @ W_baked^T + b is the "
        "pack's W4 output for unquantized inputs)\n");
    std::fflush(stdout);
    return 0;
  }
};

}  // namespace

Action register_bake(CLI::App& app) {
  auto b = std::make_shared<Bake>();
  CLI::App* c = app.add_subcommand("bake", "Write a checkpoint whose packed weights are their dequantized W4 values");
  c->add_option("pack", b->pack, "A duquant pack directory (with manifest.json)")->required();
  c->add_option("-c,--checkpoint", b->checkpoint,
                "The FP checkpoint the pack was made from (a smoothed pack: its --fold-smoothing checkpoint)")
      ->required();
  c->add_option("-o,--output", b->output,
                "A .safetensors file for a single-file checkpoint, else a folder (shards, index, config files)")
      ->required();
  c->add_option("--dtype", b->dtype, "same (default: each baked weight keeps its dtype), f32 (exact), bf16 or f16");
  c->add_flag("--force", b->force, "Replace an existing output");
  c->add_option("-j,--threads", b->threads, "Threads for the math (default: all cores)");
  c->footer(
      "Every other tensor is copied byte for byte. Activations are not quantized: the A8 contract is not\n"
      "represented. Exit: 0 done, 2 usage (existing output without --force, a pack without manifest),\n"
      "3 a checkpoint that is not the one the pack was made from, 4 io (docs/cli.md).");
  return [c, b]() { return c->parsed() ? b->run() : -1; };
}

}  // namespace duquant::cli

// duquant verify PACKDIR [--checkpoint CKPT] [--reference REFDIR] [--json] [--strict]
#include <fmt/format.h>
#include <omp.h>

#include <cstdio>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "duquant/error.hpp"
#include "duquant/verify.hpp"
#include "formats/strict_json.hpp"

namespace duquant::cli {
namespace {

struct Verify {
  std::string pack;
  std::optional<std::string> checkpoint, reference;
  bool json = false, strict = false, quiet = false;
  int threads = 0;
  ConfigFlags flags;

  bool selection_given() const {
    return flags.preset || flags.config_file || flags.scope || flags.include || flags.exclude || flags.layers ||
           flags.env_prefix || flags.runtime;
  }

  static std::string first_problem(const LayerVerdict& l) {
    for (const Level want : {Level::fail, Level::warn})
      for (const Finding& f : l.findings)
        if (f.level == want) return fmt::format("{}: {}", f.reason, f.message);
    return {};
  }

  void print_text(const VerifyReport& r) const {
    for (const Finding& f : r.pack_findings) fmt::print("{:<4}  {}: {}\n", level_name(f.level), f.reason, f.message);
    for (const LayerVerdict& l : r.layers) {
      const Level level = l.level();
      if (quiet && level == Level::ok) continue;
      if (level == Level::ok) {
        std::string numbers;
        if (l.numbers.contains("rel_fro_error"))
          numbers = fmt::format("  rel.err {:.4f}", l.numbers["rel_fro_error"].get<double>());
        if (l.numbers.contains("reference_rel_fro_error"))
          numbers.append(fmt::format(" (reference {:.4f})", l.numbers["reference_rel_fro_error"].get<double>()));
        fmt::print("OK    {}{}\n", l.name, numbers);
        continue;
      }
      fmt::print("{:<4}  {}\n", level_name(level), l.name);
      for (const Finding& f : l.findings)
        if (f.level == Level::fail || f.level == Level::warn)
          fmt::print("        {} {}: {}\n", level_name(f.level), f.reason, f.message);
    }
    fmt::print("verify: {} layers: {} OK, {} WARN, {} FAIL{} -> {}\n", r.layers.size(), r.count(Level::ok),
               r.count(Level::warn), r.count(Level::fail),
               r.pack_findings.empty() ? "" : fmt::format(" ({} pack-level findings)", r.pack_findings.size()),
               level_name(r.worst() == Level::info ? Level::ok : r.worst()));
  }

  int run() {
    apply_threads(threads, "--threads");
    VerifyOptions o;
    o.pack = pack;
    if (checkpoint) o.checkpoint = *checkpoint;
    if (reference) o.reference = *reference;
    const RunConfig config = build_config(flags);
    if (selection_given()) o.selection = config;
    o.naming = config.naming;
    o.wbits_default = config.quant.wbits_default;
    const VerifyReport r = run_verify(o);
    if (json)
      fmt::print("{}\n", formats::dump_json(verify_report_json(r), 1));
    else
      print_text(r);
    std::fflush(stdout);
    const Level worst = r.worst();
    return worst == Level::fail || (strict && worst == Level::warn) ? 1 : 0;
  }
};

}  // namespace

Action register_verify(CLI::App& app) {
  auto v = std::make_shared<Verify>();
  CLI::App* c = app.add_subcommand(
      "verify", "Check a pack directory: structure, checksums, against its checkpoint and a reference pack");
  c->add_option("pack", v->pack, "Pack directory (ours, or one the Python runtime wrote)")->required();
  c->add_option("-c,--checkpoint", v->checkpoint,
                "The FP checkpoint the pack was made from: recompute digests, transforms, quality");
  c->add_option("-r,--reference", v->reference,
                "A reference pack directory to compare with (e.g. the runtime's cache)");
  c->add_flag("--json", v->json, "Print one JSON document instead of text");
  c->add_flag("--strict", v->strict, "Exit 1 on warnings too");
  c->add_flag("-q,--quiet", v->quiet, "Print only layers that are not OK (and the summary)");
  c->add_option("-j,--threads", v->threads, "Threads for the math (default: all cores)");
  add_config_flags(*c, v->flags);
  c->footer(
      "Packs with a manifest are checked against its configuration; for packs without one (written by the\n"
      "Python runtime), selection flags (--preset, --scope, ...) say which layers should be there.\n"
      "Exit: 0 all OK, 1 something FAILed (or WARNed, with --strict), 2-6 unusable input (docs/cli.md).");
  return [c, v]() { return c->parsed() ? v->run() : -1; };
}

}  // namespace duquant::cli

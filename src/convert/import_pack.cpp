// `duquant import` (duquant/convert.hpp): a runtime-written pack folder checked against its
// checkpoint with verify's rules, then packed by the pack pipeline with the runtime's transforms.
#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <system_error>

#include "duquant/convert.hpp"
#include "duquant/error.hpp"
#include "duquant/verify.hpp"
#include "formats/digest.hpp"
#include "import_engine.hpp"
#include "packfmt/layout.hpp"
#include "packfmt/pack_reader.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;

// A selected layer the import cannot take as it is, and why.
struct Misfit {
  std::string layer, reason;
  bool configuration = false;  // the npz's meta contradicts the configuration (the flags, not the file)
};

void check_options(const ImportOptions& o) {
  const PackOptions& p = o.pack;
  DQ_CHECK(p.calib.empty() && !p.smooth_alpha && p.fold_smoothing.empty(), usage,
           "import: --calib, --smooth-alpha and --fold-smoothing do not apply: the runtime's npz files are copied as "
           "they are (calibrate with `duquant pack`)");
  DQ_CHECK(!p.resume && !p.force, usage, "import: --resume and --force do not apply: import writes a new pack");
  std::error_code ec;
  DQ_CHECK(fs::is_directory(o.source, ec), io, "{}: not a readable folder (the runtime's pack folder)",
           o.source.string());
  DQ_CHECK(!fs::exists(o.source / kManifestName, ec), usage,
           "{}: holds {}: it is a duquant pack already (`duquant verify` checks it)", o.source.string(), kManifestName);
  if (fs::exists(p.output, ec)) {
    DQ_CHECK(fs::is_directory(p.output, ec) && fs::is_empty(p.output, ec), usage,
             "{}: exists and is not an empty folder; import writes its pack into a new or empty folder",
             p.output.string());
    DQ_CHECK(!fs::equivalent(p.output, o.source, ec), usage, "{}: the output is the source folder", p.output.string());
  }
}

// The first failed check of a verdict, as one line.
std::string first_failure(const LayerVerdict& v) {
  for (const Finding& f : v.findings)
    if (f.level == Level::fail) return fmt::format("{}: {}", f.reason, f.message);
  return "failed";
}

// Meta against the configuration: what the runtime ran with must be what the flags say.
std::optional<std::string> meta_misfit(const fs::path& npz_path, const QuantConfig& q) {
  const NpzLayer npz = read_npz_layer(npz_path);
  const PackMeta& m = npz.meta;
  std::vector<std::string> differ;
  if (m.block_size != q.block)
    differ.push_back(fmt::format("block {} (the configuration says {}: --block, BLOCK)", m.block_size, q.block));
  if (m.block_out_size != q.block_out)
    differ.push_back(
        fmt::format("block_out {} (the configuration says {}: --block-out, BLOCK_OUT)", m.block_out_size, q.block_out));
  if (m.enable_permute != q.permute)
    differ.push_back(
        fmt::format("permute {} (the configuration says {}: --permute, PERMUTE)", m.enable_permute, q.permute));
  if (m.lambda_smooth != q.lambda_smooth)
    differ.push_back(fmt::format("lambda_smooth {} (the configuration says {}: --lambda-smooth, LS)", m.lambda_smooth,
                                 q.lambda_smooth));
  if (q.row_rot != RowRot::off && npz.r_out.empty())
    differ.push_back(
        fmt::format("no Rout blocks (the configuration says row_rot {}: --row-rot, ROW_ROT)", row_rot_name(q.row_rot)));
  if (differ.empty()) return std::nullopt;
  return fmt::format("meta says {}", fmt::join(differ, ", "));
}

[[noreturn]] void refuse(const ImportOptions& o, const std::vector<Misfit>& misfits) {
  std::size_t by_flags = 0, missing = 0;
  for (const Misfit& m : misfits) {
    by_flags += m.configuration ? 1 : 0;
    missing += m.reason.rfind("missing-layer", 0) == 0 ? 1 : 0;
  }
  std::string list;
  const bool same_reason =
      std::all_of(misfits.begin(), misfits.end(), [&](const Misfit& m) { return m.reason == misfits.front().reason; });
  if (same_reason && misfits.size() > 1) {
    list = fmt::format("\n  all {} (first '{}'): {}", misfits.size(), misfits.front().layer, misfits.front().reason);
  } else {
    const std::size_t shown = std::min<std::size_t>(misfits.size(), 8);
    for (std::size_t k = 0; k < shown; ++k) list += fmt::format("\n  '{}': {}", misfits[k].layer, misfits[k].reason);
    if (shown < misfits.size()) list += fmt::format("\n  ... and {} more", misfits.size() - shown);
  }
  std::vector<std::string> hints;
  if (by_flags > 0) hints.push_back("pass the configuration the runtime ran with (flags, --config or --env-prefix)");
  if (missing > 0)
    hints.push_back(
        fmt::format("{} selected layer(s) have no npz: is the selection the runtime's (--preset, --scope, "
                    "--include, --exclude, --layers)?",
                    missing));
  if (by_flags < misfits.size())
    hints.push_back("the runtime would recompute stale and missing layers; --skip-stale imports the others");
  fail(by_flags == misfits.size() ? ErrorKind::usage : ErrorKind::format,
       "import {}: {} of the selected layers cannot be imported as they are (nothing was written):{}\n{}",
       o.source.string(), misfits.size(), list, fmt::join(hints, "\n"));
}

}  // namespace

ImportSummary run_import(const ImportOptions& o, const std::function<void(const PackProgress&)>& progress) {
  check_options(o);
  const PackOptions& p = o.pack;
  const QuantConfig& q = p.config.quant;

  // 1. Every npz against the checkpoint, by verify's rules (structure, staleness, exactness), and
  //    the selection's layers that have none.
  VerifyOptions vo;
  vo.pack = o.source;
  vo.checkpoint = p.checkpoint;
  vo.selection = p.config;
  vo.wbits_default = q.wbits_default;
  vo.naming = p.config.naming;
  const VerifyReport report = run_verify(vo);
  for (const Finding& f : report.pack_findings)
    DQ_CHECK(f.level != Level::fail, format, "import {}: {}: {}", o.source.string(), f.reason, f.message);

  ImportedTransforms imported;
  imported.source = o.source;
  std::vector<Misfit> misfits;
  std::map<std::string, std::string> digests;
  for (const LayerVerdict& v : report.layers) {
    const bool picked = std::none_of(v.findings.begin(), v.findings.end(),
                                     [](const Finding& f) { return f.reason == "selection" || f.reason == "orphan"; });
    if (!v.file.empty()) ++imported.source_npz;
    if (!picked) {  // a layer of the folder the selection does not pick (or the checkpoint lacks)
      imported.ignored.push_back(v.name);
      continue;
    }
    if (v.level() == Level::fail) {
      misfits.push_back({v.name, first_failure(v), false});
      continue;
    }
    const fs::path path = o.source / v.file;
    if (const auto why = meta_misfit(path, q)) {
      misfits.push_back({v.name, *why, true});
      continue;
    }
    digests[v.name] = xxh128_file(path);  // what the engine must find when it reads the file again
  }
  if (!misfits.empty() && !o.skip_stale) refuse(o, misfits);
  for (const Misfit& m : misfits) imported.skipped.emplace_back(m.layer, m.reason);
  DQ_CHECK(!digests.empty(), no_match, "import {}: no selected layer is left to import ({} skipped, {} not selected)",
           o.source.string(), imported.skipped.size(), imported.ignored.size());
  if (p.warn && !imported.ignored.empty())
    p.warn(fmt::format("{} npz file(s) of {} are of layers the selection does not pick; not imported (first: {})",
                       imported.ignored.size(), o.source.string(), imported.ignored.front()));

  // 2. The pack pipeline with the runtime's transforms. On any failure the output goes: an import
  //    leaves a complete pack or nothing (the folder was absent or empty).
  std::error_code ec;
  const bool existed = fs::exists(p.output, ec);
  PackOptions po = p;
  imported.make_engine = [source = o.source, digests] { return make_import_engine(source, digests); };
  ImportSummary summary;
  summary.source_npz = imported.source_npz;
  summary.skipped = imported.skipped;
  summary.ignored = imported.ignored;
  po.imported = std::move(imported);
  try {
    summary.pack = run_pack(po, progress);
  } catch (...) {
    if (!existed) {
      fs::remove_all(p.output, ec);
    } else {
      for (const auto& entry : fs::directory_iterator(p.output, ec)) fs::remove_all(entry.path(), ec);
    }
    throw;
  }
  return summary;
}

}  // namespace duquant

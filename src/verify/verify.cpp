#include "duquant/verify.hpp"

#include "select/checkpoint_names.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "duquant/error.hpp"
#include "formats/digest.hpp"
#include "formats/folder_lock.hpp"
#include "formats/regular_file.hpp"
#include "formats/strict_json.hpp"
#include "math/calibration.hpp"
#include "math/smoothing.hpp"
#include "packfmt/layout.hpp"
#include "select/layer_weights.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"
#include "verify_checks.hpp"

namespace duquant {
namespace fs = std::filesystem;
using namespace verify_detail;

const char* level_name(Level level) noexcept {
  switch (level) {
    case Level::ok: return "OK";
    case Level::info: return "INFO";
    case Level::warn: return "WARN";
    case Level::fail: return "FAIL";
  }
  return "?";
}

Level LayerVerdict::level() const {
  Level worst = Level::ok;
  for (const Finding& f : findings)
    if (f.level != Level::info) worst = std::max(worst, f.level);
  return worst;
}

std::size_t VerifyReport::count(Level level) const {
  return static_cast<std::size_t>(
      std::count_if(layers.begin(), layers.end(), [&](const LayerVerdict& l) { return l.level() == level; }));
}

Level VerifyReport::worst() const {
  Level worst = Level::ok;
  for (const Finding& f : pack_findings)
    if (f.level != Level::info) worst = std::max(worst, f.level);
  for (const LayerVerdict& l : layers) worst = std::max(worst, l.level());
  return worst;
}

namespace {

struct PackFindings {
  std::vector<Finding>& out;
  template <typename... Args>
  void add(Level level, const char* reason, fmt::format_string<Args...> f, Args&&... args) {
    out.push_back({level, reason, fmt::format(f, std::forward<Args>(args)...)});
  }
};

// Manifest files list: sizes and digests.
void check_files(const PackDirectory& pack, const Manifest& m, PackFindings& pf) {
  for (const ManifestFile& f : m.files) {
    const fs::path p = pack.path() / f.name;
    std::error_code ec;
    if (f.name.find('/') != std::string::npos || f.name.find('\\') != std::string::npos || f.name == ".." ||
        f.name == ".") {
      pf.add(Level::fail, "manifest", "files: '{}' is not a plain file name", f.name);
      continue;
    }
    const auto size = fs::file_size(p, ec);
    if (ec) {
      pf.add(Level::fail, "missing-file", "{}: listed in the manifest but cannot be read: {}", f.name, ec.message());
      continue;
    }
    if (size != f.size) {
      pf.add(Level::fail, "checksum", "{}: {} bytes, the manifest says {}", f.name, size, f.size);
      continue;
    }
    const std::string d = xxh128_file(p);
    if (d != f.xxh128) pf.add(Level::fail, "checksum", "{}: xxh128 {}, the manifest says {}", f.name, d, f.xxh128);
  }
}

// The files in `dir` that only `duquant pack` writes (quantized.safetensors, its shards and index, a
// manifest's temporary file, manifest.json itself when it cannot be read, e.g. a dangling link);
// .duquant-work is judged on its own ("unfinished").
std::vector<std::string> duquant_files_without_manifest(const fs::path& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    auto ends = [&](std::string_view x) {
      return name.size() >= x.size() && name.compare(name.size() - x.size(), x.size(), x) == 0;
    };
    const bool ours = name == kManifestName || name == kQuantizedName || name == kQuantizedIndexName ||
                      (name.rfind("quantized-", 0) == 0 && ends(".safetensors")) ||
                      name.rfind(fmt::format(".{}.tmp-", kManifestName), 0) == 0 ||
                      name.rfind(fmt::format(".{}.tmp-", kQuantizedName), 0) == 0;
    if (ours) out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

struct CheckpointContext {
  formats::Checkpoint ckpt;
  std::vector<LinearLayer> linears;
  std::map<std::string, const LinearLayer*> by_name;
};

// The manifest's figures about a layer's tensors: where they are, their digest, bias, conformance.
void check_manifest_entry(const PackDirectory& pack, const ManifestLayer& e, const QuantizedLayerTensors& q,
                          Sink& sink) {
  if (const auto b = pack.quantized_layer_bytes(e.name)) {
    if (b->file != e.quantized_shard)
      sink.add(Level::fail, "manifest", "the layer's tensors are in {}, the manifest says {}", b->file,
               e.quantized_shard);
    if (!b->contiguous) sink.add(Level::fail, "quantized", "the layer's tensors are not back to back in {}", b->file);
    if (b->bytes != e.quantized_bytes)
      sink.add(Level::fail, "checksum", "the layer's tensors hold {} bytes, the manifest says {}", b->bytes,
               e.quantized_bytes);
    else if (b->xxh128 != e.quantized_xxh128)
      sink.add(Level::fail, "checksum", "the layer's tensors have xxh128 {}, the manifest says {}", b->xxh128,
               e.quantized_xxh128);
  }
  if (e.bias != !q.bias.empty())
    sink.add(Level::fail, "manifest", "the manifest says bias {}, quantized.safetensors has {}", e.bias,
             q.bias.empty() ? "none" : "one");
  if (q.test_x.empty()) return;
  if (e.conformance_rows != q.test_rows)
    sink.add(Level::fail, "conformance", "the manifest says {} conformance rows, the vectors have {}",
             e.conformance_rows, q.test_rows);
  double err2 = 0, fp2 = 0;
  for (std::size_t k = 0; k < q.test_y_fp.size() && k < q.test_y_q.size(); ++k) {
    const double d = static_cast<double>(q.test_y_q[k]) - q.test_y_fp[k];
    err2 += d * d;
    fp2 += static_cast<double>(q.test_y_fp[k]) * q.test_y_fp[k];
  }
  const double rel = fp2 > 0 ? std::sqrt(err2 / fp2) : 0.0;
  sink.v.numbers["conformance_rel_error"] = rel;
  if (!e.conformance_rel_error || !(std::abs(*e.conformance_rel_error - rel) <= kQualityTolerance * rel + 1e-12))
    sink.add(Level::fail, "conformance", "the manifest says ‖y_q − y_fp‖/‖y_fp‖ = {}, the vectors give {:.6g}",
             e.conformance_rel_error ? fmt::format("{:.6g}", *e.conformance_rel_error) : std::string("null"), rel);
}

void verify_layer(const PackDirectory& pack, const std::string& name, const std::string& file, const Manifest* manifest,
                  const ManifestLayer* entry, CheckpointContext* ck, const PackDirectory* reference,
                  const VerifyOptions& o, LayerVerdict& v) {
  Sink sink{v};
  v.name = name;
  v.file = file;
  // The npz name comes from the manifest: confined to the pack folder (no absolute path, no '..',
  // no link out of it) and opened only when it is a regular file, so that a hostile manifest can
  // make verify read nothing else (/dev/zero, a FIFO, a file elsewhere).
  fs::path npz_path;
  try {
    npz_path =
        formats::confined_path(pack.path(), file, fmt::format("{}: layer '{}': npz", pack.path().string(), name));
  } catch (const Error& e) {
    sink.add(Level::fail, "manifest", "{}", e.what());
    return;
  }
  std::error_code ec;
  const fs::file_status npz_status = fs::status(npz_path, ec);
  if (ec && ec != std::errc::no_such_file_or_directory) {
    sink.add(Level::fail, "npz", "{}: cannot access: {}", file, ec.message());
    return;
  }
  if (!fs::exists(npz_status)) {
    sink.add(Level::fail, "missing-file", "{}: the manifest lists this layer but its npz is missing", file);
    return;
  }
  if (!fs::is_regular_file(npz_status)) {
    sink.add(Level::fail, "npz", "{}: not a regular file ({}); an npz is a file", file,
             npz_status.type() == fs::file_type::directory                                                ? "a folder"
             : npz_status.type() == fs::file_type::fifo                                                   ? "a FIFO"
             : npz_status.type() == fs::file_type::character || npz_status.type() == fs::file_type::block ? "a device"
             : npz_status.type() == fs::file_type::socket                                                 ? "a socket"
                                                          : "not a file");
    return;
  }
  if (entry != nullptr) {
    const auto size = fs::file_size(npz_path, ec);
    if (!ec && size != entry->npz.size)
      sink.add(Level::fail, "checksum", "{}: {} bytes, the manifest says {}", file, size, entry->npz.size);
    try {  // the file can still be swapped (for a FIFO, say) since the check: refused without blocking
      const std::string d = xxh128_file(npz_path);
      if (d != entry->npz.xxh128)
        sink.add(Level::fail, "checksum", "{}: xxh128 {}, the manifest says {}", file, d, entry->npz.xxh128);
    } catch (const Error& e) {
      sink.add(Level::fail, "npz", "{}", e.what());
      return;
    }
  }
  std::optional<NpzLayer> npz;
  try {
    npz.emplace(read_npz_layer(npz_path));
  } catch (const Error& e) {
    sink.add(Level::fail, "npz", "{}", e.what());
    return;
  }
  const int wbits = entry != nullptr ? entry->wbits : o.wbits_default;
  Expectation expect{entry, manifest, std::nullopt, std::nullopt};
  const LinearLayer* linear = nullptr;
  if (ck != nullptr) {
    const auto it = ck->by_name.find(name);
    if (it == ck->by_name.end()) {
      sink.add(Level::fail, "orphan", "the checkpoint has no linear layer '{}'", name);
    } else {
      linear = it->second;
      expect.out_features = linear->out_features;
      expect.in_features = linear->in_features;
      if (entry != nullptr) {
        const std::string_view dtype = formats::dtype_name(linear->weight->dtype);
        if (entry->dtype != dtype)
          sink.add(Level::fail, "manifest", "the manifest says the weight is {}, the checkpoint's is {}", entry->dtype,
                   dtype);
        if (entry->bias != (linear->bias != nullptr))
          sink.add(Level::fail, "manifest", "the manifest says bias {}, the checkpoint's layer has {}", entry->bias,
                   linear->bias != nullptr ? "one" : "none");
      }
    }
  }
  const bool usable = check_npz_structure(*npz, expect, sink);
  v.numbers["wbits"] = wbits;

  std::optional<QuantizedLayerTensors> q;
  if (manifest != nullptr) {
    try {
      q = pack.quantized_layer(name, wbits);
      if (!q) sink.add(Level::fail, "quantized", "quantized.safetensors holds no tensors for this layer");
    } catch (const Error& e) {
      sink.add(Level::fail, "quantized", "{}", e.what());
    }
    if (q && usable) check_quantized(*q, *npz, manifest->config.quant.row_rot, manifest->config.quant.abits, sink);
    if (q && entry != nullptr) check_manifest_entry(pack, *entry, *q, sink);
  }
  const bool quantized_sound = q && !sink.failed("quantized") && !sink.failed("codes") && !sink.failed("scales") &&
                               !sink.failed("quantized-npz");

  std::optional<CheckpointFacts> facts;
  std::vector<float> weights, smoothed;
  if (linear != nullptr && usable && !sink.failed("meta")) {
    try {
      weights = load_weight(ck->ckpt, *linear);
      facts.emplace();
      facts->w = WeightView{weights.data(), static_cast<std::int64_t>(linear->out_features),
                            static_cast<std::int64_t>(linear->in_features)};
      facts->w_fp = facts->w;
      facts->weight_digest = xxh128_hex(ck->ckpt.bytes(*linear->weight));
      // A folded checkpoint already holds W·diag(s) as the pack used it; the original needs it made.
      facts->folded = entry != nullptr && !entry->folded_weight_xxh128.empty() &&
                      facts->weight_digest == entry->folded_weight_xxh128;
      if (facts->folded) v.numbers["folded_checkpoint"] = true;
      if (!facts->folded && !npz->smooth_scale.empty() && npz->smooth_scale.size() == linear->in_features) {
        smoothed = smoothed_weight(weights, facts->w.rows, facts->w.cols, npz->smooth_scale, linear->weight->dtype);
        facts->w.data = smoothed.data();
      }
      if (linear->bias) {
        facts->bias.resize(linear->bias->numel);
        ck->ckpt.read_f32(*linear->bias, facts->bias);
      }
    } catch (const Error& e) {
      sink.add(Level::fail, "checkpoint", "{}", e.what());
      facts.reset();
    }
    if (facts) check_against_checkpoint(*npz, quantized_sound ? &*q : nullptr, expect, *facts, wbits, sink);
    ck->ckpt.release(*linear->weight);
  }

  if (q) pack.release_quantized_layer(name);  // keep resident memory to one layer

  if (reference != nullptr) {
    const fs::path ref_path = reference->path() / fs::path(file).filename();  // `file` is confined above
    if (!fs::exists(ref_path, ec)) {
      sink.add(Level::fail, "reference-missing", "the reference pack has no {}", file);
    } else {
      try {
        const NpzLayer ref = read_npz_layer(ref_path);
        LayerVerdict ref_verdict;
        Sink ref_sink{ref_verdict};
        Expectation ref_expect{nullptr, nullptr, expect.out_features, expect.in_features};
        const bool ref_usable = check_npz_structure(ref, ref_expect, ref_sink);
        for (const Finding& f : ref_verdict.findings)
          if (f.level == Level::fail)
            sink.add(Level::fail, "reference", "the reference's npz: {}: {}", f.reason, f.message);
        if (usable && ref_usable && !sink.failed("stale"))
          check_against_reference(*npz, quantized_sound ? &*q : nullptr, ref, facts ? &*facts : nullptr, wbits, sink);
      } catch (const Error& e) {
        sink.add(Level::fail, "reference", "{}", e.what());
      }
    }
  }
}

// Step 1: the manifest and the folder's state. Reads and parses manifest.json (a runtime pack has
// none), notes an unfinished pack's work folder and a writer holding the lock, refuses a folder that
// is no pack at all, and checks the listed files' sizes and digests.
std::optional<Manifest> read_pack_manifest(const VerifyOptions& o, const PackDirectory& pack, VerifyReport& report,
                                           PackFindings& pf) {
  std::optional<Manifest> manifest;
  if (!pack.manifest_error().empty()) {
    report.has_manifest = true;
    pf.add(Level::fail, "manifest", "{}", pack.manifest_error());
  } else if (pack.manifest() != nullptr) {
    report.has_manifest = true;
    try {
      manifest = parse_manifest(*pack.manifest(), (o.pack / std::string(kManifestName)).string());
    } catch (const Error& e) {
      pf.add(Level::fail, "manifest", "{}", e.what());
    }
  } else if (const std::vector<std::string> ours = duquant_files_without_manifest(o.pack); !ours.empty()) {
    // Not a runtime pack: duquant's own files without the manifest that makes them checkable (lost,
    // unreadable, or never written). Verifying the npz files alone would pass corrupt codes beside them.
    report.has_manifest = true;
    pf.add(
        Level::fail, "missing-manifest",
        "{}: no readable manifest.json, but duquant's own files are here ({}): a duquant pack whose manifest is lost "
        "or was never written, whose checksums cannot be checked; pack it again (or remove duquant's files to verify "
        "the npz files as a runtime pack)",
        o.pack.string(), fmt::join(ours, ", "));
  } else {
    pf.add(Level::info, "no-manifest",
           "no manifest.json: a pack written by the Python runtime (no checksums, no weight "
           "digests; staleness is judged from perm and rotations against --checkpoint)");
  }
  // The work folder of `duquant pack` exists while a pack is unfinished: without the manifest the
  // folder is a pack in progress, not a runtime pack (its npz files are complete but not all there).
  std::error_code work_ec;
  if (fs::is_directory(o.pack / kWorkDirName, work_ec)) {
    if (pack.manifest() == nullptr && pack.manifest_error().empty())
      pf.add(Level::fail, "unfinished",
             "{} exists and manifest.json does not: an interrupted `duquant pack`; "
             "finish it with `duquant pack ... --resume`",
             kWorkDirName);
    else
      pf.add(Level::warn, "work-folder",
             "{} is left over from a pack that ended after its manifest was written; "
             "`duquant pack ... --resume` removes it",
             kWorkDirName);
  }
  // A writer holds the folder's lock (formats/folder_lock.hpp): the files may change while read.
  if (const auto holder = formats::folder_lock_holder(o.pack))
    pf.add(Level::warn, "being-written",
           "a `duquant pack` is writing this folder now ({}); its files may change while "
           "they are read: verify it again when that pack has ended",
           *holder);
  DQ_CHECK(report.has_manifest || !pack.npz_files().empty(), format,
           "{}: not a pack directory (no manifest.json and no .npz files)", o.pack.string());
  if (manifest) check_files(pack, *manifest, pf);
  return manifest;
}

// The checkpoint files the pack was made from against --checkpoint's (the weight digests decide;
// this is a hint, a WARN, or an INFO when the checkpoint stores the same weights under other names).
void check_checkpoint_files(const Manifest& manifest, const formats::Checkpoint& ckpt, Level level, PackFindings& pf) {
  for (const Manifest::CheckpointFile& f : manifest.checkpoint_files) {
    const auto it = std::find_if(ckpt.files().begin(), ckpt.files().end(), [&](const formats::CheckpointFile& c) {
      // recorded as dump_json writes it: bytes that are not UTF-8 as U+FFFD
      return formats::json_safe_text(c.path.filename().string()) == f.name;
    });
    if (it == ckpt.files().end())
      pf.add(level, "checkpoint-files", "the pack was made from {} ({} bytes), which --checkpoint does not hold",
             f.name, f.size);
    else if (it->size != f.size || it->header_bytes != f.header_bytes)
      pf.add(level, "checkpoint-files", "{}: {} bytes with a {}-byte header; the pack was made from {} / {}", f.name,
             it->size, it->header_bytes, f.size, f.header_bytes);
  }
}

// Step 2: --checkpoint, opened into `ck` with its linear layers (names as the pack recorded them,
// unless flags say otherwise: checkpoint_names.hpp).
void open_checkpoint_context(const VerifyOptions& o, const std::optional<Manifest>& manifest,
                             std::optional<CheckpointContext>& ck, PackFindings& pf) {
  if (!o.checkpoint) {
    pf.add(Level::info, "no-checkpoint", "no --checkpoint: the weights, transforms and quality are not recomputed");
    return;
  }
  OpenedCheckpoint opened = open_checkpoint(*o.checkpoint, o.naming, manifest ? manifest->names : std::nullopt);
  // A baked checkpoint holds the pack's own dequantized weights: checking the pack against it would
  // only show that the pack reproduces itself, so it is refused rather than reported as stale.
  for (const formats::CheckpointFile& f : opened.checkpoint.files()) {
    if (!f.metadata.count("duquant.baked")) continue;
    const auto from = f.metadata.find("duquant.pack");
    fail(ErrorKind::usage,
         "verify: {} was baked by `duquant bake` from pack '{}' (its weights are a pack's dequantized W4 values): "
         "pass the FP checkpoint the pack was made from",
         f.path.string(), from == f.metadata.end() ? "?" : from->second);
  }
  if (!opened.names.identity())
    pf.add(Level::info, "names", "{}", describe_names(opened.names, o.checkpoint->string()));
  // The same weights stored under other names: its files differ by design, the digests decide.
  const bool other_layout = manifest && manifest->names &&
                            (manifest->names->checkpoint_prefix != opened.names.checkpoint_prefix ||
                             manifest->names->runtime_prefix != opened.names.runtime_prefix);
  if (other_layout)
    pf.add(Level::info, "names",
           "the pack was made from names under '{}'; {} stores them under '{}': its files differ, "
           "the weight digests decide",
           manifest->names->checkpoint_prefix, o.checkpoint->string(), opened.names.checkpoint_prefix);
  ck.emplace(CheckpointContext{std::move(opened.checkpoint), {}, {}});
  const RunConfig* run = manifest ? &manifest->config : o.selection ? &*o.selection : nullptr;
  ck->linears = find_linear_layers(ck->ckpt, run ? run->selection.not_linear : std::vector<std::string>{});
  for (const LinearLayer& l : ck->linears) ck->by_name.emplace(l.name, &l);
  if (manifest) check_checkpoint_files(*manifest, ck->ckpt, other_layout ? Level::info : Level::warn, pf);
}

// The layers to verify: the manifest's, plus every npz in the folder.
struct PackLayers {
  std::map<std::string, const ManifestLayer*> entries;  // layer -> its manifest entry
  std::map<std::string, std::string> files;             // layer -> npz file
};

// Step 3: the layers, with the manifest's own faults (a layer twice, npz names the runtime would not
// look up or would share); with a manifest, an npz it does not list is a FAIL of its own.
PackLayers list_pack_layers(const PackDirectory& pack, const std::optional<Manifest>& manifest, VerifyReport& report,
                            PackFindings& pf) {
  PackLayers out;
  if (manifest) {
    for (const ManifestLayer& l : manifest->layers) {
      if (out.entries.count(l.name)) pf.add(Level::fail, "manifest", "layer '{}' is listed twice", l.name);
      out.entries[l.name] = &l;
      out.files[l.name] = l.npz.name;
      if (l.npz.name != pack_file_name(l.name))
        pf.add(Level::fail, "manifest", "layer '{}': npz name '{}', the runtime looks for '{}'", l.name, l.npz.name,
               pack_file_name(l.name));
    }
    std::vector<std::string> names;
    for (const ManifestLayer& l : manifest->layers) names.push_back(l.name);
    for (const PackFileCollision& c : pack_file_collisions(names))
      pf.add(Level::fail, "manifest", "{}: the runtime loads that one file for both (duquant pack never writes this)",
             describe(c));
  }
  std::set<std::string> listed_files;
  for (const auto& [name, file] : out.files) listed_files.insert(file);
  for (const std::string& f : pack.npz_files()) {
    if (listed_files.count(f)) continue;
    const std::string name = PackDirectory::layer_name_of(f);
    out.files[name] = f;
    if (manifest) {
      LayerVerdict v;
      v.name = name;
      v.file = f;
      v.findings.push_back({Level::fail, "unlisted", fmt::format("{} is not listed in the manifest", f)});
      report.layers.push_back(std::move(v));
      out.files.erase(name);
    }
  }
  return out;
}

// The folded checkpoint of a smoothed pack is another file by design: its weights decided.
void relax_folded_checkpoint_findings(VerifyReport& report) {
  const bool folded_checkpoint = std::any_of(report.layers.begin(), report.layers.end(), [](const LayerVerdict& v) {
    return v.numbers.contains("folded_checkpoint");
  });
  if (!folded_checkpoint) return;
  for (Finding& f : report.pack_findings)
    if (f.reason == "checkpoint-files" && f.level == Level::warn) {
      f.level = Level::info;
      f.message += " (it is the pack's folded checkpoint: its smoothed weights have the folded digests)";
    }
}

// Step 5: the selection (the manifest's, else the flags') against the pack: layers it does not
// pick, bits it gives otherwise, layers it picks that the pack lacks.
void check_selection(const VerifyOptions& o, const std::optional<Manifest>& manifest, const CheckpointContext& ck,
                     const PackLayers& layers, VerifyReport& report, PackFindings& pf) {
  const RunConfig* config = manifest ? &manifest->config : o.selection ? &*o.selection : nullptr;
  if (config == nullptr) {
    pf.add(Level::info, "selection-unknown",
           "no manifest and no selection flags: layers missing from the pack are not "
           "looked for (give --preset or --scope)");
    return;
  }
  const Selection s = select_layers(ck.linears, *config);
  std::set<std::string> picked;
  for (const SelectedLayer& l : s.layers) picked.insert(l.layer->name);
  for (LayerVerdict& v : report.layers)
    if (!picked.count(v.name) && ck.by_name.count(v.name))
      v.findings.push_back(
          {Level::fail, manifest ? "manifest" : "selection",
           fmt::format("the {} selection does not pick this layer", manifest ? "manifest's" : "given")});
  for (const SelectedLayer& l : s.layers) {
    if (const auto e = layers.entries.find(l.layer->name); e != layers.entries.end() && e->second->wbits != l.wbits) {
      for (LayerVerdict& v : report.layers)
        if (v.name == l.layer->name)
          v.findings.push_back({Level::fail, "manifest",
                                fmt::format("the manifest says W{}, its configuration gives this layer W{}",
                                            e->second->wbits, l.wbits)});
    }
    if (layers.files.count(l.layer->name) ||
        std::any_of(report.layers.begin(), report.layers.end(),
                    [&](const LayerVerdict& v) { return v.name == l.layer->name; }))
      continue;
    LayerVerdict v;
    v.name = l.layer->name;
    const auto skipped = manifest && manifest->imported
                             ? std::find_if(manifest->imported->skipped.begin(), manifest->imported->skipped.end(),
                                            [&](const auto& s) { return s.first == l.layer->name; })
                             : std::vector<std::pair<std::string, std::string>>::const_iterator{};
    if (manifest && manifest->imported && skipped != manifest->imported->skipped.end()) {
      v.findings.push_back({Level::warn, "skipped-at-import",
                            fmt::format("`duquant import --skip-stale` left this layer out ({}): the runtime packs it "
                                        "again when it starts",
                                        skipped->second)});
      report.layers.push_back(std::move(v));
      continue;
    }
    v.findings.push_back({Level::fail, "missing-layer",
                          fmt::format("the {} selection picks this layer of the checkpoint, but the pack has no {}",
                                      manifest ? "manifest's" : "given", pack_file_name(l.layer->name))});
    report.layers.push_back(std::move(v));
  }
}

// Layers the reference has and the pack lacks.
void check_reference_extras(const PackDirectory& reference, const PackLayers& layers, VerifyReport& report) {
  for (const std::string& f : reference.npz_files()) {
    const std::string name = PackDirectory::layer_name_of(f);
    if (layers.files.count(name)) continue;
    LayerVerdict v;
    v.name = name;
    v.findings.push_back(
        {Level::fail, "reference-extra", fmt::format("the reference pack has {}, this pack does not", f)});
    report.layers.push_back(std::move(v));
  }
}

}  // namespace

VerifyReport run_verify(const VerifyOptions& o) {
  VerifyReport report;
  report.pack = o.pack;
  const PackDirectory pack = PackDirectory::open(o.pack, /*tolerate_bad_manifest=*/true);
  PackFindings pf{report.pack_findings};
  const std::optional<Manifest> manifest = read_pack_manifest(o, pack, report, pf);
  std::optional<CheckpointContext> ck;
  open_checkpoint_context(o, manifest, ck, pf);
  std::optional<PackDirectory> reference;
  if (o.reference) {
    reference.emplace(PackDirectory::open(*o.reference));
    DQ_CHECK(!reference->npz_files().empty(), format, "--reference {}: holds no .npz files", o.reference->string());
  }
  const PackLayers layers = list_pack_layers(pack, manifest, report, pf);
  // Step 4: each layer.
  for (const auto& [name, file] : layers.files) {
    LayerVerdict v;
    const auto it = layers.entries.find(name);
    verify_layer(pack, name, file, manifest ? &*manifest : nullptr, it == layers.entries.end() ? nullptr : it->second,
                 ck ? &*ck : nullptr, reference ? &*reference : nullptr, o, v);
    report.layers.push_back(std::move(v));
  }
  relax_folded_checkpoint_findings(report);
  if (ck) check_selection(o, manifest, *ck, layers, report, pf);
  if (reference) check_reference_extras(*reference, layers, report);
  std::sort(report.layers.begin(), report.layers.end(),
            [](const LayerVerdict& a, const LayerVerdict& b) { return a.name < b.name; });
  return report;
}

nlohmann::ordered_json verify_report_json(const VerifyReport& r) {
  using json = nlohmann::ordered_json;
  auto findings = [](const std::vector<Finding>& fs) {
    json a = json::array();
    for (const Finding& f : fs)
      a.push_back({{"level", level_name(f.level)}, {"reason", f.reason}, {"message", f.message}});
    return a;
  };
  json j;
  j["pack"] = r.pack.string();
  j["result"] = level_name(r.worst());
  j["summary"] = {{"layers", r.layers.size()},
                  {"ok", r.count(Level::ok)},
                  {"warn", r.count(Level::warn)},
                  {"fail", r.count(Level::fail)}};
  j["pack_findings"] = findings(r.pack_findings);
  j["layers"] = json::array();
  for (const LayerVerdict& l : r.layers) {
    json e;
    e["name"] = l.name;
    e["file"] = l.file;
    e["result"] = level_name(l.level());
    e["findings"] = findings(l.findings);
    e["numbers"] = l.numbers.is_null() ? json::object() : l.numbers;
    j["layers"].push_back(std::move(e));
  }
  j["tolerances"] = {{"orthogonality", kOrthogonalityTolerance},
                     {"transform", kTransformTolerance},
                     {"conformance", kConformanceTolerance},
                     {"quality", kQualityTolerance},
                     {"eigenbasis", kEigenbasisTolerance},
                     {"energy_tie", kEnergyTieTolerance},
                     {"eigen_gap", kEigenGapTolerance},
                     {"subspace", kSubspaceTolerance},
                     {"rotation_noise", kRotationNoise},
                     {"subspace_floor", kSubspaceFloor},
                     {"reference_quality_factor", kReferenceQualityFactor}};
  return j;
}

}  // namespace duquant

// The pack pipeline's stages run alone (pack/pack_stages.hpp), each against what a whole
// run_pack of the fixture checkpoint writes: the compute stage's records carry the manifest's
// digests, the resume stage reuses exactly the layers whose files are intact, the assemble and
// manifest stages write the same bytes, and finish_layer's steps give the manifest's figures.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "common/test_paths.hpp"
#include "config/settings.hpp"
#include "duquant/pack.hpp"
#include "engine/layer_engine.hpp"
#include "formats/digest.hpp"
#include "math/conformance.hpp"
#include "math/duquant_math.hpp"
#include "pack/pack_stages.hpp"

namespace duquant {
namespace {
namespace fs = std::filesystem;
using json = nlohmann::json;

std::string read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

// The fixture's action expert, sharded small enough that quantized.safetensors has several shards
// (and an index).
PackOptions options_for(const fs::path& out) {
  PackOptions o;
  o.checkpoint = test::tiny_checkpoint();
  o.output = out;
  o.config = resolve(Settings{});
  o.config.selection.scope = "paligemma_with_expert.gemma_expert.model.";
  o.max_shard_bytes = 64 * 1024;
  return o;
}

// A whole pack in `dir`, the ground truth the stages are compared with; its manifest parsed.
struct FullPack {
  fs::path dir;
  PackSummary summary;
  json manifest;
};
FullPack full_pack(const fs::path& dir) {
  FullPack p;
  p.dir = dir;
  p.summary = run_pack(options_for(dir), {});
  p.manifest = json::parse(read_bytes(dir / "manifest.json"));
  EXPECT_FALSE(fs::exists(dir / ".duquant-work"));
  return p;
}

// The stages of one run in `out`, up to where a test stops them; the folders are made as
// prepare_output makes them.
struct StagedRun {
  explicit StagedRun(const fs::path& out, bool resume = false)
      : options([&] {
          PackOptions o = options_for(out);
          o.resume = resume;
          return o;
        }()),
        source(options),
        plan(plan_calibration(options, source.checkpoint(), source.linears, source.selection)),
        run(options, source, plan) {
    fs::create_directories(run.work);
  }
  PackOptions options;
  PackSource source;
  CalibrationPlan plan;
  PackRun run;
};

PackState computed_state(const StagedRun& s, PackSummary& summary) {
  DevicePlan devices = open_devices("cpu", {});
  PackState state = resume_stage(s.run);
  compute_stage(s.run, devices, state, summary, {});
  return state;
}

TEST(PackStages, ComputeStageRecordsCarryAFullPacksManifestDigests) {
  const fs::path dir = test::temp_dir();
  const FullPack full = full_pack(dir / "full");
  StagedRun s(dir / "out");
  PackSummary summary;
  std::vector<std::size_t> progressed;
  DevicePlan devices = open_devices("cpu", {});
  PackState state = resume_stage(s.run);
  compute_stage(s.run, devices, state, summary, [&](const PackProgress& p) { progressed.push_back(p.index); });

  const json& layers = full.manifest.at("layers");
  ASSERT_EQ(state.records.size(), layers.size());
  ASSERT_GE(layers.size(), 2u);
  EXPECT_EQ(progressed.size(), layers.size());
  EXPECT_EQ(summary.reused, 0u);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    const json& e = layers[i];
    SCOPED_TRACE(e.at("name").get<std::string>());
    ASSERT_TRUE(state.records[i].has_value());
    EXPECT_FALSE(state.reused[i]);
    const LayerRecord& r = *state.records[i];
    EXPECT_EQ(s.source.selection.layers[i].layer->name, e.at("name").get<std::string>());
    EXPECT_EQ(r.npz_xxh128, e.at("npz").at("xxh128").get<std::string>());
    EXPECT_EQ(r.part_xxh128, e.at("quantized").at("xxh128").get<std::string>());
    EXPECT_EQ(r.part_bytes, e.at("quantized").at("bytes").get<std::uint64_t>());
    EXPECT_EQ(state.weight_xxh128[i], e.at("weight_xxh128").get<std::string>());
    // The files the records describe are there, with those digests.
    EXPECT_EQ(xxh128_file(s.run.npz_path(i)), r.npz_xxh128);
    EXPECT_EQ(xxh128_file(s.run.part_path(i)), r.part_xxh128);
    EXPECT_EQ(xxh128_file(s.run.npz_path(i)), xxh128_file(full.dir / e.at("npz").at("name").get<std::string>()));
  }
  // Nothing beyond the layers' files: assembling and the manifest are later stages.
  EXPECT_FALSE(fs::exists(dir / "out" / "manifest.json"));
  EXPECT_FALSE(fs::exists(dir / "out" / "quantized-00001-of-00002.safetensors"));
}

TEST(PackStages, ResumeStageReusesIntactLayersAndRecomputesExactlyTheCorruptOne) {
  const fs::path dir = test::temp_dir();
  const fs::path out = dir / "out";
  std::vector<LayerRecord> first;
  {
    StagedRun s(out);
    PackSummary summary;
    for (auto& r : computed_state(s, summary).records) first.push_back(*r);
  }
  {  // every layer finished: all reused, each record as written
    StagedRun s(out, /*resume=*/true);
    const PackState state = resume_stage(s.run);
    ASSERT_EQ(state.records.size(), first.size());
    for (std::size_t i = 0; i < first.size(); ++i) {
      ASSERT_TRUE(state.records[i].has_value()) << i;
      EXPECT_TRUE(state.reused[i]);
      EXPECT_EQ(state.records[i]->npz_xxh128, first[i].npz_xxh128);
      EXPECT_EQ(state.records[i]->part_xxh128, first[i].part_xxh128);
      EXPECT_EQ(state.records[i]->fingerprint, first[i].fingerprint);
    }
  }
  const std::size_t victim = first.size() / 2;
  {  // one byte of one layer's .part changed: that layer alone is left to compute
    const fs::path part = StagedRun(out).run.part_path(victim);
    const char byte = read_bytes(part).at(7);
    std::fstream f(part, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(7);
    f.put(static_cast<char>(byte ^ 0x5a));
  }
  StagedRun s(out, /*resume=*/true);
  PackState state = resume_stage(s.run);
  for (std::size_t i = 0; i < first.size(); ++i) EXPECT_EQ(state.records[i].has_value(), i != victim) << i;
  // Without --resume nothing is taken over, whatever the folder holds.
  StagedRun fresh(out);
  for (const auto& r : resume_stage(fresh.run).records) EXPECT_FALSE(r.has_value());

  // The compute stage then packs that layer again, to the bytes it had.
  DevicePlan devices = open_devices("cpu", {});
  PackSummary summary;
  compute_stage(s.run, devices, state, summary, {});
  EXPECT_EQ(summary.reused, first.size() - 1);
  EXPECT_FALSE(state.reused[victim]);
  EXPECT_EQ(state.records[victim]->part_xxh128, first[victim].part_xxh128);
  EXPECT_EQ(xxh128_file(s.run.part_path(victim)), first[victim].part_xxh128);
}

// A fresh single-shard pack streams quantized.safetensors while computing: each layer's bytes go to
// the work folder's stream file only (no .part), its record saying where. A run that ends before
// committing it leaves the file, and --resume takes every layer from it and assembles the same bytes.
TEST(PackStages, StreamedLayersLiveInTheStreamFileAndResumeFromIt) {
  const fs::path dir = test::temp_dir();
  auto single_shard = [](const fs::path& out, bool resume) {
    PackOptions o = options_for(out);
    o.max_shard_bytes = 4'000'000'000;
    o.resume = resume;
    return o;
  };
  const PackSummary whole = run_pack(single_shard(dir / "whole", false), {});
  ASSERT_EQ(whole.shards, 1);
  std::vector<LayerRecord> first;
  {
    const PackOptions o = single_shard(dir / "out", false);
    PackSource source(o);
    const CalibrationPlan plan = plan_calibration(o, source.checkpoint(), source.linears, source.selection);
    PackRun run(o, source, plan);
    fs::create_directories(run.work);
    PackSummary summary;
    DevicePlan devices = open_devices("cpu", {});
    PackState state = resume_stage(run);
    compute_stage(run, devices, state, summary, {});
    ASSERT_TRUE(state.stream != nullptr);
    for (std::size_t i = 0; i < state.records.size(); ++i) {
      ASSERT_TRUE(state.records[i].has_value());
      EXPECT_TRUE(state.records[i]->stream_offset.has_value()) << i;
      EXPECT_FALSE(fs::exists(run.part_path(i))) << i;  // the bytes went to disk once
      EXPECT_EQ(run.layer_bytes(i, *state.records[i], "test").size(), state.records[i]->part_bytes);
      first.push_back(*state.records[i]);
    }
    EXPECT_TRUE(fs::exists(run.stream_path()));
  }  // ends without assembling: the stream is never committed
  const PackOptions o = single_shard(dir / "out", true);
  PackSource source(o);
  const CalibrationPlan plan = plan_calibration(o, source.checkpoint(), source.linears, source.selection);
  PackRun run(o, source, plan);
  ASSERT_TRUE(fs::exists(run.stream_path())) << "the stream file outlives the run that wrote it";
  PackState state = resume_stage(run);
  for (std::size_t i = 0; i < first.size(); ++i) {
    ASSERT_TRUE(state.reused[i]) << i;
    EXPECT_EQ(state.records[i]->stream_offset, first[i].stream_offset);
  }
  PackSummary summary;
  DevicePlan devices = open_devices("cpu", {});
  compute_stage(run, devices, state, summary, {});
  EXPECT_EQ(summary.reused, first.size());
  const AssembledPack assembled = assemble_stage(run, state);
  ASSERT_EQ(assembled.shards, 1);
  EXPECT_EQ(read_bytes(dir / "out" / "quantized.safetensors"), read_bytes(dir / "whole" / "quantized.safetensors"));
  // A byte of the stream changed: that layer alone is packed again.
  {
    const auto at = static_cast<std::size_t>(*first[1].stream_offset + 3);
    const char byte = read_bytes(run.stream_path()).at(at);
    std::fstream f(run.stream_path(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(at));
    f.put(static_cast<char>(byte ^ 0x5a));
  }
  // A record whose offset or size lies beyond the stream file (damaged, or hostile): that layer is
  // packed again, nothing is allocated from its figures.
  for (const auto& [key, value] : {std::pair<const char*, std::uint64_t>{"part_bytes", 1ull << 62},
                                   std::pair<const char*, std::uint64_t>{"stream_offset", 1ull << 62}}) {
    const fs::path record = run.record_path(2);
    const std::string original = read_bytes(record);
    json r = json::parse(original);
    r[key] = value;
    std::ofstream(record, std::ios::binary | std::ios::trunc) << r.dump(1);
    const PackState damaged = resume_stage(run);
    for (std::size_t i = 0; i < first.size(); ++i)
      EXPECT_EQ(damaged.records[i].has_value(), i != 1 && i != 2) << key << " " << i;
    std::ofstream(record, std::ios::binary | std::ios::trunc) << original;
  }
}

TEST(PackStages, AssembleAndManifestStagesWriteAFullPacksBytes) {
  const fs::path dir = test::temp_dir();
  const FullPack full = full_pack(dir / "full");
  StagedRun s(dir / "out");
  PackSummary summary;
  const PackState state = computed_state(s, summary);
  const AssembledPack assembled = assemble_stage(s.run, state);
  ASSERT_GE(assembled.shards, 2) << "the test means to cover shards and their index";
  ASSERT_EQ(assembled.files.size(), full.manifest.at("files").size());
  for (const PackedFile& f : assembled.files) {
    SCOPED_TRACE(f.name);
    EXPECT_EQ(read_bytes(dir / "out" / f.name), read_bytes(full.dir / f.name));
    EXPECT_EQ(xxh128_file(dir / "out" / f.name), f.xxh128);
  }
  manifest_stage(s.run, state, assembled, summary);
  const std::string manifest = read_bytes(dir / "out" / "manifest.json");
  EXPECT_EQ(manifest, read_bytes(full.dir / "manifest.json"));
  EXPECT_EQ(summary.shards, full.summary.shards);
  EXPECT_EQ(summary.quantized_bytes, full.summary.quantized_bytes);
  EXPECT_EQ(summary.npz_bytes, full.summary.npz_bytes);
  EXPECT_EQ(summary.mean_sqnr_db, full.summary.mean_sqnr_db);
  EXPECT_EQ(summary.worst_layer, full.summary.worst_layer);

  // The same records give the same manifest again, byte for byte.
  fs::remove(dir / "out" / "manifest.json");
  PackSummary again;
  manifest_stage(s.run, state, assembled, again);
  EXPECT_EQ(read_bytes(dir / "out" / "manifest.json"), manifest);
}

TEST(PackStages, FinishLayerStepsGiveTheManifestsFigures) {
  const fs::path dir = test::temp_dir();
  const FullPack full = full_pack(dir / "full");
  StagedRun s(dir / "out");
  const QuantConfig& q = s.options.config.quant;
  const json& layers = full.manifest.at("layers");
  for (std::size_t i : {std::size_t{0}, layers.size() - 1}) {
    const SelectedLayer& sel = s.source.selection.layers[i];
    const json& e = layers[i];
    SCOPED_TRACE(sel.layer->name);
    const LayerCalibration calib = s.plan.for_layer(*sel.layer);
    const LayerInput in = load_layer_input(s.source.checkpoint(), sel, calib);
    const LayerMath math = compute_layer_math(in.packed_view(), q, sel.wbits);

    const LayerActivations acts = calibrate_layer(sel, q, calib, in, math.t);
    EXPECT_EQ(acts.figures.steps, 0);
    EXPECT_TRUE(acts.act_scale.empty());
    EXPECT_EQ(acts.test_x.size(), static_cast<std::size_t>(kConformanceRows * in.cols));

    write_layer_npz(s.run.npz_path(i), *sel.layer, q, math, acts.act_scale, calib.smooth);
    EXPECT_EQ(xxh128_file(s.run.npz_path(i)), e.at("npz").at("xxh128").get<std::string>());

    const LayerTensors t = layer_tensors(sel, q, calib, in, math, acts);
    EXPECT_EQ(xxh128_hex(t.data), e.at("quantized").at("xxh128").get<std::string>());
    EXPECT_EQ(t.stored_codes.size(), static_cast<std::size_t>(in.rows * in.cols));
    const double conformance = std::sqrt(t.quality.conformance_err2 / t.quality.conformance_fp2);
    EXPECT_EQ(conformance, e.at("conformance").at("rel_error_q_vs_fp").get<double>());

    const LayerErrors errors = measure_layer(q, calib, in, math, acts, t.stored_codes);
    EXPECT_EQ(errors.held_out_rows, 0u);
    EXPECT_EQ(std::sqrt(errors.duquant_err2 / errors.weight_norm2),
              e.at("quality").at("duquant").at("rel_fro_error").get<double>());
    EXPECT_EQ(std::sqrt(errors.rtn_err2 / errors.weight_norm2),
              e.at("quality").at("rtn").at("rel_fro_error").get<double>());
  }
}

}  // namespace
}  // namespace duquant

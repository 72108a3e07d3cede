// `duquant pack --calib`: end to end on the fixture checkpoint with dumps of the runtime's golden
// activations (the golden act_scale through the command line), held-out calls, missing layers,
// width mismatches, --resume with a changed dump, and smoothing on a synthetic layer with outlier
// activation channels (it must lower the W4A8 output error; the numbers are printed).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <random>

#include "common/child_process.hpp"
#include "formats/npz.hpp"
#include "formats/safetensors_writer.hpp"
#include "pack/pack_test_util.hpp"
#include "packfmt/layout.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using formats::NpzFile;
using nlohmann::json;

struct DumpCallData {
  std::string layer;
  int index = 0;
  std::uint64_t rows = 0, cols = 0;
  std::vector<float> values;
};

// A safetensors dump (keys `<layer>.x_NNNN`, F32).
void write_dump(const fs::path& path, const std::vector<DumpCallData>& calls) {
  std::vector<formats::TensorSpec> specs;
  for (const auto& c : calls)
    specs.push_back({fmt::format("{}.x_{:04d}", c.layer, c.index), formats::DType::F32, {c.rows, c.cols}});
  formats::SafetensorsWriter w(path, specs, {});
  for (const auto& c : calls) w.write(std::as_bytes(std::span(c.values)));
  w.commit();
}

json read_json(const fs::path& p) { return json::parse(test::read_text(p)); }

const json& manifest_layer(const json& m, const std::string& name) {
  for (const json& l : m.at("layers"))
    if (l.at("name") == name) return l;
  throw std::runtime_error("no layer " + name);
}

class PackCalib : public ::testing::Test {
 protected:
  void SetUp() override {
    ckpt_ = std::make_unique<formats::Checkpoint>(formats::Checkpoint::open(test::tiny_checkpoint()));
    linears_ = find_linear_layers(*ckpt_);
    layers_ = test::expert_layers(linears_);
    ASSERT_EQ(layers_.size(), 14u);
    golden_ = std::make_unique<NpzFile>(NpzFile::open(test::fixtures() / "openpi-pack-b8-noperm-ls0.golden.npz"));
    dir_ = test::temp_dir();
  }
  // The golden activations of every expert layer as call 0 ([120, I]), plus `extra` more calls made
  // from them (scaled copies) for held-out measurements.
  std::vector<DumpCallData> golden_calls(int extra = 0, const std::string& skip = "") const {
    std::vector<DumpCallData> calls;
    for (const LinearLayer* l : layers_) {
      if (l->name == skip) continue;
      const auto x = formats::npy_to_f32(golden_->at(l->name + "|calib|x"), "x");
      for (int k = 0; k <= extra; ++k) {
        DumpCallData c{l->name, k, 120, l->in_features, x};
        for (float& v : c.values) v *= 1.0f + 0.1f * static_cast<float>(k);
        calls.push_back(std::move(c));
      }
    }
    return calls;
  }
  std::vector<std::string> pack_args(const fs::path& dump, const fs::path& out) const {
    return {"pack",
            test::tiny_checkpoint().string(),
            "-o",
            out.string(),
            "--scope",
            test::kExpertScope,
            "--block",
            "8",
            "--no-permute",
            "--lambda-smooth",
            "0",
            "--calib",
            dump.string()};
  }

  std::unique_ptr<formats::Checkpoint> ckpt_;
  std::vector<LinearLayer> linears_;
  std::vector<const LinearLayer*> layers_;
  std::unique_ptr<NpzFile> golden_;
  fs::path dir_;
};

TEST_F(PackCalib, GoldenActivationScalesThroughTheCommandLine) {
  write_dump(dir_ / "dump.safetensors", golden_calls());
  const auto r = test::run_cli(pack_args(dir_ / "dump.safetensors", dir_ / "pack"));
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("calibration: 14 of 14 layers"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("output error: not measured"), std::string::npos) << r.out;
  const json m = read_json(dir_ / "pack" / kManifestName);
  EXPECT_EQ(m.at("calibration").at("missing_layers").size(), 0u);
  double worst = 0;
  for (const LinearLayer* l : layers_) {
    const NpzFile npz = NpzFile::open(dir_ / "pack" / pack_file_name(l->name));
    ASSERT_TRUE(npz.contains("act_scale")) << l->name;
    EXPECT_FALSE(npz.contains("smooth_scale"));
    EXPECT_EQ(npz.keys().back(), "act_scale");  // after the runtime's members
    const auto ours = formats::npy_to_f32(npz.at("act_scale"), "act_scale");
    const auto gold = formats::npy_to_f32(golden_->at(l->name + "|calib|act_scale_a8_p99.9"), "golden");
    ASSERT_EQ(ours.size(), gold.size());
    for (std::size_t j = 0; j < ours.size(); ++j)
      worst = std::max(worst, std::fabs(double(ours[j]) - gold[j]) / gold[j]);
    const json& e = manifest_layer(m, l->name);
    EXPECT_EQ(e.at("calibration").at("steps"), 1);
    EXPECT_EQ(e.at("calibration").at("tokens"), 120);
    EXPECT_EQ(e.at("calibration").at("held_out_calls"), 0);
    EXPECT_TRUE(e.at("calibration").at("output_rel_error").is_null());
    EXPECT_TRUE(e.at("smoothing").is_null());
  }
  std::printf("act_scale vs golden through `duquant pack --calib`: worst relative difference %.3g\n", worst);
  EXPECT_LE(worst, 1e-4);  // through our own rotations (test_calibration: 3.2e-5)
  // verify: clean, and it recomputes the conformance vectors with quantized activations.
  const auto v =
      test::run_cli({"verify", (dir_ / "pack").string(), "--checkpoint", test::tiny_checkpoint().string(), "--strict"});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
}

TEST_F(PackCalib, HeldOutCallsGiveTheOutputErrorAndDumpedConformanceRows) {
  write_dump(dir_ / "dump.safetensors", golden_calls(4));
  auto args = pack_args(dir_ / "dump.safetensors", dir_ / "pack");
  args.insert(args.end(), {"--calib-steps", "3"});
  const auto r = test::run_cli(args);
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("output error on held-out calls"), std::string::npos) << r.out;
  const json m = read_json(dir_ / "pack" / kManifestName);
  const auto q = formats::Checkpoint::open(dir_ / "pack" / kQuantizedName);
  for (const LinearLayer* l : layers_) {
    const json& c = manifest_layer(m, l->name).at("calibration");
    EXPECT_EQ(c.at("steps"), 3);
    EXPECT_EQ(c.at("tokens"), 360);
    EXPECT_EQ(c.at("held_out_calls"), 2);
    EXPECT_EQ(c.at("held_out_rows"), 32);
    const double err = c.at("output_rel_error").get<double>();
    EXPECT_GT(err, 1e-4) << l->name;  // W4A8 is not lossless
    EXPECT_LT(err, 0.5) << l->name;
    // test_x: rows 0, 30, 60, 90 of the first held-out call (call 3 = golden x times 1.3).
    const auto* tx = q.find(l->name + ".test_x");
    ASSERT_NE(tx, nullptr);
    std::vector<float> got(tx->numel);
    q.read_f32(*tx, got);
    const auto x = formats::npy_to_f32(golden_->at(l->name + "|calib|x"), "x");
    const std::size_t i_n = l->in_features;
    for (std::size_t r4 = 0; r4 < 4; ++r4)
      for (std::size_t j = 0; j < i_n; ++j) ASSERT_EQ(got[r4 * i_n + j], x[r4 * 30 * i_n + j] * 1.3f) << l->name;
    ASSERT_NE(q.find(l->name + ".act_scale"), nullptr);
  }
  const auto v =
      test::run_cli({"verify", (dir_ / "pack").string(), "--checkpoint", test::tiny_checkpoint().string(), "--strict"});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  // inspect shows the output error column, with the manifest's figure of each layer.
  const auto in = test::run_cli({"inspect", (dir_ / "pack").string()});
  ASSERT_EQ(in.exit_code, 0) << in.err;
  EXPECT_NE(in.out.find("out.err"), std::string::npos) << in.out;
  const double first = manifest_layer(m, layers_[0]->name).at("calibration").at("output_rel_error").get<double>();
  EXPECT_NE(in.out.find(fmt::format("{:.4f}", first)), std::string::npos) << in.out;
}

// A copy of `src` with every tensor under `prefix` and `extra` 1-D tensors beside it (LeRobot's
// layout: the policy under `model.`, normalisation buffers outside).
void write_prefixed_copy(const fs::path& src, const fs::path& dst, const std::string& prefix, int extra) {
  const auto in = formats::Checkpoint::open(src);
  std::vector<formats::TensorSpec> specs;
  for (const auto& t : in.tensors()) specs.push_back({prefix + t.name, t.dtype, t.shape});
  for (int k = 0; k < extra; ++k)
    specs.push_back({fmt::format("normalize_inputs.buffer_{}.mean", k), formats::DType::F32, {4}});
  formats::SafetensorsWriter w(dst, specs, {});
  for (const auto& t : in.tensors()) w.write(in.bytes(t));
  const std::vector<float> four{1, 2, 3, 4};
  for (int k = 0; k < extra; ++k) w.write(std::as_bytes(std::span(four)));
  w.commit();
}

// Every file of pack `a` is byte-identical in pack `b`, but for the manifest.
void expect_same_pack_files(const fs::path& a, const fs::path& b) {
  std::size_t files = 0;
  for (const auto& e : fs::directory_iterator(a)) {
    const std::string name = e.path().filename().string();
    if (name == kManifestName) continue;
    ++files;
    EXPECT_EQ(test::read_text(e.path()), test::read_text(b / name)) << name;
  }
  EXPECT_GE(files, 15u);  // 14 npz + quantized.safetensors
}

TEST_F(PackCalib, LeRobotLayoutGivesTheSamePackAndDumpsMayUseEitherName) {
  const fs::path lerobot = dir_ / "lerobot.safetensors";
  write_prefixed_copy(test::tiny_checkpoint(), lerobot, "model.", 2);
  write_dump(dir_ / "dump.safetensors", golden_calls());
  std::vector<DumpCallData> stored = golden_calls();  // keyed as the checkpoint stores the layers
  for (auto& c : stored) c.layer = "model." + c.layer;
  write_dump(dir_ / "dump-stored.safetensors", stored);

  auto args_for = [&](const fs::path& ckpt, const fs::path& dump, const fs::path& out) {
    std::vector<std::string> a = pack_args(dump, out);
    a[1] = ckpt.string();
    return a;
  };
  const auto plain = test::run_cli(args_for(test::tiny_checkpoint(), dir_ / "dump.safetensors", dir_ / "plain"));
  ASSERT_EQ(plain.exit_code, 0) << plain.err;
  const auto runtime_keys = test::run_cli(args_for(lerobot, dir_ / "dump.safetensors", dir_ / "lerobot"));
  ASSERT_EQ(runtime_keys.exit_code, 0) << runtime_keys.err;
  EXPECT_NE(runtime_keys.err.find("notice: " + lerobot.string() + ": pi0.5 in LeRobot's layout"), std::string::npos)
      << runtime_keys.err;
  EXPECT_NE(runtime_keys.err.find("2 tensors outside 'model.'"), std::string::npos) << runtime_keys.err;
  EXPECT_NE(runtime_keys.out.find("calibration: 14 of 14 layers"), std::string::npos) << runtime_keys.out;
  const auto stored_keys = test::run_cli(args_for(lerobot, dir_ / "dump-stored.safetensors", dir_ / "lerobot-stored"));
  ASSERT_EQ(stored_keys.exit_code, 0) << stored_keys.err;
  EXPECT_NE(stored_keys.out.find("calibration: 14 of 14 layers"), std::string::npos) << stored_keys.out;

  // The runtime names its modules without `model.`: the same npz files and tensors, byte for byte.
  expect_same_pack_files(dir_ / "plain", dir_ / "lerobot");
  expect_same_pack_files(dir_ / "plain", dir_ / "lerobot-stored");
  for (const auto& e : fs::directory_iterator(dir_ / "lerobot"))
    EXPECT_EQ(e.path().filename().string().rfind("model.", 0), std::string::npos) << e.path();
  const json m = read_json(dir_ / "lerobot" / kManifestName);
  const json& names = m.at("checkpoint").at("names");
  EXPECT_EQ(names.at("checkpoint_prefix"), "model.");
  EXPECT_EQ(names.at("runtime_prefix"), "");
  EXPECT_EQ(names.at("how"), "detected");
  EXPECT_EQ(names.at("model"), "pi0.5");
  EXPECT_EQ(names.at("set_aside"), 2);
  for (const json& l : m.at("layers")) EXPECT_EQ(l.at("name").get<std::string>().rfind("model.", 0), std::string::npos);

  // verify follows the recorded names, against either layout of the same weights.
  for (const fs::path& ck : {lerobot, test::tiny_checkpoint()}) {
    const auto v = test::run_cli({"verify", (dir_ / "lerobot").string(), "--checkpoint", ck.string(), "--strict"});
    EXPECT_EQ(v.exit_code, 0) << ck << v.out << v.err;
    EXPECT_NE(v.out.find("verify: 14 layers: 14 OK, 0 WARN, 0 FAIL"), std::string::npos) << ck << v.out;
  }
  // Kept as stored, the same selection picks nothing and says why.
  const auto kept = test::run_cli({"list-linears", lerobot.string(), "--preset", "openpi-dit", "--strip-prefix", ""});
  EXPECT_EQ(kept.exit_code, 5) << kept.err;
  EXPECT_NE(kept.out.find("pi0.5 names under 'model.' (LeRobot's layout), read as stored"), std::string::npos)
      << kept.out;
}

TEST(PackCalibLayouts, FoldedCopyKeepsTheStoredNamesAndEverythingBesideTheModel) {
  const fs::path dir = test::temp_dir();
  const fs::path lerobot = dir / "lerobot.safetensors";
  write_prefixed_copy(test::tiny_checkpoint(), lerobot, "model.", 1);
  const auto ck = formats::Checkpoint::open(test::tiny_checkpoint());
  const auto linears = find_linear_layers(ck);
  std::vector<DumpCallData> calls;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  for (const LinearLayer* l : test::expert_layers(linears)) {
    DumpCallData c{"model." + l->name, 0, 64, l->in_features, std::vector<float>(64 * l->in_features)};
    for (float& v : c.values) v = normal(rng);
    calls.push_back(std::move(c));
  }
  write_dump(dir / "dump.safetensors", calls);
  auto run = [&](const fs::path& ckpt, const std::string& tag, std::vector<DumpCallData> keyed) {
    write_dump(dir / (tag + ".dump.safetensors"), keyed);
    return test::run_cli({"pack", ckpt.string(), "-o", (dir / tag).string(), "--preset", "openpi-dit", "--calib",
                          (dir / (tag + ".dump.safetensors")).string(), "--smooth-alpha", "0.5", "--fold-smoothing",
                          (dir / (tag + ".folded.safetensors")).string()});
  };
  const auto a = run(lerobot, "lerobot", calls);
  ASSERT_EQ(a.exit_code, 0) << a.err;
  std::vector<DumpCallData> runtime_keyed = calls;
  for (auto& c : runtime_keyed) c.layer = c.layer.substr(6);
  const auto b = run(test::tiny_checkpoint(), "plain", runtime_keyed);
  ASSERT_EQ(b.exit_code, 0) << b.err;
  expect_same_pack_files(dir / "plain", dir / "lerobot");
  const auto folded_lerobot = formats::Checkpoint::open(dir / "lerobot.folded.safetensors");
  const auto folded_plain = formats::Checkpoint::open(dir / "plain.folded.safetensors");
  ASSERT_EQ(folded_lerobot.tensors().size(), folded_plain.tensors().size() + 1);
  for (const auto& t : folded_plain.tensors()) {
    const auto* u = folded_lerobot.find("model." + t.name);
    ASSERT_NE(u, nullptr) << t.name;
    const auto x = folded_plain.bytes(t), y = folded_lerobot.bytes(*u);
    EXPECT_TRUE(x.size() == y.size() && std::equal(x.begin(), x.end(), y.begin())) << t.name;
  }
  EXPECT_NE(folded_lerobot.find("normalize_inputs.buffer_0.mean"), nullptr);
}

// A smoothed pack is made for its folded checkpoint: verify is OK against that one, and says in one
// WARN per smoothed layer that the original checkpoint is not the one to load it with.
TEST_F(PackCalib, SmoothedPackVerifiesAgainstItsFoldedCheckpoint) {
  write_dump(dir_ / "dump.safetensors", golden_calls(1));
  const fs::path folded = dir_ / "folded.safetensors";
  const auto r = test::run_cli({"pack", test::tiny_checkpoint().string(), "-o", (dir_ / "pack").string(), "--preset",
                                "openpi-dit", "--calib", (dir_ / "dump.safetensors").string(), "--smooth-alpha", "0.5",
                                "--fold-smoothing", folded.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const json m = read_json(dir_ / "pack" / kManifestName);
  std::size_t smoothed = 0;
  for (const json& l : m.at("layers")) {
    if (l.at("smoothing").is_null()) continue;
    ++smoothed;
    const std::string d = l.at("smoothing").at("folded_weight_xxh128");
    EXPECT_EQ(d.size(), 32u);
    EXPECT_NE(d, l.at("weight_xxh128").get<std::string>());  // W·diag(s) is another weight
  }
  ASSERT_GT(smoothed, 0u);

  const auto ok = test::run_cli({"verify", (dir_ / "pack").string(), "-c", folded.string(), "--strict"});
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_NE(ok.out.find("verify: 14 layers: 14 OK, 0 WARN, 0 FAIL"), std::string::npos) << ok.out;

  const auto orig = test::run_cli({"verify", (dir_ / "pack").string(), "-c", test::tiny_checkpoint().string()});
  EXPECT_EQ(orig.exit_code, 0) << orig.out;
  EXPECT_NE(orig.out.find(fmt::format("{} WARN, 0 FAIL", smoothed)), std::string::npos) << orig.out;
  std::size_t needs = 0;
  for (auto at = orig.out.find("WARN needs-folded:"); at != std::string::npos;
       at = orig.out.find("WARN needs-folded:", at + 1))
    ++needs;
  EXPECT_EQ(needs, smoothed) << orig.out;  // one line per smoothed layer, nothing else
  EXPECT_EQ(
      test::run_cli({"verify", (dir_ / "pack").string(), "-c", test::tiny_checkpoint().string(), "--strict"}).exit_code,
      1);

  // Neither weight: stale, naming both digests the pack knows.
  const fs::path other = dir_ / "other.safetensors";
  {
    const auto in = formats::Checkpoint::open(folded);
    std::vector<formats::TensorSpec> specs;
    for (const auto& t : in.tensors()) specs.push_back({t.name, t.dtype, t.shape});
    formats::SafetensorsWriter w(other, specs, {});
    for (const auto& t : in.tensors()) {
      std::vector<std::byte> b(in.bytes(t).begin(), in.bytes(t).end());
      if (t.name == layers_[4]->name + ".weight") b[2] ^= std::byte{0x40};
      w.write(b);
    }
    w.commit();
  }
  const auto stale = test::run_cli({"verify", (dir_ / "pack").string(), "-c", other.string()});
  EXPECT_EQ(stale.exit_code, 1) << stale.out;
  EXPECT_NE(stale.out.find("FAIL stale"), std::string::npos) << stale.out;
  EXPECT_NE(stale.out.find("verify: 14 layers: 13 OK, 0 WARN, 1 FAIL"), std::string::npos) << stale.out;
}

TEST_F(PackCalib, MissingLayersWarnOrFailWithStrict) {
  const std::string missing = layers_[3]->name;
  write_dump(dir_ / "dump.safetensors", golden_calls(0, missing));
  const auto r = test::run_cli(pack_args(dir_ / "dump.safetensors", dir_ / "pack"));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("warning: 1 of the 14 selected layers are not in the dump"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(missing), std::string::npos) << r.err;
  const json m = read_json(dir_ / "pack" / kManifestName);
  EXPECT_EQ(m.at("calibration").at("missing_layers"), json::array({missing}));
  EXPECT_TRUE(manifest_layer(m, missing).at("calibration").is_null());
  EXPECT_FALSE(NpzFile::open(dir_ / "pack" / pack_file_name(missing)).contains("act_scale"));

  auto strict = pack_args(dir_ / "dump.safetensors", dir_ / "pack-strict");
  strict.push_back("--strict");
  const auto s = test::run_cli(strict);
  EXPECT_EQ(s.exit_code, 3) << s.err;
  EXPECT_NE(s.err.find("not in the dump (--strict)"), std::string::npos) << s.err;
  EXPECT_NE(s.err.find(missing), std::string::npos) << s.err;
  EXPECT_FALSE(fs::exists(dir_ / "pack-strict" / kManifestName));
}

TEST_F(PackCalib, WidthMismatchNamesBothWidths) {
  auto calls = golden_calls();
  calls[0].cols += 1;  // q_proj of layer 0 reads 64
  calls[0].values.resize(calls[0].rows * calls[0].cols, 0.5f);
  write_dump(dir_ / "dump.safetensors", calls);
  const auto r = test::run_cli(pack_args(dir_ / "dump.safetensors", dir_ / "pack"));
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find(calls[0].layer), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("the dump has width 65, the layer reads 64"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(dir_ / "pack" / kManifestName));
}

TEST_F(PackCalib, ResumeReusesLayersOnlyForTheSameDump) {
  write_dump(dir_ / "dump.safetensors", golden_calls(1));
  const auto first = test::run_cli(pack_args(dir_ / "dump.safetensors", dir_ / "pack"));
  ASSERT_EQ(first.exit_code, 0) << first.err;
  const std::string manifest = test::read_text(dir_ / "pack" / kManifestName);
  auto resume = pack_args(dir_ / "dump.safetensors", dir_ / "pack");
  resume.push_back("--resume");
  // An interrupted run: the work folder survives a kill after the 5th layer.
  const auto killed =
      test::run_cli(pack_args(dir_ / "dump.safetensors", dir_ / "pack2"), {"DUQUANT_TEST_KILL_AT=layer:5"});
  EXPECT_NE(killed.exit_code, 0);
  auto resume2 = pack_args(dir_ / "dump.safetensors", dir_ / "pack2");
  resume2.push_back("--resume");
  const auto done = test::run_cli(resume2);
  ASSERT_EQ(done.exit_code, 0) << done.err;
  EXPECT_NE(done.out.find("(5 reused)"), std::string::npos) << done.out;
  EXPECT_EQ(test::read_text(dir_ / "pack2" / kManifestName), manifest);
  EXPECT_EQ(test::read_text(dir_ / "pack2" / kQuantizedName), test::read_text(dir_ / "pack" / kQuantizedName));

  // The same interruption, then a changed dump: nothing may be reused.
  const auto killed3 =
      test::run_cli(pack_args(dir_ / "dump.safetensors", dir_ / "pack3"), {"DUQUANT_TEST_KILL_AT=layer:5"});
  EXPECT_NE(killed3.exit_code, 0);
  auto calls = golden_calls(1);
  for (auto& c : calls) c.values[0] += 1.0f;
  write_dump(dir_ / "dump.safetensors", calls);
  auto resume3 = pack_args(dir_ / "dump.safetensors", dir_ / "pack3");
  resume3.push_back("--resume");
  const auto redone = test::run_cli(resume3);
  ASSERT_EQ(redone.exit_code, 0) << redone.err;
  EXPECT_NE(redone.out.find("(0 reused)"), std::string::npos) << redone.out;
}

// A layer alone in its group (down_proj), [64, 128] float32, whose inputs have 4 outlier channels
// 40x larger than the rest, with weight columns 40x smaller (so the output is not dominated by
// them, as in real models). The input rotations spread each outlier over its block, whose static
// per-channel activation scales then have steps far too coarse for the other channels; smoothing
// moves the outliers' range into the weight.
TEST(Smoothing, LowersTheW4A8OutputErrorWithOutlierChannels) {
  const fs::path dir = test::temp_dir();
  const std::uint64_t o = 64, i = 128;
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> w(o * i);
  for (std::size_t e = 0; e < w.size(); ++e) w[e] = 0.05f * normal(rng) * ((e % i) % 32 == 5 ? 1.0f / 40.0f : 1.0f);
  {
    formats::SafetensorsWriter ck(dir / "model.safetensors",
                                  {{"model.layers.0.mlp.down_proj.weight", formats::DType::F32, {o, i}}}, {});
    ck.write(std::as_bytes(std::span(w)));
    ck.commit();
  }
  std::vector<DumpCallData> calls;
  for (int k = 0; k < 8; ++k) {
    DumpCallData c{"model.layers.0.mlp.down_proj", k, 256, i, std::vector<float>(256 * i)};
    for (std::size_t e = 0; e < c.values.size(); ++e) {
      const std::size_t j = e % i;
      c.values[e] = normal(rng) * (j % 32 == 5 ? 40.0f : 1.0f);
    }
    calls.push_back(std::move(c));
  }
  write_dump(dir / "dump.safetensors", calls);
  auto run = [&](const std::string& out, const std::vector<std::string>& extra) {
    std::vector<std::string> args{"pack",
                                  (dir / "model.safetensors").string(),
                                  "-o",
                                  (dir / out).string(),
                                  "--calib",
                                  (dir / "dump.safetensors").string(),
                                  "--calib-steps",
                                  "4"};
    args.insert(args.end(), extra.begin(), extra.end());
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 0) << r.err;
    const json m = read_json(dir / out / kManifestName);
    return m.at("layers")[0].at("calibration").at("output_rel_error").get<double>();
  };
  const double plain = run("plain", {});
  const double smoothed = run("smoothed", {"--smooth-alpha", "0.5"});
  std::printf(
      "W4A8 output error on held-out calls, 4 outlier channels x40: without smoothing %.4f, with alpha 0.5 %.4f\n",
      plain, smoothed);
  EXPECT_LT(smoothed, 0.8 * plain);
  // The smoothed pack carries its scale, and verify says the Python runtime ignores it.
  const NpzFile npz = NpzFile::open(dir / "smoothed" / "model.layers.0.mlp.down_proj.npz");
  ASSERT_TRUE(npz.contains("smooth_scale"));
  const auto v =
      test::run_cli({"verify", (dir / "smoothed").string(), "--checkpoint", (dir / "model.safetensors").string()});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  EXPECT_NE(v.out.find("smooth-scale"), std::string::npos) << v.out;
  const auto vs = test::run_cli(
      {"verify", (dir / "smoothed").string(), "--checkpoint", (dir / "model.safetensors").string(), "--strict"});
  EXPECT_EQ(vs.exit_code, 1) << vs.out;
  // --fold-smoothing: a layer without a norm before it keeps s = 1 (not smoothed).
  const auto f = test::run_cli({"pack", (dir / "model.safetensors").string(), "-o", (dir / "folded").string(),
                                "--calib", (dir / "dump.safetensors").string(), "--smooth-alpha", "0.5",
                                "--fold-smoothing", (dir / "folded.safetensors").string()});
  ASSERT_EQ(f.exit_code, 0) << f.err;
  EXPECT_FALSE(NpzFile::open(dir / "folded" / "model.layers.0.mlp.down_proj.npz").contains("smooth_scale"));
  EXPECT_TRUE(fs::exists(dir / "folded.safetensors"));
}

TEST(PackCalibUsage, SmoothingNeedsADump) {
  const fs::path dir = test::temp_dir();
  const auto r =
      test::run_cli({"pack", test::tiny_checkpoint().string(), "-o", (dir / "p").string(), "--smooth-alpha", "0.5"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--smooth-alpha needs --calib"), std::string::npos) << r.err;
  const auto m = test::run_cli(
      {"pack", test::tiny_checkpoint().string(), "-o", (dir / "p").string(), "--calib", (dir / "nope.h5").string()});
  EXPECT_EQ(m.exit_code, 4) << m.err;
  EXPECT_NE(m.err.find("nope.h5"), std::string::npos) << m.err;
}

}  // namespace
}  // namespace duquant

// `duquant synth`: the embedded default checkpoint. Its names, shapes and layout equal the
// fixture's at factor 16 with 2 layers per stack, its bytes do not depend on the thread count,
// its weights carry outlier input channels, and bad options are refused.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "common/run_cli.hpp"
#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "duquant/synth.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace duquant {
namespace {

using formats::Checkpoint;
using formats::DType;

TEST(Synth, Factor16TwoLayersHasTheFixtureLayout) {
  const auto dir = test::temp_dir();
  SynthOptions o;
  o.factor = 16;
  o.llm_layers = o.expert_layers = o.vision_layers = 2;
  write_synth_checkpoint(dir / "synth.safetensors", o);
  const Checkpoint synth = Checkpoint::open(dir / "synth.safetensors");
  const Checkpoint tiny = Checkpoint::open(test::tiny_checkpoint());
  ASSERT_EQ(synth.tensors().size(), tiny.tensors().size());
  for (std::size_t i = 0; i < tiny.tensors().size(); ++i) {
    const auto& a = synth.tensors()[i];
    const auto& b = tiny.tensors()[i];
    EXPECT_EQ(a.name, b.name) << "tensor " << i;
    EXPECT_EQ(a.shape, b.shape) << a.name;
    EXPECT_EQ(a.dtype, b.dtype) << a.name;
    EXPECT_EQ(a.nbytes, b.nbytes) << a.name;
  }
}

TEST(Synth, FullDepthCountsMatchPi05) {
  SynthOptions o;
  o.factor = 16;
  std::size_t weights2d = 0, llm = 0, expert = 0, vision = 0;
  for (const auto& t : synth_tensors(o)) {
    if (t.shape.size() != 2) continue;
    ++weights2d;
    if (t.name.find(".language_model.layers.") != std::string::npos) ++llm;
    if (t.name.find(".gemma_expert.model.layers.") != std::string::npos) ++expert;
    if (t.name.find(".vision_model.encoder.layers.") != std::string::npos) ++vision;
  }
  EXPECT_EQ(llm, 18u * 7);
  EXPECT_EQ(expert, 18u * 9);  // 7 projections + 2 adaptive-norm dense layers
  EXPECT_EQ(vision, 27u * 6);
  EXPECT_EQ(weights2d, llm + expert + vision + 5);  // projector, action in/out, time mlp in/out
}

TEST(Synth, FullSizeShapesArePi05s) {
  const SynthOptions o;  // factor 1: the real sizes (only the list is built, nothing is written)
  auto shape_of = [&](const std::string& name) {
    for (const auto& t : synth_tensors(o))
      if (t.name == name) return t.shape;
    ADD_FAILURE() << "no tensor " << name;
    return std::vector<std::uint64_t>{};
  };
  using V = std::vector<std::uint64_t>;
  const std::string llm = "paligemma_with_expert.paligemma.model.language_model.layers.17.";
  const std::string ex = "paligemma_with_expert.gemma_expert.model.layers.17.";
  EXPECT_EQ(shape_of(llm + "self_attn.q_proj.weight"), (V{2048, 2048}));
  EXPECT_EQ(shape_of(llm + "self_attn.k_proj.weight"), (V{256, 2048}));
  EXPECT_EQ(shape_of(llm + "mlp.gate_proj.weight"), (V{16384, 2048}));
  EXPECT_EQ(shape_of(llm + "mlp.down_proj.weight"), (V{2048, 16384}));
  EXPECT_EQ(shape_of(ex + "self_attn.q_proj.weight"), (V{2048, 1024}));
  EXPECT_EQ(shape_of(ex + "self_attn.o_proj.weight"), (V{1024, 2048}));
  EXPECT_EQ(shape_of(ex + "mlp.down_proj.weight"), (V{1024, 4096}));
  EXPECT_EQ(shape_of(ex + "input_layernorm.dense.weight"), (V{3072, 1024}));
  EXPECT_EQ(shape_of("paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.26.mlp.fc1.weight"),
            (V{4304, 1152}));
  EXPECT_EQ(shape_of("action_out_proj.weight"), (V{32, 1024}));
}

TEST(Synth, BytesDoNotDependOnThreadCount) {
  const auto dir = test::temp_dir();
  const std::string a = (dir / "one.safetensors").string(), b = (dir / "two.safetensors").string();
  const std::vector<std::string> args{"--factor", "8", "--layers", "2", "--dtype", "f16"};
  auto with = [&](const std::string& out) {
    std::vector<std::string> v{"synth", "-o", out};
    v.insert(v.end(), args.begin(), args.end());
    return v;
  };
  ASSERT_EQ(test::run_cli(with(a), {"OMP_NUM_THREADS=1"}).exit_code, 0);
  ASSERT_EQ(test::run_cli(with(b), {"OMP_NUM_THREADS=2"}).exit_code, 0);
  const std::string bytes_a = test::read_text(a), bytes_b = test::read_text(b);
  EXPECT_GT(bytes_a.size(), 1'000'000u);
  EXPECT_TRUE(bytes_a == bytes_b) << "synth output differs between 1 and 2 threads";
}

TEST(Synth, SeedChangesValuesNotLayout) {
  const auto dir = test::temp_dir();
  SynthOptions o;
  o.factor = 16;
  o.llm_layers = o.expert_layers = o.vision_layers = 1;
  write_synth_checkpoint(dir / "s0.safetensors", o);
  o.seed = 7;
  write_synth_checkpoint(dir / "s7.safetensors", o);
  const Checkpoint c0 = Checkpoint::open(dir / "s0.safetensors"), c7 = Checkpoint::open(dir / "s7.safetensors");
  ASSERT_EQ(c0.tensors().size(), c7.tensors().size());
  const auto& t0 = c0.tensors()[0];
  const auto& t7 = c7.tensors()[0];
  EXPECT_EQ(t0.shape, t7.shape);
  const auto b0 = c0.bytes(t0), b7 = c7.bytes(t7);
  EXPECT_FALSE(std::equal(b0.begin(), b0.end(), b7.begin()));
}

TEST(Synth, EveryDtypeStoresTheSameValuesWithinItsPrecision) {
  const auto dir = test::temp_dir();
  SynthOptions o;
  o.factor = 16;
  o.llm_layers = o.expert_layers = o.vision_layers = 1;
  std::vector<std::vector<float>> decoded;
  for (DType dt : {DType::F32, DType::BF16, DType::F16}) {
    o.dtype = dt;
    const auto path = dir / (std::string(formats::dtype_name(dt)) + ".safetensors");
    write_synth_checkpoint(path, o);
    const Checkpoint c = Checkpoint::open(path);
    const auto* w = c.find("paligemma_with_expert.paligemma.model.language_model.layers.0.mlp.down_proj.weight");
    ASSERT_NE(w, nullptr);
    EXPECT_EQ(w->dtype, dt);
    std::vector<float> v(w->numel);
    c.read_f32(*w, v);
    decoded.push_back(std::move(v));
  }
  const auto spec = synth_tensors(o);
  for (std::size_t i = 0; i < decoded[0].size(); ++i) {
    ASSERT_NEAR(decoded[1][i], decoded[0][i], std::abs(decoded[0][i]) * (1.0f / 256) + 1e-30f) << i;   // bf16
    ASSERT_NEAR(decoded[2][i], decoded[0][i], std::abs(decoded[0][i]) * (1.0f / 2048) + 6e-8f) << i;   // f16
  }
}

TEST(Synth, WeightsHaveOutlierInputChannels) {
  const auto dir = test::temp_dir();
  SynthOptions o;
  o.factor = 16;
  o.llm_layers = o.expert_layers = o.vision_layers = 1;
  o.dtype = DType::F32;
  write_synth_checkpoint(dir / "s.safetensors", o);
  const Checkpoint c = Checkpoint::open(dir / "s.safetensors");
  const auto* w = c.find("paligemma_with_expert.gemma_expert.model.layers.0.mlp.gate_proj.weight");
  ASSERT_NE(w, nullptr);
  const std::uint64_t rows = w->shape[0], cols = w->shape[1];
  std::vector<float> v(w->numel);
  c.read_f32(*w, v);
  std::vector<double> energy(cols, 0.0);
  for (std::uint64_t r = 0; r < rows; ++r)
    for (std::uint64_t j = 0; j < cols; ++j) energy[j] += double(v[r * cols + j]) * v[r * cols + j];
  std::vector<double> sorted = energy;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[cols / 2];
  const auto outliers = std::count_if(energy.begin(), energy.end(), [&](double e) { return e > 20 * median; });
  EXPECT_GE(outliers, 1);
  EXPECT_LE(outliers, o.outlier_channels);
  // Typical channels have unit-variance rows scaled by 1/sqrt(I): energy per channel ~ rows / I.
  EXPECT_NEAR(median, double(rows) / cols, 0.3 * double(rows) / cols);
}

TEST(Synth, RefusesBadOptions) {
  SynthOptions o;
  o.factor = 3;
  EXPECT_THROW(synth_tensors(o), Error);
  o.factor = 16;
  o.dtype = DType::I8;
  EXPECT_THROW(synth_tensors(o), Error);
  const auto dir = test::temp_dir();
  const auto r = test::run_cli({"synth", "-o", (dir / "x.safetensors").string(), "--factor", "5"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--factor: 5"), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(dir / "x.safetensors"));
}

TEST(Synth, RefusesToOverwriteWithoutForce) {
  const auto dir = test::temp_dir();
  const std::string out = (dir / "x.safetensors").string();
  ASSERT_EQ(test::run_cli({"synth", "-o", out, "--factor", "16", "--layers", "1"}).exit_code, 0);
  const auto again = test::run_cli({"synth", "-o", out, "--factor", "16", "--layers", "1"});
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("exists"), std::string::npos);
  EXPECT_EQ(test::run_cli({"synth", "-o", out, "--factor", "16", "--layers", "1", "--force"}).exit_code, 0);
}

}  // namespace
}  // namespace duquant

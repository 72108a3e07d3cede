// `duquant synth`: the embedded default checkpoint. pi0.5: its names, shapes and layout equal the
// fixture's at factor 16 with 2 layers per stack, and its bytes are those of the original command.
// GR00T N1.5: the reference's names and shapes, biases where the modules have them, the runtime's
// default selection counts, a sharded folder with its index. For both: bytes that depend neither
// on the thread count nor on the name prefix or shard count, outlier input channels, and bad
// options and occupied outputs refused.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "formats/digest.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "synth/synth.hpp"

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
  EXPECT_EQ(
      shape_of("paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.26.mlp.fc1.weight"),
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
    ASSERT_NEAR(decoded[1][i], decoded[0][i], std::abs(decoded[0][i]) * (1.0f / 256) + 1e-30f) << i;  // bf16
    ASSERT_NEAR(decoded[2][i], decoded[0][i], std::abs(decoded[0][i]) * (1.0f / 2048) + 6e-8f) << i;  // f16
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

// ---------------------------------------------------------------------------------------------
// pi0.5: the original bytes, names under a prefix, shards

// xxh128 of `synth --factor 16 --layers 2` as the command wrote it before --model, --prefix and --shards.
constexpr const char* kPi05Factor16Layers2Digest = "cb5141e6c62588a920eaa313aacd898f";

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

TEST(Synth, Pi05DefaultBytesAreTheOriginalOnes) {
  const auto dir = test::temp_dir();
  const auto out = dir / "synth.safetensors";
  const auto r = test::run_cli({"synth", "-o", out.string(), "--factor", "16", "--layers", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(xxh128_file(out), kPi05Factor16Layers2Digest);
  EXPECT_EQ(Checkpoint::open(out).files()[0].metadata.at("duquant.synth"),
            "factor=16 llm_layers=2 expert_layers=2 vision_layers=2 seed=0 dtype=BF16");
}

// Every tensor of `a` is in `b` under `prefix` + its name, with the same dtype, shape and bytes.
void expect_same_tensors(const Checkpoint& a, const Checkpoint& b, const std::string& prefix) {
  ASSERT_EQ(a.tensors().size(), b.tensors().size());
  for (std::size_t i = 0; i < a.tensors().size(); ++i) {
    const auto& ta = a.tensors()[i];
    const auto& tb = b.tensors()[i];
    ASSERT_EQ(prefix + ta.name, tb.name) << "tensor " << i;
    EXPECT_EQ(ta.dtype, tb.dtype) << tb.name;
    EXPECT_EQ(ta.shape, tb.shape) << tb.name;
    const auto ba = a.bytes(ta), bb = b.bytes(tb);
    ASSERT_TRUE(std::equal(ba.begin(), ba.end(), bb.begin(), bb.end())) << tb.name << ": values differ";
  }
}

TEST(Synth, Pi05PrefixKeepsEveryValue) {
  const auto dir = test::temp_dir();
  const std::string plain = (dir / "plain.safetensors").string(), lerobot = (dir / "lerobot.safetensors").string();
  ASSERT_EQ(test::run_cli({"synth", "-o", plain, "--factor", "16", "--layers", "1"}).exit_code, 0);
  const auto r = test::run_cli({"synth", "-o", lerobot, "--factor", "16", "--layers", "1", "--prefix", "model."});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("prefix 'model.'"), std::string::npos) << r.out;
  const Checkpoint a = Checkpoint::open(plain), b = Checkpoint::open(lerobot);
  expect_same_tensors(a, b, "model.");
  EXPECT_NE(b.find("model.paligemma_with_expert.gemma_expert.model.layers.0.mlp.down_proj.weight"), nullptr);
  EXPECT_NE(b.files()[0].metadata.at("duquant.synth").find("model=pi05 outliers=4 prefix=model. shards=1"),
            std::string::npos);
}

TEST(Synth, Pi05WithShardsWritesAFolderOfTheSameTensors) {
  const auto dir = test::temp_dir();
  const std::string file = (dir / "one.safetensors").string(), folder = (dir / "three").string();
  ASSERT_EQ(test::run_cli({"synth", "-o", file, "--factor", "16", "--layers", "1"}).exit_code, 0);
  const auto r = test::run_cli({"synth", "-o", folder, "--factor", "16", "--layers", "1", "--shards", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("3 shards"), std::string::npos) << r.out;
  const Checkpoint sharded = Checkpoint::open(folder);
  ASSERT_EQ(sharded.files().size(), 3u);
  EXPECT_EQ(sharded.files()[2].path.filename(), "model-00003-of-00003.safetensors");
  expect_same_tensors(Checkpoint::open(file), sharded, "");
}

// ---------------------------------------------------------------------------------------------
// GR00T N1.5

SynthOptions gr00t(int factor = 16) {
  SynthOptions o;
  o.model = SynthModel::gr00t_n15;
  o.factor = factor;
  return o;
}

using Shape = std::vector<std::uint64_t>;

Shape shape_in(const std::vector<formats::TensorSpec>& specs, const std::string& name) {
  for (const auto& t : specs)
    if (t.name == name) return t.shape;
  ADD_FAILURE() << "no tensor " << name;
  return {};
}

const std::string kLm = "backbone.eagle_model.language_model.model.layers.";
const std::string kVit = "backbone.eagle_model.vision_model.vision_model.";
const std::string kDit = "action_head.model.transformer_blocks.";
const std::string kVl = "action_head.vl_self_attention.transformer_blocks.";

TEST(Synth, Gr00tFullSizeShapesAreTheReferences) {
  const auto specs = synth_tensors(gr00t(1));  // only the list: nothing is written
  auto at = [&](const std::string& name) { return shape_in(specs, name); };
  EXPECT_EQ(at("backbone.eagle_model.language_model.model.embed_tokens.weight"), (Shape{151680, 2048}));
  EXPECT_EQ(at(kLm + "11.self_attn.q_proj.weight"), (Shape{2048, 2048}));
  EXPECT_EQ(at(kLm + "11.self_attn.k_proj.weight"), (Shape{1024, 2048}));
  EXPECT_EQ(at(kLm + "11.self_attn.v_proj.weight"), (Shape{1024, 2048}));
  EXPECT_EQ(at(kLm + "11.self_attn.o_proj.weight"), (Shape{2048, 2048}));
  EXPECT_EQ(at(kLm + "11.self_attn.q_norm.weight"), (Shape{128}));
  EXPECT_EQ(at(kLm + "11.mlp.gate_proj.weight"), (Shape{6144, 2048}));
  EXPECT_EQ(at(kLm + "11.mlp.down_proj.weight"), (Shape{2048, 6144}));
  EXPECT_EQ(at("backbone.eagle_model.language_model.lm_head.weight"), (Shape{151680, 2048}));
  EXPECT_EQ(at(kVit + "embeddings.patch_embedding.weight"), (Shape{1152, 3, 14, 14}));
  EXPECT_EQ(at(kVit + "embeddings.position_embedding.weight"), (Shape{1024, 1152}));
  EXPECT_EQ(at(kVit + "encoder.layers.26.mlp.fc1.weight"), (Shape{4304, 1152}));
  EXPECT_EQ(at("backbone.eagle_model.mlp1.0.weight"), (Shape{4608}));
  EXPECT_EQ(at("backbone.eagle_model.mlp1.1.weight"), (Shape{2048, 4608}));
  EXPECT_EQ(at("backbone.eagle_model.mlp1.3.weight"), (Shape{2048, 2048}));
  EXPECT_EQ(at("action_head.model.timestep_encoder.timestep_embedder.linear_1.weight"), (Shape{1536, 256}));
  EXPECT_EQ(at(kDit + "0.norm1.linear.weight"), (Shape{3072, 1536}));
  EXPECT_EQ(at(kDit + "0.attn1.to_k.weight"), (Shape{1536, 2048}));  // even: cross-attends to VL tokens
  EXPECT_EQ(at(kDit + "15.attn1.to_k.weight"), (Shape{1536, 1536}));
  EXPECT_EQ(at(kDit + "15.ff.net.0.proj.weight"), (Shape{6144, 1536}));
  EXPECT_EQ(at(kDit + "15.ff.net.2.weight"), (Shape{1536, 6144}));
  EXPECT_EQ(at("action_head.model.proj_out_1.weight"), (Shape{3072, 1536}));
  EXPECT_EQ(at("action_head.model.proj_out_2.weight"), (Shape{1024, 1536}));
  EXPECT_EQ(at(kVl + "3.attn1.to_v.weight"), (Shape{2048, 2048}));
  EXPECT_EQ(at(kVl + "3.ff.net.0.proj.weight"), (Shape{8192, 2048}));
  EXPECT_EQ(at("action_head.state_encoder.layer1.W"), (Shape{32, 64, 1024}));
  EXPECT_EQ(at("action_head.state_encoder.layer2.W"), (Shape{32, 1024, 1536}));
  EXPECT_EQ(at("action_head.action_encoder.W2.W"), (Shape{32, 3072, 1536}));
  EXPECT_EQ(at("action_head.action_decoder.layer2.W"), (Shape{32, 1024, 32}));
  EXPECT_EQ(at("action_head.action_decoder.layer2.b"), (Shape{32, 32}));
  EXPECT_EQ(at("action_head.position_embedding.weight"), (Shape{1024, 1536}));
  EXPECT_EQ(at("action_head.future_tokens.weight"), (Shape{32, 1536}));
}

TEST(Synth, Gr00tFactor16TensorSetAndShapes) {
  const auto specs = synth_tensors(gr00t());
  std::set<std::string> names;
  for (const auto& t : specs) EXPECT_TRUE(names.insert(t.name).second) << "twice: " << t.name;
  const std::size_t vision = 3 + 27 * 16 + 2;    // embeddings; 6 linears + 2 LayerNorms per layer; post_layernorm
  const std::size_t llm = 1 + 12 * 11 + 2;       // embed_tokens; 7 linears + 2 qk-norms + 2 norms; norm, lm_head
  const std::size_t connector = 6;               // mlp1.{0,1,3}.{weight,bias}
  const std::size_t dit = 4 + 16 * 14 + 4;       // timestep linear_1/2; 7 linears with bias; proj_out_1/2
  const std::size_t rest = 14 + 1 + 4 * 16 + 1;  // 7 category-specific W/b; future_tokens; VL blocks; positions
  EXPECT_EQ(specs.size(), vision + llm + connector + dit + rest);
  auto at = [&](const std::string& name) { return shape_in(specs, name); };
  EXPECT_EQ(at(kLm + "0.self_attn.q_proj.weight"), (Shape{2048 / 16, 2048 / 16}));
  EXPECT_EQ(at(kLm + "0.self_attn.k_proj.weight"), (Shape{1024 / 16, 2048 / 16}));
  EXPECT_EQ(at(kLm + "0.self_attn.k_norm.weight"), (Shape{128 / 16}));
  EXPECT_EQ(at(kLm + "0.mlp.up_proj.weight"), (Shape{6144 / 16, 2048 / 16}));
  EXPECT_EQ(at("backbone.eagle_model.language_model.model.embed_tokens.weight"), (Shape{151680 / 16, 2048 / 16}));
  EXPECT_EQ(at(kVit + "embeddings.patch_embedding.weight"), (Shape{1152 / 16, 3, 14, 14}));
  EXPECT_EQ(at(kVit + "encoder.layers.0.mlp.fc2.weight"), (Shape{1152 / 16, 4304 / 16}));
  EXPECT_EQ(at(kDit + "2.attn1.to_k.weight"), (Shape{1536 / 16, 2048 / 16}));
  EXPECT_EQ(at(kDit + "2.attn1.to_v.weight"), (Shape{1536 / 16, 2048 / 16}));
  EXPECT_EQ(at(kDit + "3.attn1.to_k.weight"), (Shape{1536 / 16, 1536 / 16}));
  EXPECT_EQ(at(kDit + "3.attn1.to_v.weight"), (Shape{1536 / 16, 1536 / 16}));
  EXPECT_EQ(at(kDit + "3.attn1.to_q.weight"), (Shape{1536 / 16, 1536 / 16}));
  EXPECT_EQ(at(kDit + "3.ff.net.0.proj.weight"), (Shape{6144 / 16, 1536 / 16}));
  EXPECT_EQ(at("action_head.action_encoder.W1.W"), (Shape{32, 32, 1536 / 16}));
  EXPECT_EQ(at("action_head.action_encoder.W3.W"), (Shape{32, 1536 / 16, 1536 / 16}));
  EXPECT_EQ(at("action_head.future_tokens.weight"), (Shape{32, 1536 / 16}));
  EXPECT_EQ(at(kVl + "0.norm1.weight"), (Shape{2048 / 16}));
  for (const auto& t : specs) {
    if (t.name.find(".state_encoder.") != std::string::npos || t.name.find(".action_encoder.") != std::string::npos ||
        t.name.find(".action_decoder.") != std::string::npos) {
      const bool w = t.name.size() > 2 && t.name.compare(t.name.size() - 2, 2, ".W") == 0;
      EXPECT_EQ(t.shape.size(), w ? 3u : 2u) << t.name;  // category-specific: never a 2-D `.weight`
    }
  }
}

TEST(Synth, Gr00tBiasesExactlyWhereTheModulesHaveThem) {
  const auto specs = synth_tensors(gr00t());
  std::set<std::string> names;
  for (const auto& t : specs) names.insert(t.name);
  const std::set<std::string> tables{
      "backbone.eagle_model.language_model.model.embed_tokens", "backbone.eagle_model.language_model.lm_head",
      kVit + "embeddings.position_embedding", "action_head.position_embedding", "action_head.future_tokens"};
  std::size_t linears = 0;
  for (const auto& t : specs) {
    if (t.shape.size() != 2 || t.name.size() < 7 || t.name.compare(t.name.size() - 7, 7, ".weight") != 0) continue;
    const std::string module = t.name.substr(0, t.name.size() - 7);
    const bool language_model = module.rfind("backbone.eagle_model.language_model.", 0) == 0;
    const bool bias = names.count(module + ".bias") == 1;
    if (tables.count(module) == 1 || language_model) {
      EXPECT_FALSE(bias) << module;  // embedding tables, lm_head and the language model's projections
    } else {
      EXPECT_TRUE(bias) << module;  // vision tower, connector, every linear of the action head
      ++linears;
    }
  }
  EXPECT_EQ(linears, 27u * 6 + 2 + 2 + 16 * 7 + 2 + 4 * 6);
  for (const auto& n : names) {  // and no bias without its weight
    if (n.size() > 5 && n.compare(n.size() - 5, 5, ".bias") == 0) {
      EXPECT_EQ(names.count(n.substr(0, n.size() - 5) + ".weight"), 1u) << n;
    }
  }
}

TEST(Synth, Gr00tRuntimeDefaultsSelect180AndTheVisionTowerHas81Qkv) {
  // The GR00T port's default include/exclude (reference section 2) over the 2-D `.weight` tensors.
  const std::regex include(
      R"(.*(?:backbone\.eagle_model\.language_model\..*\.(?:q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|action_head\.model\..*(?:attn1\.to_(?:q|k|v)|attn1\.to_out\.0|ff\.net\.(?:0\.proj|2))).*)");
  const std::regex exclude(
      R"((?:^|\.)(?:vision_model|vision|radio|norm|ln|layernorm|embed|lm_head|timestep_encoder|state_encoder|action_encoder|action_decoder|future_tokens|vl_self_attention)(?:\.|$))");
  const std::regex vision_qkv(R"(vision_model\..*\.self_attn\.(q|k|v)_proj$)");
  std::size_t llm = 0, dit = 0, qkv = 0;
  for (const auto& t : synth_tensors(gr00t())) {
    if (t.shape.size() != 2 || t.name.size() < 7 || t.name.compare(t.name.size() - 7, 7, ".weight") != 0) continue;
    const std::string module = t.name.substr(0, t.name.size() - 7);
    if (std::regex_search(module, vision_qkv)) ++qkv;
    if (!std::regex_search(module, include) || std::regex_search(module, exclude)) continue;
    if (module.find("action_head") != std::string::npos && module.rfind("action_head.model.", 0) != 0) continue;
    (module.rfind("action_head.model.", 0) == 0 ? dit : llm)++;
  }
  EXPECT_EQ(llm, 84u);
  EXPECT_EQ(dit, 96u);
  EXPECT_EQ(qkv, 81u);
}

// The index of a folder checkpoint, parsed.
nlohmann::json read_index(const std::filesystem::path& folder) {
  return nlohmann::json::parse(test::read_text(folder / "model.safetensors.index.json"));
}

TEST(Synth, Gr00tFolderOpensAndItsIndexListsEveryTensor) {
  const auto dir = test::temp_dir();
  const auto folder = dir / "gr00t";
  const auto r = test::run_cli({"synth", "--model", "gr00t-n1.5", "--factor", "16", "-o", folder.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("gr00t-n1.5, factor 16, 12 LLM / 27 vision / 16 DiT / 4 VL layers, BF16, 2 shards, no prefix"),
            std::string::npos)
      << r.out;
  std::set<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(folder)) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
                                          "model.safetensors.index.json"}));

  const Checkpoint c = Checkpoint::open(folder);
  const auto specs = synth_tensors(gr00t());
  ASSERT_EQ(c.files().size(), 2u);
  ASSERT_EQ(c.tensors().size(), specs.size());
  const nlohmann::json index = read_index(folder);
  const auto& weight_map = index.at("weight_map");
  EXPECT_EQ(weight_map.size(), specs.size());
  std::uint64_t total = 0;
  for (std::size_t i = 0; i < specs.size(); ++i) {
    const auto& t = c.tensors()[i];
    EXPECT_EQ(t.name, specs[i].name) << "tensor " << i;  // storage order is module order, across shards
    EXPECT_EQ(t.shape, specs[i].shape) << t.name;
    EXPECT_EQ(t.dtype, DType::BF16) << t.name;
    ASSERT_TRUE(weight_map.contains(t.name)) << t.name;
    EXPECT_EQ(weight_map.at(t.name).get<std::string>(), c.files()[t.file].path.filename().string()) << t.name;
    total += t.nbytes;
  }
  EXPECT_EQ(index.at("metadata").at("total_size").get<std::uint64_t>(), total);
  for (const auto& f : c.files())
    EXPECT_EQ(f.metadata.at("duquant.synth"),
              "model=gr00t-n1.5 factor=16 llm_layers=12 vision_layers=27 dit_layers=16 vl_layers=4 seed=0 "
              "dtype=BF16 outliers=4 prefix= shards=2");
  // Split by bytes: neither shard holds less than a third of the data.
  EXPECT_GT(std::filesystem::file_size(folder / "model-00001-of-00002.safetensors"), total / 3);
  EXPECT_GT(std::filesystem::file_size(folder / "model-00002-of-00002.safetensors"), total / 3);
}

TEST(Synth, ShardStartsSplitTheTensorsByBytes) {
  const auto specs = synth_tensors(gr00t());
  for (int shards : {1, 2, 3, 7, 99}) {
    const auto starts = synth_shard_starts(specs, shards);
    ASSERT_EQ(starts.size(), static_cast<std::size_t>(shards));
    EXPECT_EQ(starts[0], 0u);
    for (std::size_t k = 1; k < starts.size(); ++k) EXPECT_LT(starts[k - 1], starts[k]) << shards << " shards";
    EXPECT_LT(starts.back(), specs.size());
  }
  std::vector<formats::TensorSpec> three(specs.begin(), specs.begin() + 3);
  EXPECT_EQ(synth_shard_starts(three, 3), (std::vector<std::size_t>{0, 1, 2}));
  EXPECT_THROW(synth_shard_starts(three, 4), Error);
}

TEST(Synth, Gr00tShardsOption) {
  const auto dir = test::temp_dir();
  for (int shards : {1, 3}) {
    const auto folder = dir / fmt::format("s{}", shards);
    const auto r = test::run_cli({"synth", "--model", "gr00t-n1.5", "--factor", "16", "--layers", "1", "--shards",
                                  std::to_string(shards), "-o", folder.string()});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    const Checkpoint c = Checkpoint::open(folder);
    ASSERT_EQ(c.files().size(), static_cast<std::size_t>(shards));
    for (int k = 1; k <= shards; ++k)
      EXPECT_EQ(c.files()[static_cast<std::size_t>(k - 1)].path.filename(), synth_shard_name(k, shards));
    EXPECT_TRUE(std::filesystem::exists(folder / "model.safetensors.index.json"));
  }
  EXPECT_EQ(synth_shard_name(2, 3), "model-00002-of-00003.safetensors");
}

// Every file of a folder, name -> bytes.
std::map<std::string, std::string> folder_bytes(const std::filesystem::path& folder) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(folder))
    out[e.path().filename().string()] = test::read_text(e.path());
  return out;
}

TEST(Synth, Gr00tBytesDoNotDependOnTheRunOrTheThreadCount) {
  const auto dir = test::temp_dir();
  auto run = [&](const std::string& name, const std::string& threads) {
    const auto r = test::run_cli({"synth", "--model", "gr00t-n1.5", "--factor", "16", "--layers", "2", "--dtype", "f16",
                                  "--shards", "3", "-o", (dir / name).string()},
                                 {"OMP_NUM_THREADS=" + threads});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    return folder_bytes(dir / name);
  };
  const auto one = run("one", "1"), two = run("two", "2"), again = run("again", "2");
  ASSERT_EQ(one.size(), 4u);
  EXPECT_TRUE(one == two) << "synth output differs between 1 and 2 threads";
  EXPECT_TRUE(two == again) << "synth output differs between two runs";
}

TEST(Synth, Gr00tPrefixKeepsEveryValue) {
  const auto dir = test::temp_dir();
  SynthOptions o = gr00t();
  o.llm_layers = o.vision_layers = o.dit_layers = o.vl_layers = 2;
  write_synth_checkpoint(dir / "plain", o);
  o.prefix = "_groot_model.";
  o.shards = 3;  // neither the prefix nor the shard count changes a value
  write_synth_checkpoint(dir / "lerobot", o);
  const Checkpoint a = Checkpoint::open(dir / "plain"), b = Checkpoint::open(dir / "lerobot");
  expect_same_tensors(a, b, "_groot_model.");
  EXPECT_NE(b.find("_groot_model.action_head.model.transformer_blocks.1.ff.net.2.weight"), nullptr);
  EXPECT_TRUE(read_index(dir / "lerobot").at("weight_map").contains("_groot_model.action_head.future_tokens.weight"));
  EXPECT_NE(b.files()[0].metadata.at("duquant.synth").find("prefix=_groot_model. shards=3"), std::string::npos);
}

TEST(Synth, Gr00tValuesAreShapedLikeTheirModules) {
  const auto dir = test::temp_dir();
  SynthOptions o = gr00t();
  o.llm_layers = o.vision_layers = o.dit_layers = o.vl_layers = 1;
  o.dtype = DType::F32;
  write_synth_checkpoint(dir / "g", o);
  const Checkpoint c = Checkpoint::open(dir / "g");
  auto rms = [&](const std::string& name) {
    const auto* t = c.find(name);
    EXPECT_NE(t, nullptr) << name;
    if (t == nullptr) return 0.0;
    std::vector<float> v(t->numel);
    c.read_f32(*t, v);
    double s = 0;
    for (float x : v) s += double(x) * x;
    return std::sqrt(s / double(v.size()));
  };
  // A category-specific W [E, in, out] is scaled by its `in`, like a linear weight by its columns.
  EXPECT_NEAR(rms("action_head.action_encoder.W3.W"), 1.0 / std::sqrt(96.0), 0.1 / std::sqrt(96.0));
  EXPECT_NEAR(rms("action_head.action_encoder.W3.b"), 0.02, 0.005);  // a bias, [E, out]
  EXPECT_GT(rms(kDit + "0.attn1.to_q.weight"), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Refusals

TEST(Synth, BadModelPrefixShardsAndModelOptionsAreUsageErrors) {
  const auto dir = test::temp_dir();
  const std::string out = (dir / "x").string();
  struct Case {
    std::vector<std::string> args;
    std::string message;
  };
  const std::vector<Case> cases{
      {{"--model", "gr00t"}, "--model: 'gr00t' is not pi05 or gr00t-n1.5"},
      {{"--model", "pi0"}, "--model: 'pi0'"},
      {{"--prefix", "model"}, "--prefix: 'model' must end in '.'"},
      {{"--prefix", "my model."}, "--prefix: 'my model.' holds byte 0x20"},
      {{"--prefix", "mod\xc3\xa9l."}, "holds byte 0xc3"},
      {{"--prefix", ""}, "--prefix: must not be empty"},
      {{"--prefix", ".model."}, "--prefix: '.model.' has an empty name part"},
      {{"--prefix", "a..b."}, "has an empty name part"},
      {{"--shards", "0"}, "--shards: 0 is not a count from 1 to 99"},
      {{"--shards", "100"}, "--shards: 100"},
      {{"--model", "gr00t-n1.5", "--expert-layers", "2"}, "--expert-layers: applies to --model pi05 only"},
      {{"--dit-layers", "2"}, "--dit-layers: applies to --model gr00t-n1.5 only"},
      {{"--vl-layers", "2"}, "--vl-layers: applies to --model gr00t-n1.5 only"},
      {{"--model", "gr00t-n1.5", "--factor", "3"}, "--factor: 3 does not divide every GR00T N1.5 width"},
      {{"--model", "gr00t-n1.5", "--dit-layers", "1001"}, "--dit-layers: 1001 is not a layer count"},
      {{"--model", "gr00t-n1.5", "--layers", "0", "--shards", "99", "--vision-layers", "0"}, "--shards: 99 shards for"},
  };
  for (const auto& c : cases) {
    std::vector<std::string> args{"synth", "-o", out};
    args.insert(args.end(), c.args.begin(), c.args.end());
    if (std::find(args.begin(), args.end(), "--factor") == args.end()) args.insert(args.end(), {"--factor", "16"});
    const auto r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << c.message << "\n" << r.err;
    EXPECT_NE(r.err.find(c.message), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(out)) << c.message;
  }
}

TEST(Synth, ExistingFolderIsRefusedWithoutForce) {
  const auto dir = test::temp_dir();
  const auto folder = dir / "gr00t";
  auto synth = [&](std::vector<std::string> extra) {
    std::vector<std::string> args{"synth",    "--model", "gr00t-n1.5", "--factor",     "16",
                                  "--layers", "1",       "-o",         folder.string()};
    args.insert(args.end(), extra.begin(), extra.end());
    return test::run_cli(args);
  };
  std::filesystem::create_directories(folder);
  ASSERT_EQ(synth({"--shards", "3"}).exit_code, 0);  // an empty folder is fine
  const auto again = synth({});
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find(folder.string() + ": folder exists and is not empty"), std::string::npos) << again.err;
  EXPECT_EQ(std::filesystem::file_size(folder / "model-00003-of-00003.safetensors") > 0, true);  // untouched

  // --force replaces the checkpoint: the earlier third shard goes, other files stay.
  write_text(folder / "README.md", "mine\n");
  const auto forced = synth({"--force"});
  ASSERT_EQ(forced.exit_code, 0) << forced.err;
  std::set<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(folder)) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"README.md", "model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors", "model.safetensors.index.json"}));
  EXPECT_EQ(Checkpoint::open(folder).files().size(), 2u);

  // A file where a folder goes, and a folder where a file goes, are refused even with --force.
  const auto file = dir / "file.safetensors";
  write_text(file, "x");
  const auto r1 = test::run_cli({"synth", "--model", "gr00t-n1.5", "--factor", "16", "-o", file.string(), "--force"});
  EXPECT_EQ(r1.exit_code, 2);
  EXPECT_NE(r1.err.find("exists and is not a folder"), std::string::npos) << r1.err;
  const auto r2 = test::run_cli({"synth", "--factor", "16", "-o", folder.string(), "--force"});
  EXPECT_EQ(r2.exit_code, 2);
  EXPECT_NE(r2.err.find("is a folder"), std::string::npos) << r2.err;
}

}  // namespace
}  // namespace duquant

// Smoothing: float32 -> binary16 rounding (exhaustive round trip, ties to even, every float against
// a nearest-half search), the groups of layers that share an input on the pi0.5 fixture and on
// hand-made checkpoints (norm kinds, missing or misshapen norms, width mismatches), the scales on
// hand-computed values (both 1e-5 clamps, alpha 0 and 1) and the smoothed weight's rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "base/elementwise.hpp"
#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "formats/safetensors_writer.hpp"
#include "math/smoothing.hpp"

namespace duquant {
namespace {

using elementwise::f16_to_f32;
using elementwise::f32_to_f16;
using formats::DType;

float bits_f(std::uint32_t b) { return elementwise::f32_from_bits(b); }

// ---------------------------------------------------------------------------------------------
// f32_to_f16

bool half_is_nan(std::uint16_t h) { return (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0; }

TEST(F32ToF16, EveryHalfRoundTrips) {
  int nans = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<std::uint16_t>(i);
    const std::uint16_t back = f32_to_f16(f16_to_f32(h));
    if (half_is_nan(h)) {
      // A NaN stays a NaN, keeps its sign and payload, and comes back quiet.
      ++nans;
      EXPECT_EQ(back, h | 0x200u) << std::hex << i;
    } else {
      EXPECT_EQ(back, h) << std::hex << i;
    }
  }
  EXPECT_EQ(nans, 2 * 1023);
}

TEST(F32ToF16, TiesGoToEven) {
  // Around 1 (half ulp 2^-10): 1 + 2^-11 is a tie between 0x3c00 (even) and 0x3c01.
  EXPECT_EQ(f32_to_f16(1.0f + 0x1p-11f), 0x3c00u);
  EXPECT_EQ(f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02u);  // tie between 0x3c01 and 0x3c02 (even)
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + 0x1p-11f, 2.0f)), 0x3c01u);
  EXPECT_EQ(f32_to_f16(std::nextafter(1.0f + 3 * 0x1p-11f, 0.0f)), 0x3c01u);
  EXPECT_EQ(f32_to_f16(-(1.0f + 0x1p-11f)), 0xbc00u);
  EXPECT_EQ(f32_to_f16(-(1.0f + 3 * 0x1p-11f)), 0xbc02u);
  // Carry into the exponent: 2 - 2^-12 is the tie between 0x3bff (odd) and 2.0 (0x4000).
  EXPECT_EQ(f32_to_f16(2.0f - 0x1p-12f), 0x4000u);
  // Top of the range: 65504 is the largest half; 65520 is the tie with 65536 -> Inf.
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bffu);
  EXPECT_EQ(f32_to_f16(65519.99609375f), 0x7bffu);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00u);
  EXPECT_EQ(f32_to_f16(-65520.0f), 0xfc00u);
  EXPECT_EQ(f32_to_f16(1e30f), 0x7c00u);
  EXPECT_EQ(f32_to_f16(std::numeric_limits<float>::infinity()), 0x7c00u);
  EXPECT_EQ(f32_to_f16(-std::numeric_limits<float>::infinity()), 0xfc00u);
  // Subnormals (units of 2^-24): 2^-25 ties to 0, 3·2^-25 ties to 2 (even), just above 2^-25 is 1.
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0x0000u);
  EXPECT_EQ(f32_to_f16(-0x1p-25f), 0x8000u);
  EXPECT_EQ(f32_to_f16(std::nextafter(0x1p-25f, 1.0f)), 0x0001u);
  EXPECT_EQ(f32_to_f16(3 * 0x1p-25f), 0x0002u);
  EXPECT_EQ(f32_to_f16(5 * 0x1p-25f), 0x0002u);  // tie between 2 (even) and 3
  EXPECT_EQ(f32_to_f16(0x1p-24f), 0x0001u);
  EXPECT_EQ(f32_to_f16(1e-30f), 0x0000u);
  // Largest subnormal + half a unit is the tie between 0x03ff (odd) and the smallest normal.
  EXPECT_EQ(f32_to_f16(1023.5f * 0x1p-24f), 0x0400u);
  EXPECT_EQ(f32_to_f16(1022.5f * 0x1p-24f), 0x03feu);
  EXPECT_EQ(f32_to_f16(0x1p-14f), 0x0400u);
  // Zeros keep their sign; NaN stays NaN.
  EXPECT_EQ(f32_to_f16(0.0f), 0x0000u);
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000u);
  EXPECT_TRUE(half_is_nan(f32_to_f16(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(half_is_nan(f32_to_f16(bits_f(0x7f800001u))));  // payload only in the dropped bits
  EXPECT_TRUE(half_is_nan(f32_to_f16(bits_f(0xff800001u))));
  EXPECT_EQ(f32_to_f16(bits_f(0xff800001u)) & 0x8000u, 0x8000u);
}

// The nearest binary16 to |f| by binary search over the 0x7c00 finite non-negative halves (in
// increasing order as integers), ties to the even code; Inf from 65520 on.
std::uint16_t nearest_half_reference(float f) {
  const double a = std::fabs(static_cast<double>(f));
  const auto sign = static_cast<std::uint16_t>(std::signbit(f) ? 0x8000u : 0u);
  if (a >= 65520.0) return sign | 0x7c00u;
  std::uint32_t lo = 0, hi = 0x7bffu;  // invariant: value(lo) <= a
  while (lo < hi) {
    const std::uint32_t mid = (lo + hi + 1) / 2;
    if (static_cast<double>(f16_to_f32(static_cast<std::uint16_t>(mid))) <= a)
      lo = mid;
    else
      hi = mid - 1;
  }
  if (lo == 0x7bffu) return sign | 0x7bffu;  // between 65504 and the Inf threshold
  const double below = f16_to_f32(static_cast<std::uint16_t>(lo));
  const double above = f16_to_f32(static_cast<std::uint16_t>(lo + 1));
  const double d_below = a - below, d_above = above - a;
  std::uint32_t pick = d_below < d_above ? lo : d_above < d_below ? lo + 1 : ((lo & 1u) == 0 ? lo : lo + 1);
  return static_cast<std::uint16_t>(sign | pick);
}

TEST(F32ToF16, MatchesTheNearestHalfEverywhere) {
  int checked = 0;
  // A stride through every float bit pattern (all exponents, both signs)...
  for (std::uint64_t b = 0; b < (std::uint64_t{1} << 32); b += 4093) {
    const float f = bits_f(static_cast<std::uint32_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), nearest_half_reference(f)) << std::hex << b;
    ++checked;
  }
  // ...and, around every midpoint between adjacent halves, the midpoint and its float neighbours.
  for (std::uint32_t h = 0; h < 0x7bffu; ++h) {
    const double mid = (static_cast<double>(f16_to_f32(static_cast<std::uint16_t>(h))) +
                        f16_to_f32(static_cast<std::uint16_t>(h + 1))) /
                       2;
    const auto m = static_cast<float>(mid);
    ASSERT_EQ(static_cast<double>(m), mid);  // every midpoint is a float
    for (float f : {std::nextafter(m, 0.0f), m, std::nextafter(m, 1e9f)}) {
      ASSERT_EQ(f32_to_f16(f), nearest_half_reference(f)) << f;
      ASSERT_EQ(f32_to_f16(-f), nearest_half_reference(-f)) << -f;
      checked += 2;
    }
  }
  EXPECT_GT(checked, 1000000);
}

// ---------------------------------------------------------------------------------------------
// smoothing_groups on the fixture

const std::string kLm = "paligemma_with_expert.paligemma.model.language_model.layers.";
const std::string kExpert = "paligemma_with_expert.gemma_expert.model.layers.";
const std::string kVision = "paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.";

std::vector<SelectedLayer> select_all(const std::vector<LinearLayer>& linears) {
  std::vector<SelectedLayer> s;
  for (const LinearLayer& l : linears) s.push_back({&l, 4});
  return s;
}

std::vector<SelectedLayer> select_named(const std::vector<LinearLayer>& linears,
                                        const std::vector<std::string>& names) {
  std::vector<SelectedLayer> s;
  for (const std::string& n : names) {
    const LinearLayer* found = nullptr;
    for (const LinearLayer& l : linears)
      if (l.name == n) found = &l;
    EXPECT_NE(found, nullptr) << n;
    if (found != nullptr) s.push_back({found, 4});
  }
  return s;
}

const SmoothGroup* group(const std::vector<SmoothGroup>& groups, const std::string& key) {
  for (const SmoothGroup& g : groups)
    if (g.key == key) return &g;
  return nullptr;
}

void expect_group(const std::vector<SmoothGroup>& groups, const std::string& key,
                  const std::vector<std::string>& layers, std::optional<NormKind> norm, const std::string& weight,
                  const std::string& bias) {
  const SmoothGroup* g = group(groups, key);
  ASSERT_NE(g, nullptr) << key;
  EXPECT_EQ(g->layers, layers) << key;
  EXPECT_EQ(g->norm, norm) << key;
  EXPECT_EQ(g->norm_weight, weight) << key;
  EXPECT_EQ(g->norm_bias, bias) << key;
}

class FixtureGroups : public ::testing::Test {
 protected:
  formats::Checkpoint ckpt = formats::Checkpoint::open(test::tiny_checkpoint());
  std::vector<LinearLayer> linears = find_linear_layers(ckpt);
};

TEST_F(FixtureGroups, LanguageModelLayer) {
  const auto groups = smoothing_groups(ckpt, linears, select_all(linears));
  const std::string b = kLm + "0";
  expect_group(groups, b + ".input_layernorm",
               {b + ".self_attn.q_proj", b + ".self_attn.k_proj", b + ".self_attn.v_proj"}, NormKind::gemma_rms,
               b + ".input_layernorm.weight", "");
  expect_group(groups, b + ".post_attention_layernorm", {b + ".mlp.gate_proj", b + ".mlp.up_proj"}, NormKind::gemma_rms,
               b + ".post_attention_layernorm.weight", "");
  expect_group(groups, b + ".self_attn.o_proj", {b + ".self_attn.o_proj"}, std::nullopt, "", "");
  expect_group(groups, b + ".mlp.down_proj", {b + ".mlp.down_proj"}, std::nullopt, "", "");
}

TEST_F(FixtureGroups, ActionExpertLayerHasAdaptiveNorms) {
  const auto groups = smoothing_groups(ckpt, linears, select_all(linears));
  const std::string b = kExpert + "0";
  expect_group(groups, b + ".input_layernorm",
               {b + ".self_attn.q_proj", b + ".self_attn.k_proj", b + ".self_attn.v_proj"}, NormKind::ada_rms,
               b + ".input_layernorm.dense.weight", b + ".input_layernorm.dense.bias");
  expect_group(groups, b + ".post_attention_layernorm", {b + ".mlp.gate_proj", b + ".mlp.up_proj"}, NormKind::ada_rms,
               b + ".post_attention_layernorm.dense.weight", b + ".post_attention_layernorm.dense.bias");
  expect_group(groups, b + ".self_attn.o_proj", {b + ".self_attn.o_proj"}, std::nullopt, "", "");
  expect_group(groups, b + ".mlp.down_proj", {b + ".mlp.down_proj"}, std::nullopt, "", "");
  // The modulation's dense is itself a linear: alone, reading the condition, not x.
  expect_group(groups, b + ".input_layernorm.dense", {b + ".input_layernorm.dense"}, std::nullopt, "", "");
}

TEST_F(FixtureGroups, VisionLayerHasLayerNorms) {
  const auto groups = smoothing_groups(ckpt, linears, select_all(linears));
  const std::string b = kVision + "0";
  // The fixture stores layer_norm1/2 weights without biases: layer_norm with an empty bias name.
  expect_group(groups, b + ".layer_norm1", {b + ".self_attn.q_proj", b + ".self_attn.k_proj", b + ".self_attn.v_proj"},
               NormKind::layer_norm, b + ".layer_norm1.weight", "");
  expect_group(groups, b + ".layer_norm2", {b + ".mlp.fc1"}, NormKind::layer_norm, b + ".layer_norm2.weight", "");
  expect_group(groups, b + ".self_attn.out_proj", {b + ".self_attn.out_proj"}, std::nullopt, "", "");
  expect_group(groups, b + ".mlp.fc2", {b + ".mlp.fc2"}, std::nullopt, "", "");
}

TEST_F(FixtureGroups, EveryLinearInExactlyOneGroupInSelectionOrder) {
  ASSERT_EQ(linears.size(), 49u);
  const auto groups = smoothing_groups(ckpt, linears, select_all(linears));
  // Per LM layer 4 groups, per vision layer 4, per expert layer 6 (incl. the two dense), the
  // projector and 4 top-level linears.
  EXPECT_EQ(groups.size(), 2 * 4 + 2 * 4 + 2 * 6 + 1 + 4);
  std::map<std::string, int> seen;
  std::vector<std::string> flat;
  for (const SmoothGroup& g : groups)
    for (const std::string& l : g.layers) {
      ++seen[l];
      flat.push_back(l);
    }
  for (const LinearLayer& l : linears) EXPECT_EQ(seen[l.name], 1) << l.name;
  // All layers selected in checkpoint order, and groups contiguous in it: flattening the groups
  // gives back the checkpoint order.
  std::vector<std::string> order;
  for (const LinearLayer& l : linears) order.push_back(l.name);
  EXPECT_EQ(flat, order);
  EXPECT_EQ(groups.front().key, kLm + "0.input_layernorm");
  EXPECT_EQ(groups.back().key, linears.back().name);
}

TEST_F(FixtureGroups, OneSelectedMemberBringsTheWholeGroup) {
  const std::string b = kLm + "1";
  const auto groups = smoothing_groups(ckpt, linears, select_named(linears, {b + ".self_attn.q_proj"}));
  ASSERT_EQ(groups.size(), 1u);
  expect_group(groups, b + ".input_layernorm",
               {b + ".self_attn.q_proj", b + ".self_attn.k_proj", b + ".self_attn.v_proj"}, NormKind::gemma_rms,
               b + ".input_layernorm.weight", "");
}

TEST_F(FixtureGroups, OrderOfFirstSelectedMemberAndNoDuplicates) {
  const std::string e = kExpert + "1", l = kLm + "0";
  // Selection order, not checkpoint order, decides the order of groups; members stay in checkpoint order.
  const auto groups =
      smoothing_groups(ckpt, linears,
                       select_named(linears, {e + ".mlp.up_proj", l + ".self_attn.v_proj", e + ".mlp.down_proj",
                                              e + ".mlp.gate_proj", l + ".self_attn.k_proj", "action_in_proj"}));
  ASSERT_EQ(groups.size(), 4u);
  EXPECT_EQ(groups[0].key, e + ".post_attention_layernorm");
  EXPECT_EQ(groups[0].layers, (std::vector<std::string>{e + ".mlp.gate_proj", e + ".mlp.up_proj"}));
  EXPECT_EQ(groups[1].key, l + ".input_layernorm");
  EXPECT_EQ(groups[1].layers.size(), 3u);
  EXPECT_EQ(groups[2].key, e + ".mlp.down_proj");
  EXPECT_EQ(groups[3].key, "action_in_proj");
  EXPECT_EQ(groups[3].layers, std::vector<std::string>{"action_in_proj"});
  EXPECT_FALSE(groups[3].norm.has_value());
}

TEST_F(FixtureGroups, EmptySelectionHasNoGroup) { EXPECT_TRUE(smoothing_groups(ckpt, linears, {}).empty()); }

// ---------------------------------------------------------------------------------------------
// smoothing_groups on hand-made checkpoints

struct Tensor {
  std::string name;
  DType dtype;
  std::vector<std::uint64_t> shape;
};

// A checkpoint of zeros with the given tensors.
formats::Checkpoint make_checkpoint(const std::filesystem::path& path, const std::vector<Tensor>& tensors) {
  std::vector<formats::TensorSpec> specs;
  for (const Tensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  {
    formats::SafetensorsWriter w(path, specs, {});
    for (const formats::TensorSpec& s : specs) {
      const std::vector<std::byte> zeros(s.nbytes());
      w.write(zeros);
    }
    w.commit();
  }
  return formats::Checkpoint::open(path);
}

std::vector<SmoothGroup> groups_of(const formats::Checkpoint& ckpt, const std::vector<LinearLayer>& linears) {
  return smoothing_groups(ckpt, linears, select_all(linears));
}

TEST(Groups, NormKindsFromTheTensorsPresent) {
  const auto dir = test::temp_dir();
  const auto ckpt =
      make_checkpoint(dir / "a.safetensors", {{"m.a.self_attn.q_proj.weight", DType::F16, {8, 4}},
                                              {"m.a.self_attn.k_proj.weight", DType::F32, {2, 4}},
                                              {"m.a.input_layernorm.weight", DType::F32, {4}},
                                              {"m.a.mlp.gate_proj.weight", DType::BF16, {6, 4}},
                                              {"m.a.post_attention_layernorm.dense.weight", DType::F16, {12, 3}},
                                              {"m.a.post_attention_layernorm.dense.bias", DType::F32, {12}},
                                              {"v.b.self_attn.v_proj.weight", DType::F32, {4, 4}},
                                              {"v.b.layer_norm1.weight", DType::F32, {4}},
                                              {"v.b.layer_norm1.bias", DType::BF16, {4}},
                                              {"v.b.mlp.fc1.weight", DType::F32, {8, 4}},
                                              {"v.b.layer_norm2.weight", DType::F32, {4}},
                                              {"v.b.layer_norm2.bias", DType::F32, {4}}});
  const auto linears = find_linear_layers(ckpt);
  const auto groups = groups_of(ckpt, linears);
  expect_group(groups, "m.a.input_layernorm", {"m.a.self_attn.q_proj", "m.a.self_attn.k_proj"}, NormKind::gemma_rms,
               "m.a.input_layernorm.weight", "");
  expect_group(groups, "m.a.post_attention_layernorm", {"m.a.mlp.gate_proj"}, NormKind::ada_rms,
               "m.a.post_attention_layernorm.dense.weight", "m.a.post_attention_layernorm.dense.bias");
  expect_group(groups, "v.b.layer_norm1", {"v.b.self_attn.v_proj"}, NormKind::layer_norm, "v.b.layer_norm1.weight",
               "v.b.layer_norm1.bias");
  expect_group(groups, "v.b.layer_norm2", {"v.b.mlp.fc1"}, NormKind::layer_norm, "v.b.layer_norm2.weight",
               "v.b.layer_norm2.bias");
}

TEST(Groups, NormsThatDoNotFitGiveNoNorm) {
  const auto dir = test::temp_dir();
  const auto ckpt = make_checkpoint(dir / "a.safetensors",
                                    {// wrong length
                                     {"a.self_attn.q_proj.weight", DType::F32, {4, 4}},
                                     {"a.input_layernorm.weight", DType::F32, {5}},
                                     // wrong dtype
                                     {"a.mlp.up_proj.weight", DType::F32, {4, 4}},
                                     {"a.post_attention_layernorm.weight", DType::I8, {4}},
                                     // adaptive: dense rows not 3I
                                     {"b.self_attn.q_proj.weight", DType::F32, {4, 4}},
                                     {"b.input_layernorm.dense.weight", DType::F32, {8, 2}},
                                     {"b.input_layernorm.dense.bias", DType::F32, {8}},
                                     // adaptive: bias missing
                                     {"b.mlp.gate_proj.weight", DType::F32, {4, 4}},
                                     {"b.post_attention_layernorm.dense.weight", DType::F32, {12, 2}},
                                     // both a weight and a modulation
                                     {"c.self_attn.q_proj.weight", DType::F32, {4, 4}},
                                     {"c.input_layernorm.weight", DType::F32, {4}},
                                     {"c.input_layernorm.dense.weight", DType::F32, {12, 2}},
                                     {"c.input_layernorm.dense.bias", DType::F32, {12}},
                                     // no norm at all
                                     {"c.mlp.gate_proj.weight", DType::F32, {4, 4}},
                                     // layer norm with a misshapen bias
                                     {"d.self_attn.q_proj.weight", DType::F32, {4, 4}},
                                     {"d.layer_norm1.weight", DType::F32, {4}},
                                     {"d.layer_norm1.bias", DType::F32, {3}},
                                     // layer norm with only a bias
                                     {"d.mlp.fc1.weight", DType::F32, {4, 4}},
                                     {"d.layer_norm2.bias", DType::F32, {4}}});
  const auto linears = find_linear_layers(ckpt);
  const auto groups = groups_of(ckpt, linears);
  // 8 shared-input groups, and the three 2-D `dense` tensors are linears of their own.
  ASSERT_EQ(groups.size(), 11u);
  for (const SmoothGroup& g : groups) {
    EXPECT_FALSE(g.norm.has_value()) << g.key;
    EXPECT_EQ(g.norm_weight, "") << g.key;
    EXPECT_EQ(g.norm_bias, "") << g.key;
  }
  EXPECT_NE(group(groups, "a.input_layernorm"), nullptr);
  EXPECT_NE(group(groups, "b.post_attention_layernorm"), nullptr);
  EXPECT_NE(group(groups, "c.post_attention_layernorm"), nullptr);
  EXPECT_NE(group(groups, "d.layer_norm1"), nullptr);
  EXPECT_NE(group(groups, "d.layer_norm2"), nullptr);
}

TEST(Groups, Gemma2LayoutReadsThePreFeedforwardNorm) {
  const auto dir = test::temp_dir();
  const auto ckpt = make_checkpoint(dir / "a.safetensors", {{"a.mlp.gate_proj.weight", DType::F32, {4, 4}},
                                                            {"a.mlp.up_proj.weight", DType::F32, {4, 4}},
                                                            {"a.post_attention_layernorm.weight", DType::F32, {4}},
                                                            {"a.pre_feedforward_layernorm.weight", DType::F32, {4}}});
  const auto linears = find_linear_layers(ckpt);
  const auto groups = groups_of(ckpt, linears);
  ASSERT_EQ(groups.size(), 1u);
  expect_group(groups, "a.pre_feedforward_layernorm", {"a.mlp.gate_proj", "a.mlp.up_proj"}, NormKind::gemma_rms,
               "a.pre_feedforward_layernorm.weight", "");
}

TEST(Groups, OnlyKnownSiblingsWithABlockPrefixShareAnInput) {
  const auto dir = test::temp_dir();
  const auto ckpt = make_checkpoint(dir / "a.safetensors", {{"self_attn.q_proj.weight", DType::F32, {4, 4}},
                                                            {"self_attn.k_proj.weight", DType::F32, {4, 4}},
                                                            {"x.self_attn.qq_proj.weight", DType::F32, {4, 4}},
                                                            {"x.attn.q_proj.weight", DType::F32, {4, 4}},
                                                            {"x.mlp.fc2.weight", DType::F32, {4, 4}}});
  const auto linears = find_linear_layers(ckpt);
  const auto groups = groups_of(ckpt, linears);
  ASSERT_EQ(groups.size(), 5u);
  for (const SmoothGroup& g : groups) {
    EXPECT_EQ(g.layers, std::vector<std::string>{g.key});
    EXPECT_FALSE(g.norm.has_value());
  }
}

TEST(Groups, MembersOfDifferentWidthAreAFormatError) {
  const auto dir = test::temp_dir();
  const auto ckpt = make_checkpoint(dir / "a.safetensors", {{"a.self_attn.q_proj.weight", DType::F32, {4, 4}},
                                                            {"a.self_attn.k_proj.weight", DType::F32, {4, 4}},
                                                            {"a.self_attn.v_proj.weight", DType::F32, {4, 5}},
                                                            {"a.input_layernorm.weight", DType::F32, {4}}});
  const auto linears = find_linear_layers(ckpt);
  try {
    smoothing_groups(ckpt, linears, select_named(linears, {"a.self_attn.k_proj"}));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::format);
    EXPECT_NE(std::string(e.what()).find("a.self_attn.v_proj"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("a.self_attn.q_proj"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// smoothing_scales

template <typename F>
ErrorKind error_kind(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  ADD_FAILURE() << "no duquant::Error";
  return ErrorKind::internal;
}

TEST(SmoothingScales, HandComputed) {
  const std::vector<float> act = {4.0f, 0.0f, 9.0f, 1e-12f, 16.0f, 1.0f};
  const std::vector<float> w = {1.0f, 2.0f, 0.0f, 0.0f, 1.0f, 16.0f};
  // alpha 0.5: sqrt(a) / sqrt(max(w, 1e-5)), then max(., 1e-5).
  const auto s = smoothing_scales(act, w, 0.5);
  ASSERT_EQ(s.size(), 6u);
  EXPECT_EQ(s[0], 2.0f);
  EXPECT_EQ(s[1], 1e-5f);                                             // zero activation: clamp
  EXPECT_FLOAT_EQ(s[2], static_cast<float>(3.0 / std::sqrt(1e-5)));   // zero weight: 948.68
  EXPECT_FLOAT_EQ(s[3], static_cast<float>(1e-6 / std::sqrt(1e-5)));  // 3.16e-4, above the clamp
  EXPECT_EQ(s[4], 4.0f);
  EXPECT_EQ(s[5], 0.25f);
  // alpha 0: 1 / max(w, 1e-5) (activations ignored, even zero ones).
  const auto s0 = smoothing_scales(act, w, 0.0);
  EXPECT_EQ(s0, (std::vector<float>{1.0f, 0.5f, 1e5f, 1e5f, 1.0f, 0.0625f}));
  // alpha 1: max(a, 1e-5) (weights ignored).
  const auto s1 = smoothing_scales(act, w, 1.0);
  EXPECT_EQ(s1, (std::vector<float>{4.0f, 1e-5f, 9.0f, 1e-5f, 16.0f, 1.0f}));
  // alpha 0.25: a^0.25 / w^0.75.
  const auto q = smoothing_scales(std::vector<float>{16.0f, 1.0f}, std::vector<float>{1.0f, 16.0f}, 0.25);
  EXPECT_FLOAT_EQ(q[0], 2.0f);
  EXPECT_FLOAT_EQ(q[1], 0.125f);
  EXPECT_TRUE(smoothing_scales({}, {}, 0.5).empty());
}

TEST(SmoothingScales, ComputedInDoubleRoundedOnce) {
  // 3^0.5 / 7^0.5 rounded once from double.
  const auto s = smoothing_scales(std::vector<float>{3.0f}, std::vector<float>{7.0f}, 0.5);
  EXPECT_EQ(s[0], static_cast<float>(std::sqrt(3.0) / std::sqrt(7.0)));
}

TEST(SmoothingScales, BadInputs) {
  const std::vector<float> one = {1.0f}, two = {1.0f, 1.0f};
  EXPECT_EQ(error_kind([&] { smoothing_scales(one, two, 0.5); }), ErrorKind::internal);
  EXPECT_EQ(error_kind([&] { smoothing_scales(one, one, -0.01); }), ErrorKind::usage);
  EXPECT_EQ(error_kind([&] { smoothing_scales(one, one, 1.01); }), ErrorKind::usage);
  EXPECT_EQ(error_kind([&] { smoothing_scales(one, one, std::nan("")); }), ErrorKind::usage);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (float bad : {nan, -1.0f, inf, -inf}) {
    const std::vector<float> v = {1.0f, bad};
    EXPECT_EQ(error_kind([&] { smoothing_scales(v, two, 0.5); }), ErrorKind::numeric) << bad;
    EXPECT_EQ(error_kind([&] { smoothing_scales(two, v, 0.5); }), ErrorKind::numeric) << bad;
  }
  try {
    smoothing_scales(std::vector<float>{1.0f, -2.0f}, two, 0.5);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("channel 1"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// smoothed_weight

TEST(SmoothedWeight, RoundsEachProductToTheDtype) {
  const std::vector<float> w = {1.0f, 1.0f, 2.0f, -3.0f};  // [2, 2]
  const std::vector<float> s = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f};
  // BF16 (7 mantissa bits): 1 + 2^-8 ties to 1; 1 + 3·2^-8 ties to 1 + 2^-6 (even); 2 + 2^-7
  // ties to 2; -3.03515625 = -194.25 units of 2^-6 -> -194 units = -3.03125.
  EXPECT_EQ(smoothed_weight(w, 2, 2, s, DType::BF16), (std::vector<float>{1.0f, 1.015625f, 2.0f, -3.03125f}));
  // F32: the exact float32 products.
  EXPECT_EQ(smoothed_weight(w, 2, 2, s, DType::F32),
            (std::vector<float>{1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 2.0f + 0x1p-7f, -3.03515625f}));
  // F16 (10 mantissa bits), finer scales: 1 + 2^-11 ties to 1; 1 + 3·2^-11 (1.5 units of 2^-10)
  // ties to 1 + 2^-9; 2 + 2^-10 ties to 2; -(3 + 9·2^-11) is 2.25 units of 2^-9 -> -(3 + 2^-8).
  const std::vector<float> s16 = {1.0f + 0x1p-11f, 1.0f + 3 * 0x1p-11f};
  EXPECT_EQ(smoothed_weight(w, 2, 2, s16, DType::F16),
            (std::vector<float>{1.0f, 1.0f + 0x1p-9f, 2.0f, -3.0f - 0x1p-8f}));
  // The column scales follow the column, not the row: [1, 2]·diag(s) on a [1, 2] weight.
  EXPECT_EQ(smoothed_weight(std::vector<float>{1.0f, 2.0f}, 1, 2, std::vector<float>{4.0f, 0.5f}, DType::BF16),
            (std::vector<float>{4.0f, 1.0f}));
}

TEST(SmoothedWeight, BadInputs) {
  const std::vector<float> w(6, 1.0f), s3(3, 1.0f), s2(2, 1.0f);
  EXPECT_EQ(smoothed_weight(w, 2, 3, s3, DType::F32).size(), 6u);
  EXPECT_EQ(error_kind([&] { smoothed_weight(w, 2, 3, s2, DType::F32); }), ErrorKind::internal);
  EXPECT_EQ(error_kind([&] { smoothed_weight(w, 3, 3, s3, DType::F32); }), ErrorKind::internal);
  EXPECT_EQ(error_kind([&] { smoothed_weight(w, -2, -3, s3, DType::F32); }), ErrorKind::internal);
  EXPECT_EQ(error_kind([&] { smoothed_weight(w, 2, 3, s3, DType::I8); }), ErrorKind::internal);
  EXPECT_EQ(error_kind([&] { smoothed_weight(w, 2, 3, s3, DType::F64); }), ErrorKind::internal);
}

}  // namespace
}  // namespace duquant

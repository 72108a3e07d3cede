// Which tensors are linear layers: 2-D `<module>.weight` with an optional matching 1-D bias;
// embedding tables, 1-D and 4-D weights and mismatched biases are not taken as linears.
#include <gtest/gtest.h>

#include "common/test_paths.hpp"
#include "select/linear_layers.hpp"
#include "selection/tiny_safetensors.hpp"

namespace duquant {
namespace {

TEST(LinearLayers, EmbeddingTablesAndNonMatrixWeightsAreNotLinears) {
  const auto dir = test::temp_dir();
  std::vector<test::TinyTensor> t;
  test::add_linear(t, "model.layers.0.q_proj", 8, 4, true);
  t.push_back({"model.embed_tokens.weight", {32, 4}});
  t.push_back({"vision.position_embedding.weight", {16, 4}});
  t.push_back({"vision.patch_embedding.weight", {4, 3, 2, 2}});
  t.push_back({"model.norm.weight", {4}});
  t.push_back({"model.odd.weight", {6, 4}});
  t.push_back({"model.odd.bias", {5}});  // not [6]: not this layer's bias
  t.push_back({"lm_head.weight", {32, 4}});
  test::write_tiny_safetensors(dir / "m.safetensors", t);
  const auto ckpt = formats::Checkpoint::open(dir / "m.safetensors");
  const auto linears = find_linear_layers(ckpt);
  std::vector<std::string> names;
  for (const auto& l : linears) names.push_back(l.name);
  EXPECT_EQ(names, (std::vector<std::string>{"model.layers.0.q_proj", "model.odd", "lm_head"}));
  EXPECT_NE(linears[0].bias, nullptr);
  EXPECT_EQ(linears[0].out_features, 8u);
  EXPECT_EQ(linears[0].in_features, 4u);
  EXPECT_EQ(linears[1].bias, nullptr);
  EXPECT_TRUE(is_embedding_table("a.embed_tokens"));
  EXPECT_FALSE(is_embedding_table("a.embed_tokens.proj"));
}

}  // namespace
}  // namespace duquant

// Module order: module_order() keeps first-appearance order of siblings, except purely numeric
// siblings which go numerically (layers.2 before layers.10); list-linears on a checkpoint stored
// alphabetically still lists layers in module order.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "select/module_order.hpp"
#include "selection/tiny_safetensors.hpp"

namespace duquant {
namespace {

std::vector<std::string> ordered(const std::vector<std::string>& names) {
  std::vector<std::string> out;
  for (std::size_t i : module_order(names)) out.push_back(names[i]);
  return out;
}

TEST(ModuleOrder, NumericSiblingsNumerically) {
  EXPECT_EQ(ordered({"m.layers.10.q", "m.layers.2.q", "m.layers.1.q"}),
            (std::vector<std::string>{"m.layers.1.q", "m.layers.2.q", "m.layers.10.q"}));
}

TEST(ModuleOrder, OtherSiblingsByFirstAppearance) {
  EXPECT_EQ(ordered({"b.z", "a.y", "b.a", "a.x"}), (std::vector<std::string>{"b.z", "b.a", "a.y", "a.x"}));
  // Names inside a layer keep their stored order (q before k, not alphabetical).
  EXPECT_EQ(ordered({"l.0.q_proj", "l.0.k_proj", "l.0.v_proj"}),
            (std::vector<std::string>{"l.0.q_proj", "l.0.k_proj", "l.0.v_proj"}));
}

TEST(ModuleOrder, GroupsAModulesChildrenTogether) {
  // layers.1 appears between two modules of layers.0: its children still come after all of layers.0.
  EXPECT_EQ(ordered({"layers.0.q", "layers.1.q", "layers.0.k", "head"}),
            (std::vector<std::string>{"layers.0.q", "layers.0.k", "layers.1.q", "head"}));
}

TEST(ModuleOrder, MixedSiblingsKeepAppearanceOrder) {
  EXPECT_EQ(ordered({"x.10", "x.extra", "x.2"}), (std::vector<std::string>{"x.10", "x.extra", "x.2"}));
}

TEST(ModuleOrder, ParentBeforeChildrenAndStableForEqualNumbers) {
  EXPECT_EQ(ordered({"a.b", "a"}), (std::vector<std::string>{"a", "a.b"}));
  EXPECT_EQ(ordered({"x.01", "x.1", "x.0"}), (std::vector<std::string>{"x.0", "x.01", "x.1"}));
  EXPECT_TRUE(module_order({}).empty());
}

TEST(ModuleOrder, ReturnsAPermutation) {
  std::vector<std::string> names;
  for (int i = 12; i >= 0; --i) names.push_back(fmt::format("m.layers.{}.mlp.up_proj", i));
  std::vector<std::size_t> idx = module_order(names);
  std::sort(idx.begin(), idx.end());
  for (std::size_t i = 0; i < idx.size(); ++i) EXPECT_EQ(idx[i], i);
}

TEST(ModuleOrder, ListLinearsOnAnAlphabeticalCheckpoint) {
  std::vector<test::TinyTensor> tensors;
  for (int layer : {0, 1, 10, 11, 2, 3}) {  // as an alphabetical sort stores them
    const std::string p = fmt::format("model.layers.{}.", layer);
    test::add_linear(tensors, p + "mlp.down_proj", 16, 32);
    test::add_linear(tensors, p + "self_attn.q_proj", 16, 16);
  }
  std::sort(tensors.begin(), tensors.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  const auto path = test::temp_dir() / "alphabetical.safetensors";
  test::write_tiny_safetensors(path, tensors);

  const auto r = test::run_cli({"list-linears", path.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::vector<std::string> listed;
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    const std::string tag = "[DUQUANT][DRYRUN] ";
    if (line.rfind(tag, 0) == 0) listed.push_back(line.substr(tag.size(), line.find(':') - tag.size()));
  }
  std::vector<std::string> expected;
  for (int layer : {0, 1, 2, 3, 10, 11}) {
    const std::string p = fmt::format("model.layers.{}.", layer);
    expected.push_back(p + "mlp.down_proj");  // within a layer: stored (alphabetical) order
    expected.push_back(p + "self_attn.q_proj");
  }
  EXPECT_EQ(listed, expected);
}

}  // namespace
}  // namespace duquant

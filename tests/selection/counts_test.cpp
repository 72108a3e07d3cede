// Counts: how many layers every preset selects on the fixture (2 layers per stack) and on a synth
// checkpoint with 18 layers at factor 16 (the pi0.5 counts, also held to presets.hpp's
// pi05_layers), and the default selection counted by hand from the fixture's names.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <map>
#include <string>

#include "common/run_cli.hpp"
#include "common/test_paths.hpp"
#include "duquant/linear_layers.hpp"
#include "duquant/presets.hpp"
#include "duquant/selection.hpp"
#include "duquant/settings.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace duquant {
namespace {

std::size_t count(const std::filesystem::path& ckpt, const std::string& preset, bool action_head = false) {
  Settings s;
  if (!preset.empty()) apply_preset(find_preset(preset), s);
  if (action_head) s.set(Knob::include_action_head, "1", "test");
  const RunConfig c = resolve(s);
  const auto checkpoint = formats::Checkpoint::open(ckpt);
  const auto linears = find_linear_layers(checkpoint);
  return select_layers(linears, c.selection, c.quant.wbits_default).layers.size();
}

// The last line of the dry run, through the binary.
std::string cli_total(const std::filesystem::path& ckpt, const std::string& preset) {
  const auto r = test::run_cli({"list-linears", ckpt.string(), "--preset", preset});
  EXPECT_EQ(r.exit_code, 0) << preset << ": " << r.err;
  const auto at = r.out.rfind("Dry-run total layers listed: ");
  return at == std::string::npos ? "" : r.out.substr(at);
}

const std::map<std::string, std::size_t> kFixtureCounts{
    {"openpi-dit-qkvo", 8}, {"openpi-dit", 14}, {"openpi-llm", 14}, {"openpi-full", 28}, {"openpi-llm-dit-mlp", 20}};
const std::map<std::string, std::size_t> kPi05Counts{
    {"openpi-dit-qkvo", 72}, {"openpi-dit", 126}, {"openpi-llm", 126}, {"openpi-full", 252}, {"openpi-llm-dit-mlp", 180}};

TEST(Counts, PresetsOnTheFixture) {
  for (const auto& [preset, n] : kFixtureCounts) {
    EXPECT_EQ(count(test::tiny_checkpoint(), preset), n) << preset;
    EXPECT_EQ(cli_total(test::tiny_checkpoint(), preset), fmt::format("Dry-run total layers listed: {}\n", n))
        << preset;
  }
}

TEST(Counts, DefaultSelectionOnTheFixtureByHand) {
  // The fixture's linear layers (2-D .weight tensors):
  //   language model 2 x (q k v o gate up down)            = 14, all matched by the default include
  //   action expert  2 x (q k v o gate up down)            = 14 matched
  //                  2 x (input/post_attention_layernorm.dense) = 4, not matched (no projection name)
  //   vision tower   2 x (q k v out_proj fc1 fc2)          = 12 matched
  //   multi_modal_projector.linear, action_in_proj, time_mlp_in, time_mlp_out = 4 not matched
  //   action_out_proj: matched by include (out_proj), skipped as the action head
  // 49 linear layers; 14 + 14 + 12 = 40 selected; 41 with the action head.
  const auto checkpoint = formats::Checkpoint::open(test::tiny_checkpoint());
  EXPECT_EQ(find_linear_layers(checkpoint).size(), 49u);
  EXPECT_EQ(count(test::tiny_checkpoint(), ""), 40u);
  EXPECT_EQ(count(test::tiny_checkpoint(), "", true), 41u);
  const auto r = test::run_cli({"list-linears", test::tiny_checkpoint().string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("[DUQUANT] Matched Linear layers: 40\n"), std::string::npos);
  EXPECT_EQ(r.out.find("action_out_proj"), std::string::npos);
  const auto h = test::run_cli({"list-linears", test::tiny_checkpoint().string(), "--include-action-head"});
  EXPECT_NE(h.out.find("[DUQUANT][DRYRUN] action_out_proj: Linear(64->32) W4 A8"), std::string::npos) << h.out;
  EXPECT_NE(h.out.find("[DUQUANT] Dry-run total layers listed: 41\n"), std::string::npos);
}

// One synth checkpoint per test process (ctest runs the cases of this file in parallel processes),
// made inside the test body so that a failure fails the test instead of skipping it.
class SynthCounts : public ::testing::Test {
 protected:
  void SetUp() override {
    if (made_) return;
    dir_ = std::filesystem::temp_directory_path() / "duquant-tests" /
           fmt::format("SynthCounts-{}", static_cast<long>(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    const auto r = test::run_cli({"synth", "-o", ckpt().string(), "--factor", "16"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    made_ = true;
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  static std::filesystem::path ckpt() { return dir_ / "synth16.safetensors"; }
  static inline std::filesystem::path dir_;
  static inline bool made_ = false;
};

TEST_F(SynthCounts, PresetsOnAFullDepthSynth) {
  for (const auto& [preset, n] : kPi05Counts) {
    EXPECT_EQ(count(ckpt(), preset), n) << preset;
    EXPECT_EQ(cli_total(ckpt(), preset), fmt::format("Dry-run total layers listed: {}\n", n)) << preset;
  }
}

TEST_F(SynthCounts, PresetTableAgreesWithThePi05Counts) {
  std::size_t openpi = 0;
  for (const Preset& p : presets()) {
    if (p.runtime != Runtime::openpi) {
      EXPECT_EQ(p.pi05_layers, -1) << p.name;
      continue;
    }
    ++openpi;
    ASSERT_TRUE(kPi05Counts.count(std::string(p.name))) << p.name;
    EXPECT_EQ(p.pi05_layers, static_cast<int>(kPi05Counts.at(std::string(p.name)))) << p.name;
    EXPECT_EQ(count(ckpt(), std::string(p.name)), static_cast<std::size_t>(p.pi05_layers)) << p.name;
  }
  EXPECT_EQ(openpi, kPi05Counts.size());
}

}  // namespace
}  // namespace duquant

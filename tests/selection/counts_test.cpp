// Counts: how many layers every preset selects on the fixture (2 layers per stack) and on a synth
// checkpoint with 18 layers at factor 16 (the pi0.5 counts, also held to presets.hpp's
// pi05_layers), and the default selection counted by hand from the fixture's names.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "config/presets.hpp"
#include "config/settings.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"

namespace duquant {
namespace {

std::size_t count(const std::filesystem::path& ckpt, const std::string& preset, bool action_head = false) {
  Settings s;
  if (!preset.empty()) apply_preset(find_preset(preset), s);
  if (action_head) s.set(Knob::include_action_head, "1", "test");
  const RunConfig c = resolve(s);
  const auto checkpoint = formats::Checkpoint::open(ckpt);
  const auto linears = find_linear_layers(checkpoint);
  return select_layers(linears, c).layers.size();
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
const std::map<std::string, std::size_t> kPi05Counts{{"openpi-dit-qkvo", 72},
                                                     {"openpi-dit", 126},
                                                     {"openpi-llm", 126},
                                                     {"openpi-full", 252},
                                                     {"openpi-llm-dit-mlp", 180}};

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
    EXPECT_EQ(count(ckpt(), std::string(p.name)), static_cast<std::size_t>(p.pi05_layers)) << p.name;
    if (p.runtime != Runtime::openpi) {
      EXPECT_EQ(p.pi05_layers, 0) << p.name;
      continue;
    }
    ++openpi;
    ASSERT_TRUE(kPi05Counts.count(std::string(p.name))) << p.name;
    EXPECT_EQ(p.pi05_layers, static_cast<int>(kPi05Counts.at(std::string(p.name)))) << p.name;
  }
  EXPECT_EQ(openpi, kPi05Counts.size());
}

// GR00T N1.5 at full depth (12 / 27 / 16 / 4 layers) at factor 16, sharded with an index as NVIDIA
// releases it, and the same under LeRobot's `_groot_model.`.
class Gr00tCounts : public ::testing::Test {
 protected:
  void SetUp() override {
    if (made_) return;
    dir_ = std::filesystem::temp_directory_path() / "duquant-tests" /
           fmt::format("Gr00tCounts-{}", static_cast<long>(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    auto r = test::run_cli({"synth", "--model", "gr00t-n1.5", "-o", plain().string(), "--factor", "16"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = test::run_cli(
        {"synth", "--model", "gr00t-n1.5", "-o", lerobot().string(), "--factor", "16", "--prefix", "_groot_model."});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    made_ = true;
  }
  static void TearDownTestSuite() { std::filesystem::remove_all(dir_); }
  static std::filesystem::path plain() { return dir_ / "gr00t"; }
  static std::filesystem::path lerobot() { return dir_ / "gr00t-lerobot"; }
  static inline std::filesystem::path dir_;
  static inline bool made_ = false;
};

// The names `list-linears --json` lists, or an empty list when the command fails.
std::vector<std::string> listed(const std::filesystem::path& ckpt, const std::vector<std::string>& flags,
                                const std::vector<std::string>& env = {}) {
  std::vector<std::string> args{"list-linears", ckpt.string(), "--json"};
  args.insert(args.end(), flags.begin(), flags.end());
  const auto r = test::run_cli(args, env);
  std::vector<std::string> names;
  if (r.exit_code != 0) {  // 5: nothing selected
    if (r.exit_code != 5) ADD_FAILURE() << "list-linears exit " << r.exit_code << ": " << r.err;
    return names;
  }
  const nlohmann::json j = nlohmann::json::parse(r.out);  // alive through the loop
  for (const auto& l : j.at("layers")) names.push_back(l.at("name"));
  return names;
}

TEST_F(Gr00tCounts, PresetsOnBothLayouts) {
  for (const Preset& p : presets()) {
    for (const auto& ckpt : {plain(), lerobot()}) {
      const auto names = listed(ckpt, {"--preset", std::string(p.name)});
      EXPECT_EQ(names.size(), static_cast<std::size_t>(p.gr00t_layers)) << p.name << " on " << ckpt;
      for (const std::string& n : names) {
        EXPECT_EQ(n.find("vision_model"), std::string::npos) << p.name << ": " << n;
        EXPECT_EQ(n.find("vl_self_attention"), std::string::npos) << p.name << ": " << n;
        EXPECT_EQ(n.rfind("_groot_model.", 0), std::string::npos) << p.name << ": " << n;
      }
    }
    if (p.gr00t_layers > 0) {
      EXPECT_EQ(cli_total(lerobot(), std::string(p.name)),
                fmt::format("Dry-run total layers listed: {}\n", p.gr00t_layers));
    }
  }
  EXPECT_EQ(listed(lerobot(), {"--preset", "gr00t-llm-dit"}), listed(plain(), {"--preset", "gr00t-llm-dit"}));
}

TEST_F(Gr00tCounts, EnvironmentPrefixAppliesThePortsRules) {
  // The port's defaults (180), its action-head rule, and GR00T's log tag.
  const auto r = test::run_cli({"list-linears", plain().string(), "--env-prefix", "GR00T_DUQUANT_"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("[GR00T-DUQUANT] SCOPE filter: ''\n[GR00T-DUQUANT] Matched Linear layers: 180\n"),
            std::string::npos)
      << r.out.substr(0, 300);
  EXPECT_EQ(listed(lerobot(), {"--env-prefix", "GR00T_DUQUANT_"}).size(), 180u);
  // The published run script's expressions through the port's variables: 116.
  const std::vector<std::string> script{
      "GR00T_DUQUANT_INCLUDE=.*(backbone\\.eagle_model\\.language_model\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|"
      "up_proj|down_proj)|action_head\\.model\\.transformer_blocks\\.\\d+\\.ff\\.net\\.(0\\.proj|2)).*",
      "GR00T_DUQUANT_EXCLUDE=(?:^|\\.)(vision|radio|norm|ln|layernorm|embed|lm_head|attn1)(?:\\.|$)"};
  EXPECT_EQ(listed(lerobot(), {"--env-prefix", "GR00T_DUQUANT_"}, script).size(), 116u);
  // Including the action head adds what the rule skipped and the expressions allow.
  const std::vector<std::string> vl{"GR00T_DUQUANT_INCLUDE=attn1\\.to_q$", "GR00T_DUQUANT_EXCLUDE=^$"};
  EXPECT_EQ(listed(plain(), {"--env-prefix", "GR00T_DUQUANT_"}, vl).size(), 16u);
  EXPECT_EQ(listed(plain(), {"--env-prefix", "GR00T_DUQUANT_", "--include-action-head"}, vl).size(), 20u);
  // future_tokens is an embedding table, never a linear layer; --not-linear removes more.
  const auto all =
      listed(plain(), {"--runtime", "gr00t", "--include", ".", "--exclude", "^$", "--include-action-head"});
  EXPECT_FALSE(all.empty());
  for (const auto& n : all) EXPECT_EQ(n.find("future_tokens"), std::string::npos) << n;
  const auto fewer = listed(plain(), {"--runtime", "gr00t", "--include", ".", "--exclude", "^$",
                                      "--include-action-head", "--not-linear", "lm_head$"});
  EXPECT_EQ(fewer.size() + 1, all.size());
}

TEST_F(Gr00tCounts, RuntimeConflictsAreNamed) {
  // A preset and an environment prefix that disagree: the preset wins, with a warning naming both.
  const auto w =
      test::run_cli({"list-linears", plain().string(), "--preset", "gr00t-llm-dit", "--env-prefix", "OPENPI_DUQUANT_"});
  EXPECT_EQ(w.exit_code, 0) << w.err;
  EXPECT_NE(w.err.find("--env-prefix OPENPI_DUQUANT_ implies the openpi runtime; preset 'gr00t-llm-dit' sets gr00t"),
            std::string::npos)
      << w.err;
  // --runtime against a configuration file that says otherwise: exit 2 naming both.
  const auto cfg = dir_ / "openpi.json";
  { std::ofstream(cfg) << R"({"runtime": "openpi"})"; }
  const auto e = test::run_cli({"list-linears", plain().string(), "--config", cfg.string(), "--runtime", "gr00t"});
  EXPECT_EQ(e.exit_code, 2);
  EXPECT_NE(e.err.find(cfg.string() + ": runtime says openpi and --runtime says gr00t"), std::string::npos) << e.err;
  // An OpenPI preset on GR00T names: nothing, and the help says what the checkpoint is.
  const auto n = test::run_cli({"list-linears", lerobot().string(), "--preset", "openpi-dit"});
  EXPECT_EQ(n.exit_code, 5);
  EXPECT_NE(n.out.find("GR00T N1.5 names under '_groot_model.' (LeRobot's layout)"), std::string::npos) << n.out;
  EXPECT_NE(n.out.find("preset 'openpi-dit' is written for pi0/pi0.5 names"), std::string::npos) << n.out;
}

}  // namespace
}  // namespace duquant

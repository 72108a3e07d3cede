// The dry-run text of list-linears, byte for byte against files hand-written from the runtime's
// log format (tests/data/selection/*.txt): defaults, non-default knobs, the GR00T tag, and the
// help printed when nothing matches (exit code 5).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"

namespace duquant {
namespace {

std::string expected(const std::string& file) {
  const auto path = test::test_data() / "selection" / file;
  EXPECT_TRUE(std::filesystem::exists(path)) << path;
  return test::read_text(path);
}

std::vector<std::string> list(std::vector<std::string> args) {
  args.insert(args.begin(), {"list-linears", test::tiny_checkpoint().string()});
  return args;
}

TEST(DryRunText, OpenpiDitDefaults) {
  const auto r = test::run_cli(list({"--preset", "openpi-dit"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected("dryrun_fixture_openpi-dit.txt"));
  EXPECT_EQ(r.err, "");
}

TEST(DryRunText, SameSelectionSpelledWithFlags) {
  const auto r = test::run_cli(list({"--scope", "paligemma_with_expert.gemma_expert.model."}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected("dryrun_fixture_openpi-dit.txt"));
}

TEST(DryRunText, NonDefaultKnobs) {
  const auto r = test::run_cli(
      list({"--preset", "openpi-dit", "--block", "32", "--block-out", "16", "--no-permute", "--row-rot", "0", "--wbits",
            "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj:8", "--abits", "4"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected("dryrun_fixture_openpi-dit_knobs.txt"));
}

TEST(DryRunText, SameKnobsFromTheEnvironment) {
  const auto r =
      test::run_cli(list({"--env-prefix", "OPENPI_DUQUANT_"}),
                    {"OPENPI_DUQUANT_SCOPE=paligemma_with_expert.gemma_expert.model.", "OPENPI_DUQUANT_BLOCK=32",
                     "OPENPI_DUQUANT_BLOCK_OUT=16", "OPENPI_DUQUANT_PERMUTE=False", "OPENPI_DUQUANT_ROW_ROT=0",
                     "OPENPI_DUQUANT_WBITS=paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj:8",
                     "OPENPI_DUQUANT_ABITS=4", "OPENPI_DUQUANT_PACKDIR=/nonexistent", "OPENPI_DUQUANT_DRYRUN=1"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected("dryrun_fixture_openpi-dit_knobs.txt"));
  EXPECT_EQ(r.err, "");  // runtime-only variables are silent
}

TEST(DryRunText, Gr00tRuntimeChangesTheTag) {
  const auto r =
      test::run_cli(list({"--preset", "openpi-dit-qkvo", "--env-prefix", "GR00T_DUQUANT_", "--runtime", "gr00t"}));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(r.out, expected("dryrun_fixture_openpi-dit-qkvo_gr00t.txt"));
  EXPECT_NE(r.err.find("preset 'openpi-dit-qkvo' implies the openpi runtime; --runtime sets gr00t"), std::string::npos)
      << r.err;
  // Without --runtime the preset's runtime beats the environment prefix's (docs/selection.md).
  const auto p = test::run_cli(list({"--preset", "openpi-dit-qkvo", "--env-prefix", "GR00T_DUQUANT_"}));
  EXPECT_EQ(p.exit_code, 0) << p.err;
  EXPECT_EQ(p.out.rfind("[DUQUANT] SCOPE filter:", 0), 0u) << p.out;
  EXPECT_NE(p.err.find("--env-prefix GR00T_DUQUANT_ implies the gr00t runtime; preset 'openpi-dit-qkvo' sets openpi"),
            std::string::npos)
      << p.err;
}

TEST(DryRunText, NoMatchHelpAndExitCode5) {
  const auto r = test::run_cli(list({"--preset", "openpi-dit", "--include", "no_such_projection"}));
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_EQ(r.out, expected("nomatch_fixture_openpi-dit.txt"));
  EXPECT_NE(r.err.find("duquant: error:"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("49 linear layers"), std::string::npos) << r.err;
}

TEST(DryRunText, NoMatchWithAScopeNothingStartsWith) {
  const auto r = test::run_cli(list({"--scope", "backbone."}));
  EXPECT_EQ(r.exit_code, 5);
  EXPECT_NE(r.out.find("[DUQUANT] No Linear layers matched. Total Linear layers in the checkpoint: 49\n"),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("[DUQUANT] Linear layers whose names start with 'backbone': 0\n"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace duquant

// Settings: the runtime's defaults, the precedence defaults < preset < environment < flags through
// apply_preset()/apply_environment()/resolve() with a fake environ array, and every malformed
// value rejected with an error naming its source.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "config/presets.hpp"
#include "config/settings.hpp"
#include "duquant/error.hpp"

namespace duquant {
namespace {

// A NULL-terminated environ array over `entries`.
struct FakeEnv {
  explicit FakeEnv(std::vector<std::string> e) : entries(std::move(e)) {
    for (auto& s : entries) pointers.push_back(s.data());
    pointers.push_back(nullptr);
  }
  char** get() { return pointers.data(); }
  std::vector<std::string> entries;
  std::vector<char*> pointers;
};

TEST(Settings, DefaultsAreTheRuntimes) {
  const RunConfig c = resolve(Settings{});
  EXPECT_EQ(c.quant.wbits_default, 4);
  EXPECT_EQ(c.quant.abits, 8);
  EXPECT_EQ(c.quant.block, 16);
  EXPECT_EQ(c.quant.block_out, 16);
  EXPECT_TRUE(c.quant.permute);
  EXPECT_EQ(c.quant.row_rot, RowRot::restore);
  EXPECT_DOUBLE_EQ(c.quant.lambda_smooth, 0.15);
  EXPECT_DOUBLE_EQ(c.quant.act_pct, 99.9);
  EXPECT_EQ(c.quant.calib_steps, 32);
  EXPECT_EQ(c.selection.scope, "");
  EXPECT_EQ(c.selection.include, ".*(q_proj|k_proj|v_proj|o_proj|out_proj|fc1|fc2|gate_proj|up_proj|down_proj).*");
  EXPECT_EQ(c.selection.exclude, "(?:^|\\.)(norm|ln|layernorm|emb)(?:\\.|$)");
  EXPECT_TRUE(c.selection.layers.empty());
  EXPECT_FALSE(c.selection.include_action_head);
  EXPECT_EQ(c.runtime, Runtime::openpi);
  EXPECT_EQ(row_rot_name(RowRot::restore), "restore");
  EXPECT_EQ(row_rot_name(RowRot::off), "0");
  EXPECT_EQ(row_rot_name(RowRot::propagate), "propagate");
}

TEST(Settings, BlockOutFollowsBlockUnlessGiven) {
  Settings s;
  s.set(Knob::block, "32", "--block");
  EXPECT_EQ(resolve(s).quant.block_out, 32);
  s.set(Knob::block_out, "8", "--block-out");
  EXPECT_EQ(resolve(s).quant.block, 32);
  EXPECT_EQ(resolve(s).quant.block_out, 8);
}

TEST(Settings, EnvironmentReadsEveryKnob) {
  FakeEnv env({"OPENPI_DUQUANT_SCOPE=paligemma_with_expert.", "OPENPI_DUQUANT_INCLUDE=q_proj",
               "OPENPI_DUQUANT_EXCLUDE=layers\\.1\\.", "OPENPI_DUQUANT_LAYERS= a.q_proj , b.k_proj ,",
               "OPENPI_DUQUANT_INCLUDE_ACTION_HEAD=True", "OPENPI_DUQUANT_WBITS_DEFAULT=3",
               "OPENPI_DUQUANT_WBITS=a.q_proj:8, b.k_proj:6", "OPENPI_DUQUANT_ABITS=6", "OPENPI_DUQUANT_BLOCK=+32",
               "OPENPI_DUQUANT_BLOCK_OUT=64", "OPENPI_DUQUANT_PERMUTE=false", "OPENPI_DUQUANT_ROW_ROT=propagate",
               "OPENPI_DUQUANT_LS=0", "OPENPI_DUQUANT_ACT_PCT=100", "OPENPI_DUQUANT_CALIB_STEPS= 7 ", "UNRELATED=1"});
  Settings s;
  EXPECT_TRUE(apply_environment("OPENPI_DUQUANT_", env.get(), s).empty());
  const RunConfig c = resolve(s);
  EXPECT_EQ(c.selection.scope, "paligemma_with_expert.");
  EXPECT_EQ(c.selection.include, "q_proj");
  EXPECT_EQ(c.selection.exclude, "layers\\.1\\.");
  EXPECT_EQ(c.selection.layers, (std::vector<std::string>{"a.q_proj", "b.k_proj"}));
  EXPECT_TRUE(c.selection.include_action_head);
  EXPECT_EQ(c.quant.wbits_default, 3);
  EXPECT_EQ(c.selection.wbits, (std::vector<std::pair<std::string, int>>{{"a.q_proj", 8}, {"b.k_proj", 6}}));
  EXPECT_EQ(c.quant.abits, 6);
  EXPECT_EQ(c.quant.block, 32);
  EXPECT_EQ(c.quant.block_out, 64);
  EXPECT_FALSE(c.quant.permute);
  EXPECT_EQ(c.quant.row_rot, RowRot::propagate);
  EXPECT_DOUBLE_EQ(c.quant.lambda_smooth, 0.0);
  EXPECT_DOUBLE_EQ(c.quant.act_pct, 100.0);
  EXPECT_EQ(c.quant.calib_steps, 7);
  EXPECT_EQ(c.runtime, Runtime::openpi);
}

TEST(Settings, BooleanSpellingsOfTheRuntime) {
  for (const char* off : {"0", "false", "False"}) {
    Settings s;
    s.set(Knob::permute, off, "X");
    EXPECT_FALSE(resolve(s).quant.permute) << off;
  }
  for (const char* on : {"1", "true", "True"}) {
    Settings s;
    s.set(Knob::permute, on, "X");
    EXPECT_TRUE(resolve(s).quant.permute) << on;
  }
}

TEST(Settings, Gr00tPrefixReadsOnlyItsOwnVariables) {
  FakeEnv env({"GR00T_DUQUANT_BLOCK=8", "OPENPI_DUQUANT_BLOCK=64", "OPENPI_DUQUANT_FOO=1"});
  Settings s;
  EXPECT_TRUE(apply_environment("GR00T_DUQUANT_", env.get(), s).empty());
  const RunConfig c = resolve(s);
  EXPECT_EQ(c.quant.block, 8);
  EXPECT_EQ(c.runtime, Runtime::gr00t);
  EXPECT_EQ(runtime_log_tag(c.runtime), "GR00T-DUQUANT");
  EXPECT_EQ(s.get(Knob::block)->source, "GR00T_DUQUANT_BLOCK");
}

TEST(Settings, UnknownVariablesWarnRuntimeOnlyOnesAreSilent) {
  FakeEnv env({"OPENPI_DUQUANT_FOO=1", "OPENPI_DUQUANT_PACKDIR=/tmp/p", "OPENPI_DUQUANT_DRYRUN=1",
               "OPENPI_DUQUANT_DEBUG=1", "OPENPI_DUQUANT_PROFILE=1", "OPENPI_DUQUANT_PROFILE_SYNC=1",
               "OPENPI_DUQUANT_PRECACHE_WEIGHTS=0"});
  Settings s;
  const auto warnings = apply_environment("OPENPI_DUQUANT_", env.get(), s);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("OPENPI_DUQUANT_FOO"), std::string::npos) << warnings[0];
}

TEST(Settings, EmptyLayersAndBlockOutMeanNotGiven) {
  FakeEnv env({"OPENPI_DUQUANT_LAYERS=", "OPENPI_DUQUANT_BLOCK_OUT=", "OPENPI_DUQUANT_BLOCK=32"});
  Settings s;
  apply_environment("OPENPI_DUQUANT_", env.get(), s);
  const RunConfig c = resolve(s);
  EXPECT_TRUE(c.selection.layers.empty());
  EXPECT_EQ(c.quant.block_out, 32);
}

TEST(Settings, PrecedencePresetEnvironmentFlags) {
  // The preset sets scope; the environment overrides scope and sets block; a flag overrides block.
  FakeEnv env({"OPENPI_DUQUANT_SCOPE=from.env.", "OPENPI_DUQUANT_BLOCK=64", "OPENPI_DUQUANT_ABITS=6"});
  Settings s;
  apply_preset(find_preset("openpi-dit-qkvo"), s);
  EXPECT_EQ(s.get(Knob::scope)->source, "preset 'openpi-dit-qkvo'");
  apply_environment("OPENPI_DUQUANT_", env.get(), s);
  s.set(Knob::block, "8", "--block");
  const RunConfig c = resolve(s);
  EXPECT_EQ(c.preset, "openpi-dit-qkvo");
  EXPECT_EQ(c.selection.scope, "from.env.");                            // env beats preset
  EXPECT_EQ(c.selection.include, ".*(q_proj|k_proj|v_proj|o_proj).*");  // preset beats default
  EXPECT_EQ(c.selection.exclude, std::string(kDefaultExclude));         // default where nobody spoke
  EXPECT_EQ(c.quant.block, 8);                                          // flag beats env
  EXPECT_EQ(c.quant.block_out, 8);
  EXPECT_EQ(c.quant.abits, 6);
}

TEST(Settings, Gr00tPresetsSetRuntimeAndTheRealNamesExpressions) {
  Settings s;
  apply_preset(find_preset("gr00t-llm-dit-mlp"), s);
  const RunConfig c = resolve(s);
  EXPECT_EQ(c.runtime, Runtime::gr00t);
  EXPECT_EQ(c.selection.scope, "");
  EXPECT_EQ(
      c.selection.include,
      ".*(backbone\\.eagle_model\\.language_model\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
      "action_head\\.model\\.transformer_blocks\\.\\d+\\.ff\\.net\\.(0\\.proj|2)).*");
  EXPECT_EQ(c.selection.exclude, "(?:^|\\.)(vision|radio|norm|ln|layernorm|embed|lm_head|attn1)(?:\\.|$)");
  Settings d;
  apply_preset(find_preset("gr00t-llm-dit"), d);
  const RunConfig dc = resolve(d);
  EXPECT_EQ(dc.selection.include, std::string(kGr00tDefaultInclude));
  EXPECT_EQ(dc.selection.exclude, std::string(kGr00tDefaultExclude));
}

TEST(Settings, Gr00tPrefixAppliesThePortsDefaults) {
  FakeEnv env({"GR00T_DUQUANT_BLOCK=8"});
  Settings s;
  apply_environment("GR00T_DUQUANT_", env.get(), s);
  const RunConfig c = resolve(s);
  EXPECT_EQ(c.runtime, Runtime::gr00t);
  EXPECT_EQ(c.selection.include, std::string(kGr00tDefaultInclude));
  EXPECT_EQ(c.selection.exclude, std::string(kGr00tDefaultExclude));
  // The port's variables replace its defaults, as in OpenPI.
  FakeEnv custom({"GR00T_DUQUANT_INCLUDE=ff\\.net", "GR00T_DUQUANT_INCLUDE_ACTION_HEAD=1"});
  Settings t;
  apply_environment("GR00T_DUQUANT_", custom.get(), t);
  const RunConfig ct = resolve(t);
  EXPECT_EQ(ct.selection.include, "ff\\.net");
  EXPECT_EQ(ct.selection.exclude, std::string(kGr00tDefaultExclude));
  EXPECT_TRUE(ct.selection.include_action_head);
}

TEST(Settings, RuntimePrecedenceFlagConfigPresetEnvironment) {
  FakeEnv env({});
  {  // environment prefix alone
    Settings s;
    apply_environment("GR00T_DUQUANT_", env.get(), s);
    EXPECT_EQ(resolve(s).runtime, Runtime::gr00t);
    EXPECT_TRUE(overridden_runtime_claims(s).empty());
  }
  {  // a preset beats the environment prefix, with a warning naming both
    Settings s;
    apply_preset(find_preset("openpi-dit"), s);
    apply_environment("GR00T_DUQUANT_", env.get(), s);
    const RunConfig c = resolve(s);
    EXPECT_EQ(c.runtime, Runtime::openpi);
    EXPECT_EQ(c.selection.include, std::string(kDefaultInclude));  // the winner's defaults
    const auto w = overridden_runtime_claims(s);
    ASSERT_EQ(w.size(), 1u);
    EXPECT_NE(w[0].find("--env-prefix GR00T_DUQUANT_"), std::string::npos) << w[0];
    EXPECT_NE(w[0].find("preset 'openpi-dit'"), std::string::npos) << w[0];
  }
  {  // a configuration file beats a preset; the flag beats both
    Settings s;
    apply_preset(find_preset("gr00t-llm-dit"), s);
    apply_config_text(R"({"runtime": "openpi"})", "m.json", s);
    EXPECT_EQ(resolve(s).runtime, Runtime::openpi);
    s.claim_runtime(Runtime::openpi, RuntimeSource::flag, "--runtime");
    EXPECT_EQ(resolve(s).runtime, Runtime::openpi);
  }
  {  // two explicit sources that disagree: an error naming both
    Settings s;
    apply_config_text(R"({"runtime": "openpi"})", "m.json", s);
    s.claim_runtime(Runtime::gr00t, RuntimeSource::flag, "--runtime");
    try {
      resolve(s);
      FAIL() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::usage);
      EXPECT_NE(std::string(e.what()).find("m.json: runtime"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find("--runtime"), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(parse_runtime("groot", "--runtime"), Error);
}

TEST(Settings, NamingKnobs) {
  Settings s;
  s.set(Knob::strip_prefix, "model.", "--strip-prefix");
  s.add_not_linear("future_", "--not-linear");
  s.add_not_linear("(?:^|\\.)proj_out_\\d$", "--not-linear");
  RunConfig c = resolve(s);
  EXPECT_EQ(c.naming.strip_prefix, std::optional<std::string>("model."));
  EXPECT_FALSE(c.naming.add_prefix);
  EXPECT_EQ(c.selection.not_linear.size(), 2u);
  Settings keep;
  keep.set(Knob::strip_prefix, "", "--strip-prefix");
  EXPECT_EQ(resolve(keep).naming.strip_prefix, std::optional<std::string>(""));
  for (const char* bad : {"has space.", "tab\t", "\xff."}) {
    Settings b;
    b.set(Knob::strip_prefix, bad, "--strip-prefix");
    EXPECT_THROW(resolve(b), Error) << bad;
  }
  Settings empty_add;
  empty_add.set(Knob::add_prefix, "", "--add-prefix");
  EXPECT_THROW(resolve(empty_add), Error);
  Settings bad_re;
  bad_re.add_not_linear("(", "--not-linear");
  EXPECT_THROW(resolve(bad_re), Error);
}

}  // namespace
}  // namespace duquant

// Settings: the runtime's defaults, the precedence defaults < preset < environment < flags through
// apply_preset()/apply_environment()/resolve() with a fake environ array, and every malformed
// value rejected with an error naming its source.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "duquant/error.hpp"
#include "duquant/presets.hpp"
#include "duquant/settings.hpp"

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
               "OPENPI_DUQUANT_LS=0", "OPENPI_DUQUANT_ACT_PCT=100", "OPENPI_DUQUANT_CALIB_STEPS= 7 ",
               "UNRELATED=1"});
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
  EXPECT_EQ(c.selection.scope, "from.env.");                        // env beats preset
  EXPECT_EQ(c.selection.include, ".*(q_proj|k_proj|v_proj|o_proj).*");  // preset beats default
  EXPECT_EQ(c.selection.exclude, std::string(kDefaultExclude));     // default where nobody spoke
  EXPECT_EQ(c.quant.block, 8);                                      // flag beats env
  EXPECT_EQ(c.quant.block_out, 8);
  EXPECT_EQ(c.quant.abits, 6);
}

TEST(Settings, Gr00tPresetSetsRuntimeAndGr00tExpressions) {
  Settings s;
  apply_preset(find_preset("gr00t-llm-dit-mlp"), s);
  const RunConfig c = resolve(s);
  EXPECT_EQ(c.runtime, Runtime::gr00t);
  EXPECT_EQ(c.selection.scope, "");
  EXPECT_EQ(c.selection.include,
            ".*(backbone\\..*\\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)|"
            "action_head\\..*\\.mlp\\.(gate_proj|up_proj|down_proj)).*");
  EXPECT_EQ(c.selection.exclude,
            "(?:^|\\.)(vision|radio|norm|ln|layernorm|embed|lm_head)(?:\\.|$)|action_head\\..*\\.self_attn\\.");
}

TEST(Settings, WbitsRulesKeepTheirOrder) {
  Settings s;
  s.add_wbits_rule("mlp=8", "--wbits-rule");
  s.add_wbits_rule("a=b=6", "--wbits-rule");  // the expression is everything before the last '='
  const RunConfig c = resolve(s);
  EXPECT_EQ(c.selection.wbits_rules, (std::vector<std::pair<std::string, int>>{{"mlp", 8}, {"a=b", 6}}));
}

// Every malformed value: duquant::Error of kind usage whose message names the source.
void expect_bad(Knob knob, const std::string& env_name, const std::string& value) {
  FakeEnv env({env_name + "=" + value});
  Settings s;
  apply_environment("OPENPI_DUQUANT_", env.get(), s);
  ASSERT_NE(s.get(knob), nullptr) << env_name;
  try {
    resolve(s);
    FAIL() << env_name << "=" << value << " accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_EQ(exit_code(e.kind()), 2);
    EXPECT_NE(std::string(e.what()).find(env_name), std::string::npos) << e.what();
  }
}

TEST(Settings, MalformedValuesNameTheirSource) {
  expect_bad(Knob::permute, "OPENPI_DUQUANT_PERMUTE", "maybe");
  expect_bad(Knob::include_action_head, "OPENPI_DUQUANT_INCLUDE_ACTION_HEAD", "yes");
  expect_bad(Knob::row_rot, "OPENPI_DUQUANT_ROW_ROT", "sideways");
  expect_bad(Knob::block, "OPENPI_DUQUANT_BLOCK", "0");
  expect_bad(Knob::block, "OPENPI_DUQUANT_BLOCK", "16x");
  expect_bad(Knob::block, "OPENPI_DUQUANT_BLOCK", "");
  expect_bad(Knob::block_out, "OPENPI_DUQUANT_BLOCK_OUT", "-16");
  expect_bad(Knob::lambda_smooth, "OPENPI_DUQUANT_LS", "1.5");
  expect_bad(Knob::lambda_smooth, "OPENPI_DUQUANT_LS", "nan");
  expect_bad(Knob::act_pct, "OPENPI_DUQUANT_ACT_PCT", "0");
  expect_bad(Knob::act_pct, "OPENPI_DUQUANT_ACT_PCT", "100.5");
  expect_bad(Knob::wbits_default, "OPENPI_DUQUANT_WBITS_DEFAULT", "9");
  expect_bad(Knob::abits, "OPENPI_DUQUANT_ABITS", "1");
  expect_bad(Knob::calib_steps, "OPENPI_DUQUANT_CALIB_STEPS", "0");
  expect_bad(Knob::wbits, "OPENPI_DUQUANT_WBITS", "a:99");
  expect_bad(Knob::wbits, "OPENPI_DUQUANT_WBITS", "nocolon");
  expect_bad(Knob::wbits, "OPENPI_DUQUANT_WBITS", "a:4,a:8");
  expect_bad(Knob::include, "OPENPI_DUQUANT_INCLUDE", "(q_proj");
  expect_bad(Knob::exclude, "OPENPI_DUQUANT_EXCLUDE", "[norm");
}

TEST(Settings, MalformedFlagValuesNameTheFlag) {
  Settings s;
  s.set(Knob::lambda_smooth, "1.5", "--lambda-smooth");
  EXPECT_THROW(
      {
        try {
          resolve(s);
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("--lambda-smooth"), std::string::npos) << e.what();
          throw;
        }
      },
      Error);
  Settings r;
  r.add_wbits_rule("(mlp=8", "--wbits-rule");
  EXPECT_THROW(resolve(r), Error);
  Settings q;
  q.add_wbits_rule("mlp", "--wbits-rule");  // no '='
  EXPECT_THROW(resolve(q), Error);
}

TEST(Settings, UnknownPrefixAndPresetAreUsageErrors) {
  FakeEnv env({});
  Settings s;
  try {
    apply_environment("DUQUANT_", env.get(), s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("--env-prefix"), std::string::npos) << e.what();
  }
  try {
    find_preset("openpi-everything");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    const std::string what = e.what();
    EXPECT_NE(what.find("--preset"), std::string::npos) << what;
    EXPECT_NE(what.find("openpi-dit-qkvo"), std::string::npos) << what;  // lists the known ones
  }
}

}  // namespace
}  // namespace duquant

// list-linears as a user runs it: exit codes (0 ok, 2 bad flag or value, 3 corrupt file, 4 missing
// file, 5 no match), precedence preset < environment < flags, warnings, --wbits / --wbits-rule,
// --layers, and the --json form checked against the fixture's real byte counts.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"

namespace duquant {
namespace {

constexpr const char* kExpert = "paligemma_with_expert.gemma_expert.model.";

std::string tiny() { return test::tiny_checkpoint().string(); }
std::string expert(const std::string& rest) { return std::string(kExpert) + rest; }

// The "W<bits>" of a layer's dry-run line ("" when the layer is not listed).
std::string bits_of(const std::string& out, const std::string& layer) {
  const std::string key = "[DRYRUN] " + layer + ": ";
  const auto at = out.find(key);
  if (at == std::string::npos) return "";
  const auto w = out.find(" W", at + key.size());
  return out.substr(w + 1, out.find(' ', w + 1) - w - 1);
}

std::size_t count_lines(const std::string& out, const std::string& needle) {
  std::size_t n = 0;
  for (auto at = out.find(needle); at != std::string::npos; at = out.find(needle, at + 1)) ++n;
  return n;
}

TEST(Cli, ExitCodeOk) { EXPECT_EQ(test::run_cli({"list-linears", tiny(), "--preset", "openpi-dit"}).exit_code, 0); }

TEST(Cli, ExitCode2ForBadFlagsAndValues) {
  const std::vector<std::vector<std::string>> cases{
      {"list-linears", tiny(), "--bogus"},  // CLI11: unknown flag
      {"list-linears"},                     // CLI11: missing checkpoint
      {"list-linears", tiny(), "--block"},  // CLI11: missing value
      {"no-such-command"},                  // CLI11: unknown subcommand
      {"list-linears", tiny(), "--block", "16x"},
      {"list-linears", tiny(), "--block", "0"},
      {"list-linears", tiny(), "--permute", "maybe"},
      {"list-linears", tiny(), "--permute", "1", "--no-permute"},
      {"list-linears", tiny(), "--row-rot", "sideways"},
      {"list-linears", tiny(), "--lambda-smooth", "1.5"},
      {"list-linears", tiny(), "--act-pct", "0"},
      {"list-linears", tiny(), "--wbits-default", "9"},
      {"list-linears", tiny(), "--wbits", "a:99"},
      {"list-linears", tiny(), "--wbits", "nocolon"},
      {"list-linears", tiny(), "--wbits-rule", "mlp"},
      {"list-linears", tiny(), "--wbits-rule", "(mlp=8"},
      {"list-linears", tiny(), "--include", "(q_proj"},
      {"list-linears", tiny(), "--exclude", "[norm"},
      {"list-linears", tiny(), "--preset", "openpi-everything"},
      {"list-linears", tiny(), "--env-prefix", "DUQUANT_"},
  };
  for (const auto& args : cases) {
    const auto r = test::run_cli(args);
    std::string joined;
    for (const auto& a : args) joined += a + " ";
    EXPECT_EQ(r.exit_code, 2) << joined << "\n" << r.err;
    EXPECT_FALSE(r.err.empty()) << joined;
  }
}

TEST(Cli, MalformedEnvironmentValuesExit2NamingTheVariable) {
  const std::vector<std::string> cases{
      "OPENPI_DUQUANT_PERMUTE=maybe",   "OPENPI_DUQUANT_ROW_ROT=sideways", "OPENPI_DUQUANT_BLOCK=0",
      "OPENPI_DUQUANT_BLOCK=16x",       "OPENPI_DUQUANT_LS=1.5",           "OPENPI_DUQUANT_ACT_PCT=0",
      "OPENPI_DUQUANT_WBITS_DEFAULT=9", "OPENPI_DUQUANT_WBITS=a:99",       "OPENPI_DUQUANT_WBITS=nocolon",
      "OPENPI_DUQUANT_INCLUDE=(q_proj", "OPENPI_DUQUANT_EXCLUDE=[norm",    "OPENPI_DUQUANT_CALIB_STEPS=-1"};
  for (const auto& entry : cases) {
    const auto r = test::run_cli({"list-linears", tiny(), "--env-prefix", "OPENPI_DUQUANT_"}, {entry});
    EXPECT_EQ(r.exit_code, 2) << entry << "\n" << r.err;
    const std::string name = entry.substr(0, entry.find('='));
    EXPECT_NE(r.err.find(name), std::string::npos) << entry << "\n" << r.err;
    // Without --env-prefix the environment is not read.
    EXPECT_EQ(test::run_cli({"list-linears", tiny()}, {entry}).exit_code, 0) << entry;
  }
  const auto g = test::run_cli({"list-linears", tiny(), "--env-prefix", "GR00T_DUQUANT_"}, {"GR00T_DUQUANT_BLOCK=0"});
  EXPECT_EQ(g.exit_code, 2);
  EXPECT_NE(g.err.find("GR00T_DUQUANT_BLOCK"), std::string::npos) << g.err;
}

TEST(Cli, ExitCode3ForACorruptFile) {
  const auto path = test::temp_dir() / "corrupt.safetensors";
  {
    std::ofstream out(path, std::ios::binary);
    const std::string header = "{\"a.weight\":{\"dtype\":\"F32\",\"shape\":[4,4],\"data_offsets\":[0,64]}}";
    const std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
    out << header << std::string(10, '\0');  // 10 bytes of data where the header promises 64
  }
  const auto r = test::run_cli({"list-linears", path.string()});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_NE(r.err.find("corrupt.safetensors"), std::string::npos) << r.err;
  const auto garbage = test::temp_dir() / "garbage.safetensors";
  std::ofstream(garbage, std::ios::binary) << "not a safetensors file at all";
  EXPECT_EQ(test::run_cli({"list-linears", garbage.string()}).exit_code, 3);
}

TEST(Cli, ExitCode4ForAMissingFile) {
  const auto missing = test::temp_dir() / "missing.safetensors";
  const auto r = test::run_cli({"list-linears", missing.string()});
  EXPECT_EQ(r.exit_code, 4) << r.err;
  EXPECT_NE(r.err.find("missing.safetensors"), std::string::npos) << r.err;
}

TEST(Cli, ExitCode5WhenNothingMatches) {
  EXPECT_EQ(test::run_cli({"list-linears", tiny(), "--include", "xyz_proj"}).exit_code, 5);
  EXPECT_EQ(test::run_cli({"list-linears", tiny(), "--json", "--include", "xyz_proj"}).exit_code, 5);
  EXPECT_EQ(test::run_cli({"list-linears", tiny(), "--preset", "gr00t-llm-dit-mlp"}).exit_code, 5);
}

TEST(Cli, PrecedencePresetEnvironmentFlags) {
  const std::vector<std::string> env{"OPENPI_DUQUANT_SCOPE=paligemma_with_expert.paligemma.model.language_model.",
                                     "OPENPI_DUQUANT_BLOCK=32", "OPENPI_DUQUANT_ABITS=6"};
  // preset openpi-dit-qkvo: its include (q/k/v/o) stays; env scope beats the preset's; flag block beats env.
  const auto r = test::run_cli(
      {"list-linears", tiny(), "--preset", "openpi-dit-qkvo", "--env-prefix", "OPENPI_DUQUANT_", "--block", "8"}, env);
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("[DUQUANT] SCOPE filter: 'paligemma_with_expert.paligemma.model.language_model.'\n"),
            std::string::npos);
  EXPECT_NE(r.out.find("[DUQUANT] Matched Linear layers: 8\n"), std::string::npos) << r.out;
  EXPECT_EQ(count_lines(r.out, " A6 perm=True block_in=8 block_out=8 row_rot=restore\n"), 8u) << r.out;
  EXPECT_EQ(r.out.find("mlp."), std::string::npos);
  // Without --env-prefix, the same environment changes nothing.
  const auto plain = test::run_cli({"list-linears", tiny(), "--preset", "openpi-dit-qkvo"}, env);
  EXPECT_EQ(count_lines(plain.out, "[DUQUANT][DRYRUN] paligemma_with_expert.gemma_expert."), 8u);
  EXPECT_EQ(count_lines(plain.out, " A8 perm=True block_in=16 block_out=16 "), 8u);
}

TEST(Cli, UnknownVariableWarnsRuntimeOnlyAreSilent) {
  const auto r = test::run_cli({"list-linears", tiny(), "--env-prefix", "OPENPI_DUQUANT_"},
                               {"OPENPI_DUQUANT_FOO=1", "OPENPI_DUQUANT_PACKDIR=/x", "OPENPI_DUQUANT_DRYRUN=1",
                                "OPENPI_DUQUANT_DEBUG=1", "OPENPI_DUQUANT_PROFILE=1"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.err, "duquant: warning: OPENPI_DUQUANT_FOO is not a variable the runtime reads; ignored\n");
}

TEST(Cli, WbitsExactBeatsRulesAndFirstRuleWins) {
  const auto r = test::run_cli({"list-linears", tiny(), "--preset", "openpi-dit", "--wbits-rule", "mlp\\.=6",
                                "--wbits-rule", "down_proj=8", "--wbits-rule", "q_proj$=3", "--wbits",
                                expert("layers.0.mlp.up_proj:8") + "," + expert("layers.1.self_attn.k_proj:5")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(bits_of(r.out, expert("layers.0.mlp.up_proj")), "W8");    // exact beats the mlp rule
  EXPECT_EQ(bits_of(r.out, expert("layers.1.mlp.up_proj")), "W6");    // rule
  EXPECT_EQ(bits_of(r.out, expert("layers.0.mlp.down_proj")), "W6");  // first matching rule wins
  EXPECT_EQ(bits_of(r.out, expert("layers.0.self_attn.q_proj")), "W3");
  EXPECT_EQ(bits_of(r.out, expert("layers.1.self_attn.k_proj")), "W5");  // exact, no rule
  EXPECT_EQ(bits_of(r.out, expert("layers.0.self_attn.k_proj")), "W4");  // default
  EXPECT_EQ(r.err, "");
}

TEST(Cli, WbitsDefaultAndUnusedWbitsWarn) {
  const auto r = test::run_cli(
      {"list-linears", tiny(), "--preset", "openpi-dit", "--wbits-default", "6", "--wbits", "not.a.layer:8"});
  ASSERT_EQ(r.exit_code, 0);
  EXPECT_EQ(count_lines(r.out, " W6 A8 "), 14u);
  EXPECT_NE(r.err.find("duquant: warning: --wbits names 'not.a.layer'"), std::string::npos) << r.err;
}

TEST(Cli, LayersSelectExactlyThoseAndIgnoreIncludeExclude) {
  const std::string dense = expert("layers.1.input_layernorm.dense");  // matched by no include
  const std::string up = expert("layers.0.mlp.up_proj");
  const auto r =
      test::run_cli({"list-linears", tiny(), "--layers", dense + "," + up, "--include", "nothing", "--exclude", ".*"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // Module order, not the order given.
  EXPECT_EQ(r.out,
            "[DUQUANT] SCOPE filter: ''\n[DUQUANT] Matched Linear layers: 2\n"
            "[DUQUANT][DRYRUN] " +
                up +
                ": Linear(64->256) W4 A8 perm=True block_in=16 block_out=16 row_rot=restore\n"
                "[DUQUANT][DRYRUN] " +
                dense +
                ": Linear(64->192) W4 A8 perm=True block_in=16 block_out=16 row_rot=restore\n"
                "[DUQUANT] Dry-run total layers listed: 2\n");
  EXPECT_EQ(r.err, "");
  // The scope still applies to LAYERS.
  const auto scoped = test::run_cli({"list-linears", tiny(), "--layers", up + ",action_in_proj", "--scope", kExpert});
  EXPECT_EQ(count_lines(scoped.out, "[DRYRUN]"), 1u) << scoped.out;
}

TEST(Cli, UnknownLayersNameWarns) {
  const auto r = test::run_cli({"list-linears", tiny(), "--layers", expert("layers.0.mlp.up_proj") + ",no.such.layer"});
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(count_lines(r.out, "[DRYRUN]"), 1u);
  EXPECT_NE(r.err.find("duquant: warning: --layers names 'no.such.layer'"), std::string::npos) << r.err;
  const auto none = test::run_cli({"list-linears", tiny(), "--layers", "no.such.layer"});
  EXPECT_EQ(none.exit_code, 5);
}

TEST(Cli, JsonCarriesEveryFieldAndRealByteCounts) {
  const auto r = test::run_cli({"list-linears", tiny(), "--preset", "openpi-dit", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.at("layers").size(), 14u);
  for (const auto& layer : j.at("layers"))
    for (const char* key :
         {"name", "shape", "dtype", "wbits", "abits", "bias", "bytes", "tensor_bytes", "npz_bytes", "packed_bytes"})
      EXPECT_TRUE(layer.contains(key)) << key;
  const auto& q = j.at("layers").at(0);
  EXPECT_EQ(q.at("name"), expert("layers.0.self_attn.q_proj"));
  EXPECT_EQ(q.at("shape"), nlohmann::json::array({128, 64}));
  EXPECT_EQ(q.at("dtype"), "BF16");
  EXPECT_EQ(q.at("wbits"), 4);
  EXPECT_EQ(q.at("abits"), 8);
  EXPECT_EQ(q.at("bias"), false);
  EXPECT_EQ(q.at("bytes"), 16384);  // 128 x 64 BF16, as stored in the fixture
  // codes 128*32 + scales 4*128 + perm 8*64 + Rin 4 blocks 16x16 f32 + Rout 8 blocks 16x16 f32
  // + test_x [4, 64] and test_y_fp, test_y_q [4, 128] f32
  EXPECT_EQ(q.at("tensor_bytes"), 4096 + 512 + 512 + 4096 + 8192 + 4 * (64 + 2 * 128) * 4);
  EXPECT_EQ(q.at("packed_bytes"), q.at("tensor_bytes").get<std::uint64_t>() + q.at("npz_bytes").get<std::uint64_t>());
  EXPECT_EQ(j.at("layers").at(6).at("name"), expert("layers.0.mlp.down_proj"));
  EXPECT_EQ(j.at("layers").at(6).at("bytes"), 32768);
  const auto& totals = j.at("totals");
  EXPECT_EQ(totals.at("layers"), 14);
  EXPECT_EQ(totals.at("linear_layers_in_checkpoint"), 49);
  // Per expert layer: q 16384 + k 2048 + v 2048 + o 16384 + gate/up/down 3 x 32768.
  EXPECT_EQ(totals.at("bytes"), 2 * 135168);
  EXPECT_EQ(totals.at("parameters"), 2 * 135168 / 2);
  // The whole pack directory: npz files, quantized.safetensors (header and data), the manifest.
  EXPECT_EQ(totals.at("packed_bytes"), totals.at("npz_bytes").get<std::uint64_t>() +
                                           totals.at("safetensors_bytes").get<std::uint64_t>() +
                                           totals.at("manifest_bytes").get<std::uint64_t>());
  EXPECT_GT(totals.at("safetensors_bytes").get<std::uint64_t>(), totals.at("tensor_bytes").get<std::uint64_t>());
  EXPECT_EQ(j.at("config").at("preset"), "openpi-dit");
  EXPECT_EQ(j.at("config").at("scope"), kExpert);
  EXPECT_EQ(j.at("config").at("block_out"), 16);
}

TEST(Cli, JsonCountsBiasBytes) {
  const std::string q =
      "paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj";
  const auto r =
      test::run_cli({"list-linears", tiny(), "--layers", q + ",action_out_proj", "--include-action-head", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.at("layers").size(), 2u);
  EXPECT_EQ(j.at("layers").at(0).at("name"), q);
  EXPECT_EQ(j.at("layers").at(0).at("bias"), true);
  EXPECT_EQ(j.at("layers").at(0).at("bytes"), 10368 + 144);  // [72,72] + [72] BF16
  EXPECT_EQ(j.at("layers").at(1).at("name"), "action_out_proj");
  EXPECT_EQ(j.at("layers").at(1).at("bytes"), 4096 + 64);  // [32,64] + [32] BF16
  EXPECT_EQ(j.at("totals").at("bytes"), 10512 + 4160);
}

TEST(Cli, ActionHeadSkippedEvenWhenNamedInLayers) {
  const auto r = test::run_cli({"list-linears", tiny(), "--layers", "action_out_proj,action_in_proj", "--json"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.at("layers").size(), 1u);
  EXPECT_EQ(j.at("layers").at(0).at("name"), "action_in_proj");
  EXPECT_EQ(j.at("skipped").at("action_head"), nlohmann::json::array({"action_out_proj"}));
}

}  // namespace
}  // namespace duquant

// Hostile text (issue 16, second round): bytes that are not UTF-8 on their way to JSON output, layer
// names that the runtime's file-name rule maps to one npz file, and files the runtime would read
// otherwise than a lenient reader (an npz `meta` with a NUL inside, a duquant pack without its
// manifest). Each case ends with the documented exit code and a message naming what is wrong.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <sys/stat.h>

#include <string>
#include <vector>

#include "formats/npy.hpp"
#include "formats/strict_json.hpp"
#include "packfmt/layout.hpp"
#include "robustness/robustness_util.hpp"
#include "verify/verify_test_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using test::contains;
using test::HandLayer;
using test::run_cli;
using vtest::json;

HandLayer hand(const std::string& name, std::uint32_t seed, std::uint64_t rows = 16, std::uint64_t cols = 32) {
  return HandLayer{name, rows, cols, test::pattern_values(rows, cols, seed)};
}

test::CliResult pack(const fs::path& ckpt, const fs::path& out, std::vector<std::string> extra = {},
                     const std::vector<std::string>& env = {}) {
  std::vector<std::string> args{"pack", ckpt.string(), "-o", out.string(), "--threads", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_cli(args, env);
}

std::string describe(const test::CliResult& r) {
  return "exit " + std::to_string(r.exit_code) + "\nstdout:\n" + r.out + "\nstderr:\n" + r.err;
}

// The run ended with `code` and its error message holds every one of `parts`.
void expect_refused(const test::CliResult& r, int code, const std::vector<std::string>& parts) {
  vtest::expect_no_crash(r, "duquant");
  EXPECT_EQ(r.exit_code, code) << describe(r);
  for (const std::string& p : parts) EXPECT_TRUE(contains(r.err, p)) << "'" << p << "' not in\n" << describe(r);
}

// ---------------------------------------------------------------------------------------------
// 1. Text that is not UTF-8

TEST(HostileText, Utf8CheckFindsTheFirstBadByte) {
  using formats::invalid_utf8_offset;
  EXPECT_FALSE(invalid_utf8_offset("plain.q_proj"));
  EXPECT_FALSE(invalid_utf8_offset("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_EQ(invalid_utf8_offset("ab\xff"), 2u);
  EXPECT_EQ(invalid_utf8_offset("a\xc0\x80"), 1u);         // overlong NUL
  EXPECT_EQ(invalid_utf8_offset("a\xe0\x80\x80"), 1u);     // overlong 3-byte form
  EXPECT_EQ(invalid_utf8_offset("ab\xed\xa0\x80"), 2u);    // a surrogate
  EXPECT_EQ(invalid_utf8_offset("\xf4\x90\x80\x80"), 0u);  // above U+10FFFF
  EXPECT_EQ(invalid_utf8_offset("abc\xe2\x82"), 3u);       // cut short
  EXPECT_EQ(invalid_utf8_offset("x\x80"), 1u);             // a lone continuation byte
}

// Every JSON text duquant writes goes through dump_json, which cannot throw; the replaced text is
// what json_safe_text() gives, so a name read back compares equal.
TEST(HostileText, DumpJsonNeverThrowsAndMatchesSafeText) {
  for (const std::string& bad : {std::string("ab\xff"
                                             "cd"),
                                 std::string("\xc3"), std::string("x\xed\xa0\x80y"), std::string("ok\xe2\x82\xac")}) {
    nlohmann::ordered_json j;
    j["name"] = bad;
    j[bad] = 1;
    std::string text;
    ASSERT_NO_THROW(text = formats::dump_json(j, 2));
    const nlohmann::json back = nlohmann::json::parse(text);  // valid JSON, valid UTF-8
    EXPECT_EQ(back["name"].get<std::string>(), formats::json_safe_text(bad));
    EXPECT_FALSE(formats::invalid_utf8_offset(formats::json_safe_text(bad)));
  }
  EXPECT_EQ(formats::json_safe_text("ab\xff"), "ab\xef\xbf\xbd");
  EXPECT_EQ(formats::json_safe_text("plain"), "plain");
}

struct BadOption {
  std::string label;
  std::vector<std::string> args;  // added to `list-linears` and `pack`
  std::vector<std::string> env;
  std::string names;   // the option or variable the message must name
  std::string offset;  // "offset N"
};

std::vector<BadOption> bad_options() {
  return {
      {"Scope", {"--scope", "m\xfe"}, {}, "--scope", "offset 1"},
      {"Layers", {"--layers", "m.q_proj,m.k\xc3"}, {}, "--layers", "offset 12"},
      {"Wbits", {"--wbits", "m.q_proj\xe2\x82:4"}, {}, "--wbits", "offset 8"},
      {"Include", {"--include", ".*q_proj\xed\xa0\x80"}, {}, "--include", "offset 8"},
      {"Exclude", {"--exclude", "\x80norm"}, {}, "--exclude", "offset 0"},
      {"WbitsRule", {"--wbits-rule", "q_\xff=8"}, {}, "--wbits-rule", "offset 2"},
      {"NotLinear", {"--not-linear", "emb\xc0\x80"}, {}, "--not-linear", "offset 3"},
      {"EnvScope",
       {"--env-prefix", "OPENPI_DUQUANT_"},
       {"OPENPI_DUQUANT_SCOPE=m\xff."},
       "OPENPI_DUQUANT_SCOPE",
       "offset 1"},
      {"EnvLayers",
       {"--env-prefix", "OPENPI_DUQUANT_"},
       {"OPENPI_DUQUANT_LAYERS=\xf4\x90\x80\x80"},
       "OPENPI_DUQUANT_LAYERS",
       "offset 0"},
      {"EnvWbits",
       {"--env-prefix", "GR00T_DUQUANT_"},
       {"GR00T_DUQUANT_WBITS=m.q_proj:4,m.\xe9:8"},
       "GR00T_DUQUANT_WBITS",
       "offset 13"},
  };
}

// Selection and configuration text that is not UTF-8 is a usage error before any work: the
// message names the option or variable and the byte offset; no output folder is created.
TEST(HostileText, NonUtf8OptionsAreUsageErrors) {
  const fs::path dir = vtest::temp_dir();
  const fs::path ckpt =
      test::write_f32_checkpoint(dir / "model.safetensors", {hand("m.q_proj", 1), hand("m.k_proj", 2)});
  for (const BadOption& c : bad_options()) {
    SCOPED_TRACE(c.label);
    std::vector<std::string> args{"list-linears", ckpt.string(), "--json"};
    args.insert(args.end(), c.args.begin(), c.args.end());
    const test::CliResult listed = run_cli(args, c.env);
    expect_refused(listed, 2, {c.names, c.offset, "not valid UTF-8"});
    EXPECT_TRUE(listed.out.empty()) << describe(listed);
    const fs::path out = dir / ("out-" + c.label);
    expect_refused(pack(ckpt, out, c.args, c.env), 2, {c.names, c.offset, "not valid UTF-8"});
    EXPECT_FALSE(fs::exists(out)) << "a refused pack created " << out;
  }
}

// A checkpoint whose file name is not UTF-8 (Linux file names are bytes): the pack is written, the
// manifest records the name with U+FFFD for the bad byte, verify -c is clean (no checkpoint-files
// warning), and list-linears / inspect / verify --json print valid JSON.
TEST(HostileText, NonUtf8CheckpointFileNamePacksAndVerifies) {
  const fs::path dir = vtest::temp_dir();
  const fs::path ckpt =
      test::write_f32_checkpoint(dir / "model\xff\xfe.safetensors", {hand("m.q_proj", 3), hand("m.k_proj", 4)});
  const fs::path out = dir / "pack\xff";
  const test::CliResult packed = pack(ckpt, out);
  vtest::expect_no_crash(packed, "pack");
  ASSERT_EQ(packed.exit_code, 0) << describe(packed);
  const std::string text = test::read_text(out / "manifest.json");
  nlohmann::json m;
  ASSERT_NO_THROW(m = formats::parse_strict_json(text, "manifest.json", 64));
  EXPECT_EQ(m["checkpoint"]["source"].get<std::string>(), "model\xef\xbf\xbd\xef\xbf\xbd.safetensors");
  EXPECT_EQ(m["checkpoint"]["files"][0]["name"].get<std::string>(), "model\xef\xbf\xbd\xef\xbf\xbd.safetensors");

  const vtest::VerifyRun v = vtest::verify(out, {"-c", ckpt.string()});
  EXPECT_EQ(v.exit_code(), 0) << vtest::describe(v);
  vtest::expect_no_pack_failures(v);

  const test::CliResult listed = run_cli({"list-linears", ckpt.string(), "--json"});
  vtest::expect_no_crash(listed, "list-linears");
  ASSERT_EQ(listed.exit_code, 0) << describe(listed);
  EXPECT_FALSE(nlohmann::json::parse(listed.out, nullptr, false).is_discarded()) << listed.out;

  const test::CliResult inspected = run_cli({"inspect", out.string(), "--json"});
  vtest::expect_no_crash(inspected, "inspect");
  ASSERT_EQ(inspected.exit_code, 0) << describe(inspected);
  EXPECT_FALSE(nlohmann::json::parse(inspected.out, nullptr, false).is_discarded()) << inspected.out;
}

// The same checkpoint, interrupted after the first layer: --resume finishes it (before, the manifest
// could never be written, so --resume could never finish).
TEST(HostileText, NonUtf8CheckpointFileNameResumes) {
  const fs::path dir = vtest::temp_dir();
  const fs::path ckpt =
      test::write_f32_checkpoint(dir / "m\xc3(.safetensors", {hand("m.q_proj", 5), hand("m.k_proj", 6)});
  const fs::path out = dir / "pack";
  const test::CliResult killed = pack(ckpt, out, {}, {"DUQUANT_TEST_KILL_AT=layer:1"});
  EXPECT_EQ(killed.exit_code, test::kKilledBySigkill) << describe(killed);
  EXPECT_FALSE(fs::exists(out / "manifest.json"));
  const test::CliResult resumed = pack(ckpt, out, {"--resume"});
  vtest::expect_no_crash(resumed, "pack --resume");
  ASSERT_EQ(resumed.exit_code, 0) << describe(resumed);
  EXPECT_TRUE(fs::exists(out / "manifest.json"));
  EXPECT_FALSE(fs::exists(out / ".duquant-work"));
  const vtest::VerifyRun v = vtest::verify(out, {"-c", ckpt.string()});
  EXPECT_EQ(v.exit_code(), 0) << vtest::describe(v);
}

// ---------------------------------------------------------------------------------------------
// 2. Layer names that map to one npz file

struct Collision {
  std::string label;
  std::string first, second, file;
};

std::vector<Collision> collisions() {
  return {
      {"SlashAndUnderscore", "a/b.q_proj", "a_b.q_proj", "a_b.q_proj.npz"},
      {"DoubleDot", "m..q_proj", "m.q_proj", "m.q_proj.npz"},
      {"FourAndThreeDots", "m....q_proj", "m...q_proj", "m..q_proj.npz"},
      {"SpaceAndUnicode", "x y.fc1", "x\xc3\xa9y.fc1", "x_y.fc1.npz"},  // é is one character of two bytes
  };
}

// The runtime's rule, per character of the Python str (a non-ASCII character is one '_', not one per
// UTF-8 byte); ".." -> "." in one left-to-right pass.
TEST(HostileText, FileNameRuleIsPerCharacter) {
  EXPECT_EQ(pack_file_name("paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj"),
            "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj.npz");
  EXPECT_EQ(pack_file_name("x\xc3\xa9y.fc1"), "x_y.fc1.npz");          // é
  EXPECT_EQ(pack_file_name("x\xf0\x9f\x98\x80y.fc1"), "x_y.fc1.npz");  // 😀
  EXPECT_EQ(pack_file_name("a/b c.q_proj"), "a_b_c.q_proj.npz");
  EXPECT_EQ(pack_file_name("m...q_proj"), "m..q_proj.npz");
  EXPECT_EQ(pack_file_name("m....q_proj"), "m..q_proj.npz");
  EXPECT_EQ(pack_file_name("x\xffy"), "x_y.npz");  // a byte that is no character (never a checkpoint name)
  const auto c = pack_file_collisions({"a/b.q_proj", "c.k_proj", "a_b.q_proj", "a b.q_proj"});
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(describe(c[0]), "layers 'a/b.q_proj' and 'a_b.q_proj' both map to the npz file 'a_b.q_proj.npz'");
  EXPECT_EQ(describe(c[1]), "layers 'a/b.q_proj' and 'a b.q_proj' both map to the npz file 'a_b.q_proj.npz'");
  EXPECT_TRUE(pack_file_collisions({"a.q_proj", "b.q_proj", "a.q_proj"}).empty());  // the same name is no collision
}

// Refused in the plan, before any work: exit 3 naming both layers and the file; nothing created.
TEST(HostileText, CollidingLayerNamesAreRefusedBeforeAnyWork) {
  const fs::path dir = vtest::temp_dir();
  for (const Collision& c : collisions()) {
    SCOPED_TRACE(c.label);
    const fs::path ckpt = test::write_f32_checkpoint(dir / (c.label + ".safetensors"),
                                                     {hand(c.first, 7), hand(c.second, 8), hand("z.k_proj", 9)});
    const fs::path out = dir / ("out-" + c.label);
    const test::CliResult r = pack(ckpt, out);
    // The checkpoint stores them in this order; the message names the first stored first.
    expect_refused(r, 3, {"'" + c.first + "'", "'" + c.second + "'", "'" + c.file + "'", "nothing was written"});
    EXPECT_FALSE(fs::exists(out)) << "a refused pack created " << out;
  }
}

// Equal weights used to pack "successfully" with one file listed twice; the same refusal now, and
// an existing folder (--resume, --force) is left as it was.
TEST(HostileText, CollidingLayersWithEqualWeightsAndAnExistingFolder) {
  const fs::path dir = vtest::temp_dir();
  HandLayer a = hand("blk/0.fc1", 10), b = hand("blk_0.fc1", 10);
  ASSERT_EQ(a.values, b.values);
  const fs::path ckpt = test::write_f32_checkpoint(dir / "model.safetensors", {a, b});
  const fs::path out = dir / "out";
  expect_refused(pack(ckpt, out), 3, {"'blk/0.fc1'", "'blk_0.fc1'", "'blk_0.fc1.npz'"});
  EXPECT_FALSE(fs::exists(out));
  fs::create_directories(out / ".duquant-work");
  test::write_f32_checkpoint(out / "keep.safetensors", {hand("k.q_proj", 1)});
  const auto before = test::snapshot(out);
  for (const char* flag : {"--resume", "--force"}) {
    SCOPED_TRACE(flag);
    expect_refused(pack(ckpt, out, {flag}), 3, {"'blk/0.fc1'", "'blk_0.fc1'", "'blk_0.fc1.npz'"});
    EXPECT_EQ(test::snapshot(out), before);
  }
  // A selection that leaves one of them out packs (the message's advice).
  const test::CliResult one = pack(ckpt, dir / "one", {"--layers", "blk_0.fc1"});
  EXPECT_EQ(one.exit_code, 0) << describe(one);
  EXPECT_TRUE(fs::exists(dir / "one" / "blk_0.fc1.npz"));
}

// list-linears lists what the runtime would list (stdout unchanged) and warns, naming both layers
// and the file; exit 0 (a dry run), in text and --json.
TEST(HostileText, ListLinearsWarnsAboutCollidingLayers) {
  const fs::path dir = vtest::temp_dir();
  const fs::path ckpt = test::write_f32_checkpoint(dir / "model.safetensors",
                                                   {hand("a/b.q_proj", 1), hand("a_b.q_proj", 2), hand("c.k_proj", 3)});
  const test::CliResult text = run_cli({"list-linears", ckpt.string()});
  vtest::expect_no_crash(text, "list-linears");
  EXPECT_EQ(text.exit_code, 0) << describe(text);
  EXPECT_TRUE(contains(text.out, "[DUQUANT][DRYRUN] a/b.q_proj: Linear(32->16)")) << text.out;
  EXPECT_TRUE(contains(text.out, "[DUQUANT][DRYRUN] a_b.q_proj: Linear(32->16)")) << text.out;
  EXPECT_TRUE(contains(text.out, "Dry-run total layers listed: 3")) << text.out;
  for (const char* p : {"warning", "'a/b.q_proj'", "'a_b.q_proj'", "'a_b.q_proj.npz'", "exit 3"})
    EXPECT_TRUE(contains(text.err, p)) << p << "\n" << describe(text);
  const test::CliResult j = run_cli({"list-linears", ckpt.string(), "--json"});
  EXPECT_EQ(j.exit_code, 0) << describe(j);
  EXPECT_FALSE(nlohmann::json::parse(j.out, nullptr, false).is_discarded());
  EXPECT_TRUE(contains(j.err, "'a_b.q_proj.npz'")) << describe(j);
  // No warning without a collision.
  const test::CliResult clean = run_cli({"list-linears", ckpt.string(), "--exclude", "a/b"});
  EXPECT_EQ(clean.exit_code, 0) << describe(clean);
  EXPECT_FALSE(contains(clean.err, "warning")) << describe(clean);
}

// A manifest listing two layers under one npz file (hand-edited: pack never writes it) fails verify.
TEST(HostileText, VerifyFailsAManifestWithTwoLayersInOneFile) {
  const fs::path dir = vtest::temp_dir();
  const fs::path ckpt = test::write_f32_checkpoint(dir / "model.safetensors", {hand("a_b.q_proj", 1)});
  const fs::path out = dir / "out";
  ASSERT_EQ(pack(ckpt, out).exit_code, 0);
  nlohmann::ordered_json m = nlohmann::ordered_json::parse(test::read_text(out / "manifest.json"));
  nlohmann::ordered_json twin = m["layers"][0];
  twin["name"] = "a/b.q_proj";
  m["layers"].push_back(twin);
  vtest::write_file(out / "manifest.json", m.dump(2));
  const vtest::VerifyRun v = vtest::verify(out);
  EXPECT_EQ(v.exit_code(), 1) << vtest::describe(v);
  vtest::expect_pack_finding(v, "manifest");
  EXPECT_TRUE(contains(v.cli.out, "layers 'a_b.q_proj' and 'a/b.q_proj' both map to the npz file 'a_b.q_proj.npz'"))
      << vtest::describe(v);
}

// ---------------------------------------------------------------------------------------------
// 3. Judging files as the runtime reads them

// The runtime reads `meta` with numpy and json.loads. Ground truth (numpy 1.24, Python 3.11):
// numpy strips the trailing NULs of a '<U' scalar and nothing else, so
//   '{..}\0\0'      -> '{..}'          json.loads: ok
//   '{..}\0garbage' -> '{..}\0garbage' json.loads: Extra data
//   '{..}\0 '       -> '{..}\0 '       json.loads: Extra data
//   '\0{..}'        -> '\0{..}'        json.loads: Expecting value
//   '\ufeff{..}'    -> '\ufeff{..}'    json.loads: Unexpected UTF-8 BOM
//   '{..} \n'       -> '{..} \n'       json.loads: ok
struct MetaCase {
  std::string label;
  std::string prefix, suffix;  // around the good meta text
  bool runtime_reads_it;
  std::string message;  // in the FAIL
};

std::vector<MetaCase> meta_cases() {
  return {
      {"TrailingNuls", "", std::string("\0\0\0", 3), true, ""},
      {"TrailingWhitespace", "", " \n", true, ""},
      {"NulThenGarbage", "", std::string("\0garbage", 8), false, "NUL character"},
      {"NulThenSpace", "", std::string("\0 ", 2), false, "NUL character"},
      {"NulInTheMiddleAndAtTheEnd", "", std::string("\0x\0\0", 4), false, "NUL character"},
      {"LeadingNul", std::string("\0", 1), "", false, "NUL character"},
      {"ByteOrderMark", "\xef\xbb\xbf", "", false, "byte order mark"},
  };
}

void set_meta(const fs::path& npz, const std::string& prefix, const std::string& suffix) {
  vtest::edit_member(npz, "meta", [&](std::string& npy) {
    const formats::NpyArray a =
        formats::parse_npy(std::span(reinterpret_cast<const std::byte*>(npy.data()), npy.size()), "meta");
    npy = formats::npy_unicode_scalar(prefix + formats::npy_unicode_to_utf8(a, "meta") + suffix);
  });
}

// Decoding: trailing NULs are dropped, inner ones kept (as numpy).
TEST(HostileText, MetaDecodesAsNumpyDoes) {
  for (const MetaCase& c : meta_cases()) {
    SCOPED_TRACE(c.label);
    const std::string npy = formats::npy_unicode_scalar(c.prefix + "{}" + c.suffix);
    const formats::NpyArray a =
        formats::parse_npy(std::span(reinterpret_cast<const std::byte*>(npy.data()), npy.size()), "meta");
    std::string expected = c.prefix + "{}" + c.suffix;
    while (!expected.empty() && expected.back() == '\0') expected.pop_back();
    EXPECT_EQ(formats::npy_unicode_to_utf8(a, "meta"), expected);
  }
}

// verify FAILs (npz, exit 1) an npz whose meta the runtime's json.loads would reject, naming the file
// and why; what the runtime reads fine stays OK. In our pack (its checksum fails too) and in a
// runtime-written pack (no manifest: the meta finding alone decides).
TEST(HostileText, VerifyJudgesMetaAsTheRuntimeReadsIt) {
  const fs::path dir = vtest::temp_dir();
  const fs::path ckpt =
      test::write_f32_checkpoint(dir / "model.safetensors", {hand("m.q_proj", 1), hand("m.k_proj", 2)});
  const fs::path good = dir / "good";
  ASSERT_EQ(pack(ckpt, good).exit_code, 0);
  for (const MetaCase& c : meta_cases()) {
    SCOPED_TRACE(c.label);
    for (const bool runtime_pack : {false, true}) {
      SCOPED_TRACE(runtime_pack ? "without manifest" : "ours");
      const fs::path p = dir / (c.label + (runtime_pack ? "-runtime" : "-ours"));
      vtest::copy_pack(good, p);
      if (runtime_pack) {  // npz files only, as the runtime writes them
        fs::remove(p / "manifest.json");
        fs::remove(p / "quantized.safetensors");
      }
      set_meta(p / "m.q_proj.npz", c.prefix, c.suffix);
      const vtest::VerifyRun v = vtest::verify(p, {"-c", ckpt.string()});
      if (c.runtime_reads_it && runtime_pack) {
        EXPECT_EQ(v.exit_code(), 0) << vtest::describe(v);
        continue;
      }
      EXPECT_EQ(v.exit_code(), 1) << vtest::describe(v);
      if (c.runtime_reads_it) {  // ours: only the checksum of the edited file
        vtest::expect_layer_fail(v, "m.q_proj", "checksum");
        continue;
      }
      vtest::expect_layer_fail(v, "m.q_proj", "npz");
      const json* l = vtest::find_layer(v, "m.q_proj");
      ASSERT_NE(l, nullptr);
      const std::string findings = (*l)["findings"].dump();
      EXPECT_TRUE(contains(findings, "m.q_proj.npz")) << findings;
      EXPECT_TRUE(contains(findings, c.message)) << findings;
      EXPECT_TRUE(contains(findings, "json.loads")) << findings;
      const json* other = vtest::find_layer(v, "m.k_proj");
      ASSERT_NE(other, nullptr);
      EXPECT_EQ(other->value("result", ""), "OK") << vtest::describe(v);
    }
  }
}

// A runtime-written fixture pack with NUL + garbage after its meta: FAIL, the other layers OK.
TEST(HostileText, VerifyFailsNulGarbageMetaInARuntimePack) {
  const fs::path dir = vtest::temp_dir() / "b16";
  vtest::copy_pack(vtest::fixture_pack("b16"), dir);
  const std::string victim = vtest::layer(0, "self_attn.q_proj");
  set_meta(dir / vtest::npz_name(victim), "", std::string("\0\"block_size\": 8}", 17));
  const vtest::VerifyRun v = vtest::verify(dir);
  EXPECT_EQ(v.exit_code(), 1) << vtest::describe(v);
  vtest::expect_layer_fail(v, victim, "npz");
  vtest::expect_others_ok(v, {victim});
}

// Our pack without a readable manifest is not a runtime pack: FAIL missing-manifest naming what is
// there, even with corrupt codes that checking the npz files alone would pass.
TEST(HostileText, VerifyFailsDuquantFilesWithoutManifest) {
  const fs::path dir = vtest::temp_dir();
  const fs::path ckpt =
      test::write_f32_checkpoint(dir / "model.safetensors", {hand("m.q_proj", 1), hand("m.k_proj", 2)});
  const fs::path good = dir / "good";
  ASSERT_EQ(pack(ckpt, good).exit_code, 0);
  const fs::path sharded = dir / "sharded";
  ASSERT_EQ(pack(ckpt, sharded, {"--max-shard-size", "1"}).exit_code, 0);
  ASSERT_TRUE(fs::exists(sharded / "quantized.safetensors.index.json"));

  struct Case {
    std::string label;
    fs::path from;
    std::function<void(const fs::path&)> edit;
    std::string names;  // in the message
    std::string reason = "missing-manifest";
  };
  const std::vector<Case> cases{
      {"Removed", good, [](const fs::path& p) { fs::remove(p / "manifest.json"); }, "quantized.safetensors"},
      {"RemovedCorruptCodes", good,
       [](const fs::path& p) {
         fs::remove(p / "manifest.json");
         vtest::edit_tensor(p / "quantized.safetensors", "m.q_proj.qweight",
                            [](std::string& bytes, const vtest::StTensor& t) {
                              bytes[t.begin] = static_cast<char>(bytes[t.begin] ^ 0x77);
                            });
       },
       "quantized.safetensors"},
      {"DanglingLink", good,
       [](const fs::path& p) {
         fs::remove(p / "manifest.json");
         fs::create_symlink("gone.json", p / "manifest.json");
       },
       "manifest.json", "manifest"},  // the reader reports the link it cannot follow
      {"OnlyTheTempFile", good,
       [](const fs::path& p) {
         fs::rename(p / "manifest.json", p / ".manifest.json.tmp-12345");
         fs::remove(p / "quantized.safetensors");
       },
       ".manifest.json.tmp-12345"},
      {"ShardsOnly", sharded, [](const fs::path& p) { fs::remove(p / "manifest.json"); }, "quantized-00001-of-"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.label);
    const fs::path p = dir / c.label;
    vtest::copy_pack(c.from, p);
    c.edit(p);
    for (const bool with_ckpt : {false, true}) {
      const vtest::VerifyRun v = with_ckpt ? vtest::verify(p, {"-c", ckpt.string()}) : vtest::verify(p);
      EXPECT_EQ(v.exit_code(), 1) << vtest::describe(v);
      vtest::expect_pack_finding(v, c.reason);
      EXPECT_TRUE(contains(v.cli.out, c.names)) << vtest::describe(v);
      EXPECT_FALSE(contains(v.cli.out, "\"no-manifest\"")) << vtest::describe(v);
    }
    const test::CliResult text = run_cli({"verify", p.string()});
    EXPECT_EQ(text.exit_code, 1) << describe(text);
    EXPECT_TRUE(contains(text.out + text.err, "manifest.json")) << describe(text);
  }
  // npz files alone (what the runtime writes) still verify as a runtime pack.
  const fs::path npz_only = dir / "npz-only";
  vtest::copy_pack(good, npz_only);
  fs::remove(npz_only / "manifest.json");
  fs::remove(npz_only / "quantized.safetensors");
  const vtest::VerifyRun v = vtest::verify(npz_only, {"-c", ckpt.string()});
  EXPECT_EQ(v.exit_code(), 0) << vtest::describe(v);
  vtest::expect_pack_finding(v, "no-manifest", "INFO");
}

// The runtime's fixture packs (npz only) still verify clean.
TEST(HostileText, RuntimeFixturePacksStillVerify) {
  for (const char* config : {"b16", "b8-noperm-ls0", "b32-out16"}) {
    SCOPED_TRACE(config);
    const vtest::VerifyRun v = vtest::verify(vtest::fixture_pack(config));
    EXPECT_EQ(v.exit_code(), 0) << vtest::describe(v);
    vtest::expect_pack_finding(v, "no-manifest", "INFO");
  }
}

}  // namespace
}  // namespace duquant

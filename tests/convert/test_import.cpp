// `duquant import`: the runtime's fixture packs become full packs that verify clean against the
// checkpoint, with the runtime's npz files byte for byte and the codes and scales the runtime
// computes (the golden Wq / scales); stale, missing and mismatched inputs are refused by name and
// leave no output, or are skipped and listed with --skip-stale.
#include <gtest/gtest.h>

#include <cmath>

#include "formats/npz.hpp"
#include "packfmt/pack_reader.hpp"
#include "verify/verify_test_util.hpp"

namespace duquant {
namespace {

using namespace vtest;

const std::string kCkpt = test::tiny_checkpoint().string();

// The flags of each fixture configuration (its <config>.config.json).
std::vector<std::string> config_flags(const std::string& config) {
  if (config == "b8-noperm-ls0") return {"--block", "8", "--permute", "0", "--lambda-smooth", "0"};
  if (config == "b32-out16") return {"--block", "32", "--block-out", "16"};
  return {};
}

test::CliResult import_pack(const fs::path& source, const fs::path& out, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args{"import",     source.string(), "--checkpoint", kCkpt,       "-o",
                                out.string(), "--scope",       kScope,         "--threads", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  return test::run_cli(args);
}

class ImportFixture : public ::testing::TestWithParam<std::string> {};

TEST_P(ImportFixture, VerifiesCleanWithTheRuntimesNpzAndGoldenCodes) {
  const std::string config = GetParam();
  const fs::path out = temp_dir() / "imported";
  const auto r = import_pack(fixture_pack(config), out, config_flags(config));
  expect_no_crash(r, "import");
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("imported 14 of the 14 npz files"), std::string::npos) << r.out;

  // verify against the checkpoint: every layer OK, no warning.
  expect_clean(verify(out, {"-c", kCkpt}));

  // The runtime's npz files, byte for byte; the manifest records the import.
  for (const auto& name : expert_layers())
    EXPECT_EQ(read_file(out / npz_name(name)), read_file(fixture_pack(config) / npz_name(name))) << name;
  const json m = json::parse(read_file(out / "manifest.json"));
  ASSERT_TRUE(m.contains("import")) << m.dump(1);
  EXPECT_EQ(m["import"]["source"], fixture_pack(config).string());
  EXPECT_EQ(m["import"]["source_npz"], 14);
  EXPECT_TRUE(m["import"]["skipped"].empty());

  // The codes and scales are what the runtime computes from its rotations: scales bit for bit, and
  // codes equal to the golden fake-quantized weight divided by them.
  const formats::NpzFile golden = formats::NpzFile::open(test::fixtures() / ("openpi-pack-" + config + ".golden.npz"));
  const PackDirectory pack = PackDirectory::open(out);
  for (const auto& name : expert_layers()) {
    const auto q = pack.quantized_layer(name, 4);
    ASSERT_TRUE(q.has_value()) << name;
    const std::vector<float> scales = formats::npy_to_f32(golden.at(name + "|w4|scales"), "scales");
    const std::vector<float> wq = formats::npy_to_f32(golden.at(name + "|w4|Wq"), "Wq");
    ASSERT_EQ(q->scales.size(), scales.size()) << name;
    ASSERT_EQ(q->codes.size(), wq.size()) << name;
    for (std::size_t o = 0; o < scales.size(); ++o) EXPECT_EQ(q->scales[o], scales[o]) << name << " row " << o;
    const std::size_t cols = q->in_features;
    std::size_t differing = 0;
    for (std::size_t k = 0; k < wq.size(); ++k) {
      const float code = std::nearbyint(wq[k] / scales[k / cols]);
      differing += static_cast<float>(q->codes[k]) != code ? 1 : 0;
    }
    EXPECT_EQ(differing, 0u) << name << ": codes differing from golden Wq / scales";
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ImportFixture, ::testing::Values("b16", "b32-out16", "b8-noperm-ls0"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n)
                             if (c == '-') c = '_';
                           return n;
                         });

// Our own pack's npz files, imported, give our pack back: quantized.safetensors byte for byte and the
// same manifest but for its "import" object (the codes are computed from the rotations exactly as
// `pack` computes them from its own).
TEST(Import, OurOwnNpzFilesGiveOurPackBack) {
  const fs::path base = temp_dir();
  ASSERT_EQ(pack(kCkpt, base / "ours").exit_code, 0);
  fs::create_directories(base / "npz-only");
  for (const auto& e : fs::directory_iterator(base / "ours"))
    if (e.path().extension() == ".npz") fs::copy_file(e.path(), base / "npz-only" / e.path().filename());
  const auto r = import_pack(base / "npz-only", base / "imported", {"--preset", "openpi-dit"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_EQ(read_file(base / "imported" / "quantized.safetensors"), read_file(base / "ours" / "quantized.safetensors"));
  json a = json::parse(read_file(base / "ours" / "manifest.json"));
  json b = json::parse(read_file(base / "imported" / "manifest.json"));
  EXPECT_TRUE(b.contains("import"));
  b.erase("import");
  EXPECT_EQ(a, b);
}

// Byte-identical reruns, whatever the thread count.
TEST(Import, SameBytesOnEveryRunAndThreadCount) {
  const fs::path base = temp_dir();
  const fs::path a = base / "a", b = base / "b";
  ASSERT_EQ(import_pack(fixture_pack("b16"), a).exit_code, 0);
  auto args = std::vector<std::string>{
      "import", fixture_pack("b16").string(), "--checkpoint", kCkpt, "-o", b.string(), "--scope", kScope, "--threads",
      "2"};
  ASSERT_EQ(test::run_cli(args).exit_code, 0);
  for (const auto& e : fs::directory_iterator(a))
    EXPECT_EQ(read_file(e.path()), read_file(b / e.path().filename())) << e.path().filename();
}

// A copy of the b16 fixture pack where layer 1's up_proj holds gate_proj's npz (same shape, another
// weight: stale) and k_proj's npz is gone (missing).
fs::path damaged_source(const fs::path& base) {
  const fs::path src = base / "runtime";
  fs::create_directories(src);
  for (const auto& e : fs::directory_iterator(fixture_pack("b16"))) fs::copy_file(e.path(), src / e.path().filename());
  fs::copy_file(src / npz_name(layer(1, "mlp.gate_proj")), src / npz_name(layer(1, "mlp.up_proj")),
                fs::copy_options::overwrite_existing);
  fs::remove(src / npz_name(layer(1, "self_attn.k_proj")));
  return src;
}

TEST(Import, StaleAndMissingLayersAreRefusedByNameAndNothingIsWritten) {
  const fs::path base = temp_dir();
  const fs::path src = damaged_source(base);
  const fs::path out = base / "out";
  const auto r = import_pack(src, out);
  expect_no_crash(r, "import");
  EXPECT_EQ(r.exit_code, 3) << r.out << r.err;
  EXPECT_NE(r.err.find(layer(1, "mlp.up_proj") + "': stale"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(layer(1, "self_attn.k_proj") + "': missing-layer"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("--skip-stale"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // An empty folder given as the output stays empty.
  fs::create_directories(out);
  EXPECT_EQ(import_pack(src, out).exit_code, 3);
  EXPECT_TRUE(fs::is_empty(out));
}

TEST(Import, SkipStaleLeavesThemOutAndVerifyWarns) {
  const fs::path base = temp_dir();
  const fs::path src = damaged_source(base);
  const fs::path out = base / "out";
  const auto r = import_pack(src, out, {"--skip-stale"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.out.find("skipped 2 stale or missing layers"), std::string::npos) << r.out;
  EXPECT_FALSE(fs::exists(out / npz_name(layer(1, "mlp.up_proj"))));
  const json m = json::parse(read_file(out / "manifest.json"));
  ASSERT_EQ(m["import"]["skipped"].size(), 2u) << m["import"].dump(1);
  EXPECT_EQ(m["layers"].size(), 12u);
  // verify: the 12 imported layers OK, the 2 left out a WARN each (not a missing-layer FAIL).
  const VerifyRun v = verify(out, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 0) << describe(v);
  for (const char* leaf : {"mlp.up_proj", "self_attn.k_proj"}) {
    const json* l = find_layer(v, layer(1, leaf));
    ASSERT_NE(l, nullptr) << leaf;
    EXPECT_EQ(reasons((*l)["findings"], "WARN"), std::set<std::string>{"skipped-at-import"}) << describe(v);
    EXPECT_TRUE(reasons((*l)["findings"]).empty()) << describe(v);
  }
  EXPECT_EQ(v.j["summary"]["ok"], 12);
  // inspect shows the provenance.
  const auto in = test::run_cli({"inspect", out.string()});
  EXPECT_EQ(in.exit_code, 0) << in.err;
  EXPECT_NE(in.out.find("import:  the runtime's pack " + src.string()), std::string::npos) << in.out;
  EXPECT_NE(in.out.find("2 layer(s) left out"), std::string::npos) << in.out;
  const auto ij = test::run_cli({"inspect", out.string(), "--json"});
  ASSERT_EQ(ij.exit_code, 0) << ij.err;
  EXPECT_EQ(json::parse(ij.out)["imported"]["skipped"].size(), 2u) << ij.out;
}

TEST(Import, AConfigurationOtherThanTheRuntimesIsAUsageError) {
  const fs::path out = temp_dir() / "out";
  const auto r = import_pack(fixture_pack("b16"), out, {"--block", "8"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("meta says block 16 (the configuration says 8: --block, BLOCK)"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out));
  // Through the runtime's own environment variables, the same configuration imports.
  const auto env = test::run_cli({"import", fixture_pack("b8-noperm-ls0").string(), "--checkpoint", kCkpt, "-o",
                                  out.string(), "--scope", kScope, "--env-prefix", "OPENPI_DUQUANT_"},
                                 {"OPENPI_DUQUANT_BLOCK=8", "OPENPI_DUQUANT_PERMUTE=0", "OPENPI_DUQUANT_LS=0"});
  EXPECT_EQ(env.exit_code, 0) << env.out << env.err;
}

TEST(Import, RefusesADuquantPackAndANonEmptyOutput) {
  const fs::path base = temp_dir();
  const fs::path ours = base / "ours";
  ASSERT_EQ(pack(kCkpt, ours).exit_code, 0);
  const auto r = import_pack(ours, base / "out");
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_NE(r.err.find("it is a duquant pack already"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(base / "out"));
  // A non-empty output folder is never touched.
  const fs::path busy = base / "busy";
  fs::create_directories(busy);
  write_file(busy / "keep.txt", "mine");
  const auto b = import_pack(fixture_pack("b16"), busy);
  EXPECT_EQ(b.exit_code, 2) << b.err;
  EXPECT_EQ(read_file(busy / "keep.txt"), "mine");
  EXPECT_EQ(std::distance(fs::directory_iterator(busy), fs::directory_iterator()), 1);
  // Calibration does not apply (the npz files are copied as they are).
  const auto c = import_pack(fixture_pack("b16"), base / "c", {"--help"});
  EXPECT_EQ(c.exit_code, 0);
  EXPECT_EQ(c.out.find("--smooth-alpha"), std::string::npos) << c.out;
  EXPECT_NE(c.out.find("--skip-stale"), std::string::npos) << c.out;
}

// Layers of the folder that the selection does not pick are not imported, and said so.
TEST(Import, NarrowerSelectionImportsItsLayersOnly) {
  const fs::path out = temp_dir() / "out";
  const auto r = import_pack(fixture_pack("b16"), out, {"--include", "mlp"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  EXPECT_NE(r.err.find("8 npz file(s)"), std::string::npos) << r.err;
  const json m = json::parse(read_file(out / "manifest.json"));
  EXPECT_EQ(m["layers"].size(), 6u);
  EXPECT_EQ(m["import"]["ignored"].size(), 8u);
  const VerifyRun v = verify(out, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 0) << describe(v);
}

}  // namespace
}  // namespace duquant

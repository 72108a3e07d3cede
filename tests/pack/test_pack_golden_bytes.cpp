// Golden bytes (determinism-and-versions.md, section 4): packs of the fixture checkpoint under four
// configurations, every npz file and quantized.safetensors byte for byte and manifest.json without
// the fields that vary by design (`tool`: the version), against digests recorded in
// tests/data/golden/pack-digests.json. Any change of a stored byte fails here; a change meant to
// move them (an algorithm or format change, with its version bump) records them again in the same
// commit: DUQUANT_UPDATE_GOLDEN=1 ctest -R PackGoldenBytes rewrites the file.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "base/cpu_features.hpp"
#include "common/child_process.hpp"
#include "common/expert_dump.hpp"
#include "common/test_paths.hpp"
#include "formats/digest.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_writer.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path golden_file() { return test::test_data() / "golden" / "pack-digests.json"; }

struct GoldenRun {
  std::string name;
  std::vector<std::string> flags;
  bool calib = false;
};

const std::vector<GoldenRun>& runs() {
  static const std::vector<GoldenRun> r{
      {"openpi-dit", {"--preset", "openpi-dit"}},
      {"b32-out16-w8", {"--preset", "openpi-dit", "--block", "32", "--block-out", "16", "--wbits-default", "8"}},
      {"b8-noperm-propagate-w3mlp",
       {"--preset", "openpi-dit", "--block", "8", "--no-permute", "--lambda-smooth", "0", "--row-rot", "propagate",
        "--wbits-rule", "mlp=3"}},
      {"calib-smooth", {"--preset", "openpi-dit", "--calib-steps", "1", "--smooth-alpha", "0.5"}, true},
  };
  return r;
}

// file name -> xxh128 of its bytes (manifest.json: of its JSON without "tool", keys sorted).
std::map<std::string, std::string> digests_of(const fs::path& pack) {
  std::map<std::string, std::string> d;
  for (const auto& e : fs::directory_iterator(pack)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (name == ".duquant-lock") continue;  // the folder's lock, not a pack file (empty)
    const std::string bytes = test::read_text(e.path());
    if (name == "manifest.json") {
      json m = json::parse(bytes);
      m.erase("tool");
      d[name] = xxh128_hex(m.dump());
    } else {
      d[name] = xxh128_hex(bytes);
    }
  }
  return d;
}

// The four packs with `extra` flags; their digests by run name. Fails the test on a failed pack.
json pack_digests(const fs::path& dir, const std::vector<std::string>& extra) {
  const fs::path dump = dir / "dump.safetensors";
  if (!fs::exists(dump)) test::write_expert_dump(dump);
  json now = json::object();
  for (const GoldenRun& run : runs()) {
    std::vector<std::string> args{
        "pack", test::tiny_checkpoint().string(), "-o", (dir / run.name).string(), "--threads", "2"};
    args.insert(args.end(), run.flags.begin(), run.flags.end());
    args.insert(args.end(), extra.begin(), extra.end());
    if (run.calib) {
      args.push_back("--calib");
      args.push_back(dump.string());
    }
    const test::CliResult r = test::run_cli(args);
    EXPECT_EQ(r.exit_code, 0) << run.name << ": " << r.out << r.err;
    if (r.exit_code == 0) now[run.name] = digests_of(dir / run.name);
  }
  return now;
}

void expect_recorded(const json& recorded, const json& now) {
  for (const GoldenRun& run : runs()) {
    SCOPED_TRACE(run.name);
    ASSERT_TRUE(recorded.contains(run.name)) << "no recorded digests for " << run.name;
    ASSERT_TRUE(now.contains(run.name)) << "no pack";
    const auto want = recorded.at(run.name).get<std::map<std::string, std::string>>();
    const auto d = now.at(run.name).get<std::map<std::string, std::string>>();
    EXPECT_EQ(d.size(), want.size());
    for (const auto& [file, digest] : want) {
      const auto it = d.find(file);
      ASSERT_TRUE(it != d.end()) << file << " is missing";
      EXPECT_EQ(it->second, digest) << file << " changed";
    }
  }
}

TEST(PackGoldenBytes, FixturePacksMatchTheRecordedBytes) {
  const fs::path dir = test::temp_dir();
  const bool update = std::getenv("DUQUANT_UPDATE_GOLDEN") != nullptr;
  const json now = pack_digests(dir, {});
  if (update) {
    fs::create_directories(golden_file().parent_path());
    std::ofstream(golden_file()) << now.dump(1) << "\n";
    GTEST_SKIP() << "recorded " << golden_file();
  }
  ASSERT_TRUE(fs::exists(golden_file())) << golden_file();
  expect_recorded(json::parse(test::read_text(golden_file())), now);
}

// Every instruction-set level this CPU runs (--cpu-features) writes the same bytes; the manifest
// names the level in `tool`, which the digests leave out.
TEST(PackGoldenBytes, EveryCpuLevelWritesTheRecordedBytes) {
  ASSERT_TRUE(fs::exists(golden_file())) << golden_file();
  const json recorded = json::parse(test::read_text(golden_file()));
  for (const CpuLevel level : supported_cpu_levels()) {
    SCOPED_TRACE(cpu_level_name(level));
    const fs::path dir = test::temp_dir();
    const json now = pack_digests(dir, {"--cpu-features", cpu_level_name(level)});
    expect_recorded(recorded, now);
    const json manifest = json::parse(test::read_text(dir / "openpi-dit" / "manifest.json"));
    EXPECT_EQ(manifest.at("tool").at("cpu_level"), cpu_level_name(level));
  }
  for (const CpuLevel level : {CpuLevel::avx2, CpuLevel::avx512})
    if (level > detected_cpu_level())
      std::printf("[ SKIPPED  ] level %s: this CPU does not run it\n", cpu_level_name(level));
}

}  // namespace
}  // namespace duquant

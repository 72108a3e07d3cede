// `--config`: a pack's manifest.json repeats its run (byte-identical pack); flags still win over
// it; a configuration file with an unknown key or a bad value is refused naming the file and key.
#include <gtest/gtest.h>

#include <fstream>

#include "common/child_process.hpp"

namespace duquant {
namespace {

std::vector<std::string> pack_args(const std::filesystem::path& out) {
  return {"pack", test::tiny_checkpoint().string(), "-o", out.string()};
}

TEST(PackConfig, ManifestRepeatsTheRun) {
  const auto dir = test::temp_dir();
  auto first = pack_args(dir / "a");
  for (const char* a : {"--preset", "openpi-dit-qkvo", "--block", "32", "--block-out", "8", "--wbits-rule", "k_proj=8",
                        "--wbits-default", "3", "--lambda-smooth", "0.3"})
    first.push_back(a);
  ASSERT_EQ(test::run_cli(first).exit_code, 0);
  auto again = pack_args(dir / "b");
  again.push_back("--config");
  again.push_back((dir / "a" / "manifest.json").string());
  ASSERT_EQ(test::run_cli(again).exit_code, 0);
  std::size_t compared = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir / "a")) {
    EXPECT_EQ(test::read_text(e.path()), test::read_text(dir / "b" / e.path().filename())) << e.path().filename();
    ++compared;
  }
  EXPECT_EQ(compared, 8u + 3u);  // 8 attention npz files, quantized.safetensors, manifest.json, .duquant-lock
}

TEST(PackConfig, FlagsWinOverTheFile) {
  const auto dir = test::temp_dir();
  {
    std::ofstream f(dir / "c.json");
    f << R"({"scope": "paligemma_with_expert.gemma_expert.model.", "block": 8})";
  }
  const auto r = test::run_cli(
      {"list-linears", test::tiny_checkpoint().string(), "--config", (dir / "c.json").string(), "--block", "32"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("block_in=32 block_out=32"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("Matched Linear layers: 14"), std::string::npos);
}

TEST(PackConfig, BadFilesAreRefused) {
  const auto dir = test::temp_dir();
  auto run_with = [&](const std::string& text) {
    std::ofstream(dir / "c.json") << text;
    return test::run_cli({"list-linears", test::tiny_checkpoint().string(), "--config", (dir / "c.json").string()});
  };
  auto r = run_with(R"({"blok": 8})");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("unknown configuration key 'blok'"), std::string::npos) << r.err;
  r = run_with(R"({"block": 0})");
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("c.json: block"), std::string::npos) << r.err;
  r = run_with(R"({"block": [8]})");
  EXPECT_EQ(r.exit_code, 3);
  r = run_with("{");
  EXPECT_EQ(r.exit_code, 3);
  r = test::run_cli({"list-linears", test::tiny_checkpoint().string(), "--config", (dir / "missing.json").string()});
  EXPECT_EQ(r.exit_code, 4);
}

}  // namespace
}  // namespace duquant

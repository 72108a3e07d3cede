// `duquant pack --device`: the spellings it accepts, the refusals (exit 2 for a malformed value,
// exit 7 for a device this build or machine does not have), all before anything is written, and
// `auto` without a GPU falling back to the CPU with a notice and the CPU's bytes.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "engine/device.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using test::CliResult;

CliResult pack_with(const fs::path& out, const std::string& device) {
  return test::run_cli(
      {"pack", test::tiny_checkpoint().string(), "-o", out.string(), "--preset", "openpi-dit", "--device", device});
}

std::map<std::string, std::string> files_of(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = test::read_text(e.path());
  return files;
}

bool has_gpu() { return probe_devices().cuda_devices > 0; }

TEST(PackDevice, MalformedValuesExit2BeforeAnythingIsWritten) {
  const fs::path dir = test::temp_dir();
  for (const std::string bad : {"gpu", "cuda:", "cuda:x", "cuda:0,", "cuda:0,0", "cuda:-1", "CPU", ""}) {
    const fs::path out = dir / "out";
    const CliResult r = pack_with(out, bad);
    EXPECT_EQ(r.exit_code, 2) << "'" << bad << "'\n" << r.err;
    EXPECT_NE(r.err.find("--device"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out)) << "'" << bad << "' created the output folder";
  }
}

TEST(PackDevice, MissingCudaDeviceExits7NamingTheReason) {
  if (has_gpu()) GTEST_SKIP() << "a CUDA device is present: nothing is missing";
  const fs::path dir = test::temp_dir();
  for (const std::string device : {"cuda", "cuda:0", "cuda:1,3"}) {
    const CliResult r = pack_with(dir / "out", device);
    EXPECT_EQ(r.exit_code, 7) << device << "\n" << r.err;
    EXPECT_NE(r.err.find("--device " + device), std::string::npos) << r.err;
    const bool built = probe_devices().cuda_built;
    EXPECT_NE(r.err.find(built ? "no CUDA device" : "no CUDA backend"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(dir / "out")) << device << " created the output folder";
  }
}

TEST(PackDevice, AutoWithoutAGpuIsTheCpuWithANotice) {
  if (has_gpu()) GTEST_SKIP() << "a CUDA device is present: auto uses it";
  const fs::path dir = test::temp_dir();
  const CliResult cpu = pack_with(dir / "cpu", "cpu");
  ASSERT_EQ(cpu.exit_code, 0) << cpu.err;
  EXPECT_EQ(cpu.err.find("notice"), std::string::npos) << cpu.err;
  EXPECT_NE(cpu.out.find("on cpu ("), std::string::npos) << cpu.out;
  const CliResult automatic = pack_with(dir / "auto", "auto");
  ASSERT_EQ(automatic.exit_code, 0) << automatic.err;
  EXPECT_NE(automatic.err.find("duquant: notice: "), std::string::npos) << automatic.err;
  EXPECT_NE(automatic.err.find("packing on the CPU"), std::string::npos) << automatic.err;
  const auto a = files_of(dir / "cpu"), b = files_of(dir / "auto");
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [name, bytes] : a) EXPECT_TRUE(b.count(name) && b.at(name) == bytes) << name << " differs";
}

// A malformed DUQUANT_TEST_PIPELINE is exit 2 naming it, and nothing is written.
TEST(PackDevice, MalformedPipelineSeamIsRefused) {
  const fs::path dir = test::temp_dir();
  for (const std::string bad : {"0", "9", "2x", "-1", "12", "two"}) {
    const fs::path out = dir / "out";
    const CliResult r = test::run_cli(
        {"pack", test::tiny_checkpoint().string(), "-o", out.string(), "--preset", "openpi-dit", "--device", "cpu"},
        {"DUQUANT_TEST_PIPELINE=" + bad});
    EXPECT_EQ(r.exit_code, 2) << bad << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find("DUQUANT_TEST_PIPELINE=" + bad + ":"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out)) << bad;
  }
}

// The overlapped pipeline a GPU run uses (read-ahead, N engines, results in layer order), driven
// with CPU engines through the DUQUANT_TEST_PIPELINE seam: the same bytes as the sequential run,
// and an interrupted pipelined run resumes to them too.
TEST(PackDevice, PipelinedEnginesGiveTheSequentialBytes) {
  const fs::path dir = test::temp_dir();
  ASSERT_EQ(pack_with(dir / "sequential", "cpu").exit_code, 0);
  const auto expected = files_of(dir / "sequential");
  for (const std::string n : {"1", "2", "3"}) {
    const fs::path out = dir / ("pipeline" + n);
    const CliResult r = test::run_cli(
        {"pack", test::tiny_checkpoint().string(), "-o", out.string(), "--preset", "openpi-dit", "--device", "cpu"},
        {"DUQUANT_TEST_PIPELINE=" + n});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_NE(r.out.find("on cpu (pipeline of " + n + ")"), std::string::npos) << r.out;
    const auto got = files_of(out);
    ASSERT_EQ(got.size(), expected.size()) << n;
    for (const auto& [name, bytes] : expected)
      EXPECT_TRUE(got.count(name) && got.at(name) == bytes) << n << ": " << name;
  }
  const fs::path out = dir / "killed";
  const std::vector<std::string> args{
      "pack", test::tiny_checkpoint().string(), "-o", out.string(), "--preset", "openpi-dit", "--device", "cpu"};
  const CliResult killed = test::run_cli(args, {"DUQUANT_TEST_PIPELINE=2", "DUQUANT_TEST_KILL_AT=layer:5"});
  EXPECT_EQ(killed.exit_code, 128 + 9) << killed.err;
  std::vector<std::string> resume = args;
  resume.push_back("--resume");
  const CliResult resumed = test::run_cli(resume, {"DUQUANT_TEST_PIPELINE=2"});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  EXPECT_NE(resumed.out.find("(5 reused)"), std::string::npos) << resumed.out;
  const auto got = files_of(out);
  ASSERT_EQ(got.size(), expected.size());
  for (const auto& [name, bytes] : expected)
    EXPECT_TRUE(got.count(name) && got.at(name) == bytes) << "resumed: " << name;
}

TEST(PackDevice, CudaPackVerifiesCleanAgainstTheCheckpoint) {
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device: " << probe_devices().cuda_status;
  const fs::path dir = test::temp_dir();
  const CliResult r = pack_with(dir / "gpu", "cuda");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("on cuda:"), std::string::npos) << r.out;
  const CliResult v = test::run_cli({"verify", (dir / "gpu").string(), "-c", test::tiny_checkpoint().string()});
  EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  // The same pack twice: a device run is deterministic too.
  ASSERT_EQ(pack_with(dir / "gpu2", "cuda").exit_code, 0);
  const auto a = files_of(dir / "gpu"), b = files_of(dir / "gpu2");
  for (const auto& [name, bytes] : a) EXPECT_TRUE(b.count(name) && b.at(name) == bytes) << name << " differs";
}

}  // namespace
}  // namespace duquant

// Faults on the write side: the n-th write(2), fsync(2) or rename(2) of a pack fails with ENOSPC or
// EIO (the DUQUANT_TEST_FAULT seam of formats/fault_injection.hpp), for every n the pack reaches.
// Each failure must be exit 4 with the system's reason and the file named; leave no temporary file;
// leave only complete files under final names (every npz and safetensors opens, no manifest unless
// the pack was complete) plus the work folder; make `verify` refuse the folder; and `--resume`
// must then finish with the bytes of an uninterrupted run.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <cstdio>
#include <string>
#include <vector>

#include "formats/npz.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "robustness/robustness_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using test::run_cli;

constexpr const char* kLayer0 = "paligemma_with_expert.gemma_expert.model.layers.0.";

// Two layers, one per shard (so the index is written too), and the fixture checkpoint.
std::vector<std::string> pack_args(const fs::path& out) {
  return {"pack",
          test::tiny_checkpoint().string(),
          "-o",
          out.string(),
          "--layers",
          std::string(kLayer0) + "self_attn.q_proj," + kLayer0 + "mlp.down_proj",
          "--max-shard-size",
          "1"};
}

bool is_temp_name(const std::string& name) {
  const std::string base = fs::path(name).filename().string();
  return !base.empty() && base[0] == '.' && base.find(".tmp-") != std::string::npos;
}

struct FaultFigures {
  int trials = 0;
  int calls = 0;  // calls of the op in a whole run
};

// Runs the pack with a fault at the n-th call of `op` for n = 1, 2, ... until a run does not reach
// it (it succeeds), checking each failed run as described at the top.
FaultFigures sweep(const std::string& op, const fs::path& dir, const fs::path& baseline) {
  FaultFigures figures;
  for (int n = 1; n < 10000; ++n) {
    const std::string err_name = n % 2 ? "ENOSPC" : "EIO";
    const std::string reason = n % 2 ? "No space left on device" : "Input/output error";
    const fs::path out = dir / fmt::format("{}-{}", op, n);
    const std::string fault = fmt::format("DUQUANT_TEST_FAULT={}:{}:{}", op, n, err_name);
    const test::CliResult r = run_cli(pack_args(out), {fault});
    if (r.exit_code == 0) {  // the n-th call never came: every call before it was faulted once
      figures.calls = n - 1;
      std::string why;
      EXPECT_TRUE(test::same_folder(out, baseline, &why)) << fault << ": " << why;
      break;
    }
    ++figures.trials;
    SCOPED_TRACE(fault);
    EXPECT_EQ(r.exit_code, 4) << r.out << r.err;
    EXPECT_TRUE(test::contains(r.err, "duquant: error: ")) << r.err;
    EXPECT_TRUE(test::contains(r.err, reason)) << r.err;
    EXPECT_TRUE(test::contains(r.err, out.string())) << "the message names the file: " << r.err;
    for (const std::string& name : test::listing(out)) EXPECT_FALSE(is_temp_name(name)) << name << " left behind";
    // Whatever is under a final name is complete.
    const bool manifest = fs::exists(out / "manifest.json");
    for (const auto& e : fs::directory_iterator(out)) {
      const std::string name = e.path().filename().string();
      if (name.ends_with(".npz")) {
        EXPECT_NO_THROW(formats::NpzFile::open(e.path())) << name;
      }
      if (name.ends_with(".safetensors")) {
        EXPECT_NO_THROW(formats::Checkpoint::open(e.path())) << name;
      }
    }
    const test::CliResult verified = run_cli({"verify", out.string(), "-c", test::tiny_checkpoint().string()});
    if (manifest) {
      // Only the folder's fsync after the manifest's rename is left to fail: the pack is complete.
      EXPECT_TRUE(op == "fsync") << "a manifest after a failed " << op;
      EXPECT_EQ(verified.exit_code, 0) << verified.out << verified.err;
    } else {
      EXPECT_NE(verified.exit_code, 0) << "verify accepted an unfinished pack\n" << verified.out << verified.err;
    }
    std::vector<std::string> resume = pack_args(out);
    resume.push_back("--resume");
    const test::CliResult resumed = run_cli(resume);
    EXPECT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
    std::string why;
    EXPECT_TRUE(test::same_folder(out, baseline, &why)) << "after --resume: " << why;
    fs::remove_all(out);
    if (::testing::Test::HasFailure()) break;  // one detailed failure is enough
  }
  return figures;
}

class WriteFaults : public ::testing::TestWithParam<std::string> {};

TEST_P(WriteFaults, EveryFailedCallIsACleanIoErrorAndResumable) {
  const fs::path dir = test::temp_dir();
  const fs::path baseline = dir / "baseline";
  const test::CliResult base = run_cli(pack_args(baseline));
  ASSERT_EQ(base.exit_code, 0) << base.out << base.err;
  const FaultFigures f = sweep(GetParam(), dir, baseline);
  EXPECT_GT(f.calls, 0);
  EXPECT_EQ(f.trials, f.calls);
  std::printf("[ faults ] %s: %d calls per pack, each failed once: %d trials\n", GetParam().c_str(), f.calls, f.trials);
}

INSTANTIATE_TEST_SUITE_P(Ops, WriteFaults, ::testing::Values("write", "fsync", "rename"),
                         [](const auto& info) { return info.param; });

// The other writers share formats::AtomicFile; a failure leaves nothing under the final name.
TEST(WriteFaultsOtherWriters, SynthAndInspectHtmlLeaveNoFile) {
  const fs::path dir = test::temp_dir();
  for (const std::string fault : {"write:1:ENOSPC", "fsync:1:EIO", "rename:1:ENOSPC"}) {
    const fs::path ckpt = dir / "synth.safetensors";
    const test::CliResult r =
        run_cli({"synth", "-o", ckpt.string(), "--factor", "16", "--layers", "1"}, {"DUQUANT_TEST_FAULT=" + fault});
    EXPECT_EQ(r.exit_code, 4) << fault << r.out << r.err;
    EXPECT_FALSE(fs::exists(ckpt)) << fault;
    for (const std::string& name : test::listing(dir)) EXPECT_FALSE(is_temp_name(name)) << name;
  }
  const fs::path pack = dir / "pack";
  ASSERT_EQ(run_cli(pack_args(pack)).exit_code, 0);
  const fs::path html = dir / "report.html";
  const test::CliResult r =
      run_cli({"inspect", pack.string(), "--html", html.string()}, {"DUQUANT_TEST_FAULT=write:1:EIO"});
  EXPECT_EQ(r.exit_code, 4) << r.out << r.err;
  EXPECT_TRUE(test::contains(r.err, "Input/output error")) << r.err;
  EXPECT_FALSE(fs::exists(html));
}

TEST(WriteFaultsSeam, MalformedValueIsAUsageError) {
  const fs::path dir = test::temp_dir();
  int k = 0;
  for (const std::string bad : {"write", "write:0", "write:x", "read:1", "fsync:2:EPERM", "rename:-1"}) {
    const test::CliResult r = run_cli(pack_args(dir / fmt::format("out{}", k++)), {"DUQUANT_TEST_FAULT=" + bad});
    EXPECT_EQ(r.exit_code, 2) << bad << r.out << r.err;
    EXPECT_TRUE(test::contains(r.err, "DUQUANT_TEST_FAULT")) << r.err;
  }
}

}  // namespace
}  // namespace duquant

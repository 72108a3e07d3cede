// Outputs that cannot work are refused before any work, with the reason: the output equal to the
// checkpoint, the output inside the input's folder or holding the input, an existing file as the
// output, a non-empty folder without --resume/--force, a location this process cannot write to,
// and a checkpoint whose index lists a missing shard. "Before any work" means: no layer was
// packed (no progress line), nothing was created, and what was there is unchanged.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "robustness/robustness_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;

test::CliResult pack(const fs::path& ckpt, const fs::path& out, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args{"pack", ckpt.string(), "-o", out.string(), "--preset", "openpi-dit"};
  args.insert(args.end(), extra.begin(), extra.end());
  return test::run_cli(args);
}

void expect_refused(const test::CliResult& r, int code, const std::string& reason) {
  EXPECT_EQ(r.exit_code, code) << r.out << r.err;
  EXPECT_TRUE(test::contains(r.err, reason)) << r.err;
  EXPECT_FALSE(test::contains(r.out, "q_proj")) << "a layer was packed before the refusal:\n" << r.out;
}

TEST(OutputRefusals, OutputIsTheCheckpointFile) {
  const fs::path dir = test::temp_dir();
  const fs::path ckpt = dir / "model.safetensors";
  fs::copy_file(test::tiny_checkpoint(), ckpt);
  const auto before = test::snapshot(dir);
  expect_refused(pack(ckpt, ckpt, {"--force"}), 2, "would replace the checkpoint file");
  EXPECT_TRUE(test::snapshot(dir) == before);
}

TEST(OutputRefusals, OutputHoldsTheCheckpoint) {
  const fs::path dir = test::temp_dir();
  const fs::path ckpt = dir / "model.safetensors";
  fs::copy_file(test::tiny_checkpoint(), ckpt);
  const auto before = test::snapshot(dir);
  expect_refused(pack(ckpt, dir, {"--force"}), 2, "holds the input checkpoint file");
  expect_refused(pack(ckpt, dir / ".", {"--resume"}), 2, "holds the input checkpoint file");
  EXPECT_TRUE(test::snapshot(dir) == before);
}

TEST(OutputRefusals, OutputInsideTheCheckpointFolder) {
  const fs::path dir = test::temp_dir();
  const fs::path folder = dir / "ckpt";
  fs::create_directories(folder);
  fs::copy_file(test::tiny_checkpoint(), folder / "model.safetensors");
  expect_refused(pack(folder, folder / "pack"), 2, "lies inside the input checkpoint folder");
  EXPECT_FALSE(fs::exists(folder / "pack"));
}

TEST(OutputRefusals, OutputIsAFileOrANonEmptyFolder) {
  const fs::path dir = test::temp_dir();
  const fs::path file = dir / "notes.txt";
  { std::ofstream(file) << "keep"; }
  expect_refused(pack(test::tiny_checkpoint(), file), 2, "exists and is not a folder");
  EXPECT_EQ(test::read_text(file), "keep");
  const fs::path full = dir / "full";
  fs::create_directories(full);
  { std::ofstream(full / "notes.txt") << "keep"; }
  expect_refused(pack(test::tiny_checkpoint(), full), 2, "folder is not empty");
  EXPECT_EQ(test::listing(full), std::vector<std::string>{"notes.txt"});
}

// A folder this process cannot write to. As root permission bits do not apply, so the pack runs
// as `nobody` through setpriv(1) there; without setpriv the test is skipped.
TEST(OutputRefusals, ReadOnlyLocationIsRefusedBeforeAnyWork) {
  const fs::path dir = test::temp_dir();
  const fs::path locked = dir / "locked";
  fs::create_directories(locked / "empty");
  std::vector<std::string> prefix;
  if (::geteuid() == 0) {
    test::ChildSetup probe;
    probe.command = {"setpriv"};
    if (test::run_program({"--version"}, probe).exit_code != 0) GTEST_SKIP() << "running as root without setpriv(1)";
    // `nobody` must reach the binary, the fixture and the folder.
    fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read |
                             fs::perms::others_exec);
    prefix = {"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"};
  }
  fs::permissions(locked / "empty", fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                                        fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  fs::permissions(locked, fs::perms::owner_read | fs::perms::owner_exec | fs::perms::group_read |
                              fs::perms::group_exec | fs::perms::others_read | fs::perms::others_exec);
  for (const fs::path& out : {locked / "new" / "pack", locked / "empty"}) {
    test::ChildSetup setup;
    if (!prefix.empty()) {
      setup.command = prefix;
      setup.command.push_back(test::binary().string());
    }
    const test::CliResult r = test::run_program(
        {"pack", test::tiny_checkpoint().string(), "-o", out.string(), "--preset", "openpi-dit"}, setup);
    const std::string text = r.out + r.err;
    EXPECT_EQ(r.exit_code, 4) << out << "\n" << text;
    EXPECT_TRUE(test::contains(text, "cannot write into")) << text;
    EXPECT_TRUE(test::contains(text, "Permission denied")) << text;
    EXPECT_FALSE(test::contains(text, "q_proj")) << text;
  }
  EXPECT_EQ(test::listing(locked), std::vector<std::string>{"empty"});
  fs::permissions(locked, fs::perms::owner_all);
}

TEST(OutputRefusals, MissingShardIsRefusedBeforeAnyWork) {
  const fs::path dir = test::temp_dir();
  const fs::path out = dir / "out";
  const fs::path ckpt = test::test_data() / "corrupt" / "shard_missing";
  ASSERT_TRUE(fs::exists(ckpt));
  expect_refused(pack(ckpt, out), 4, "is missing");
  EXPECT_FALSE(fs::exists(out));
}

}  // namespace
}  // namespace duquant

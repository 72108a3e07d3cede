// SIGKILL at random moments of a pack, then `--resume` (itself killed at a random moment in half
// of the trials, then resumed again): the finished pack is byte-identical to an uninterrupted run,
// every trial. The moments are drawn uniformly over the uninterrupted run's duration (seeded, so
// the draws repeat; where they land in the pack varies with the machine, which is the point).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "robustness/robustness_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kTrials = 30;

std::vector<std::string> pack_args(const fs::path& out, bool resume) {
  std::vector<std::string> a{"pack", test::tiny_checkpoint().string(), "-o", out.string(), "--preset", "openpi-dit",
                             "--max-shard-size", "200KB"};
  if (resume) a.push_back("--resume");
  return a;
}

// Runs a pack and SIGKILLs it after `delay` unless it ended first; true when it was killed.
bool run_and_kill(const fs::path& out, bool resume, std::chrono::microseconds delay, const fs::path& log) {
  test::Child child(pack_args(out, resume), {}, log);
  EXPECT_TRUE(child.started());
  std::this_thread::sleep_for(delay);
  child.kill();
  const int code = child.wait();
  EXPECT_TRUE(code == 0 || code == test::kKilledBySigkill) << "exit " << code << "\n" << child.out() << child.err();
  return code == test::kKilledBySigkill;
}

TEST(KillAndResume, RandomSigkillThenResumeGivesTheSameBytes) {
  const fs::path dir = test::temp_dir();
  const fs::path baseline = dir / "baseline";
  const auto start = Clock::now();
  {
    test::Child child(pack_args(baseline, false), {}, dir / "baseline");
    ASSERT_EQ(child.wait(), 0) << child.out() << child.err();
  }
  const auto duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
  ASSERT_GT(test::snapshot(baseline).size(), 14u);

  std::mt19937_64 rng(20261202);
  std::uniform_int_distribution<std::int64_t> moment(0, duration.count() * 11 / 10);
  int killed = 0, killed_twice = 0, passed = 0;
  for (int trial = 0; trial < kTrials; ++trial) {
    SCOPED_TRACE("trial " + std::to_string(trial));
    const fs::path out = dir / fmt::format("trial-{}", trial);
    const bool first = run_and_kill(out, false, std::chrono::microseconds(moment(rng)), dir / "first");
    killed += first ? 1 : 0;
    if (trial % 2 == 1) killed_twice += run_and_kill(out, true, std::chrono::microseconds(moment(rng)), dir / "second") ? 1 : 0;
    test::Child resumed(pack_args(out, true), {}, dir / "resumed");
    ASSERT_EQ(resumed.wait(), 0) << resumed.out() << resumed.err();
    std::string why;
    EXPECT_TRUE(test::same_folder(out, baseline, &why)) << why;
    if (!::testing::Test::HasFailure()) ++passed;
    fs::remove_all(out);
  }
  std::printf("[ kill/resume ] %d trials passed of %d; first run killed in %d, the resume killed too in %d "
              "(uninterrupted run %.2f s)\n",
              passed, kTrials, killed, killed_twice, static_cast<double>(duration.count()) / 1e6);
  EXPECT_EQ(passed, kTrials);
  // The draws must actually interrupt packs, or the test proves nothing.
  EXPECT_GE(killed, kTrials / 2);
}

}  // namespace
}  // namespace duquant

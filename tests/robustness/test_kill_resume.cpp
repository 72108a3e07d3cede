// SIGKILL at random moments of a pack, then `--resume` (itself killed at a random moment in half
// of the trials, then resumed again): the finished pack is byte-identical to an uninterrupted run,
// every trial. The moments are drawn uniformly over the uninterrupted run's duration, as measured on
// this machine while the test runs (seeded, so the draws repeat; where they land in the pack varies
// with the machine, which is the point).
#include <gtest/gtest.h>

#include <fmt/format.h>

#include <algorithm>
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
  std::vector<std::string> a{
      "pack", test::tiny_checkpoint().string(), "-o", out.string(), "--preset", "openpi-dit", "--max-shard-size",
      "200KB"};
  if (resume) a.push_back("--resume");
  return a;
}

// The length of an uninterrupted run, as the trials learn it: the shortest complete run seen. A
// run slowed by a loaded machine (the baseline, say, while other tests run) only ever shortens it.
class RunLength {
 public:
  explicit RunLength(std::chrono::microseconds first) : shortest_(first) {}
  void saw_complete_run(std::chrono::microseconds d) { shortest_ = std::min(shortest_, d); }
  std::chrono::microseconds draw(std::mt19937_64& rng) const {
    return std::chrono::microseconds(std::uniform_int_distribution<std::int64_t>(0, shortest_.count() * 11 / 10)(rng));
  }
  double seconds() const { return static_cast<double>(shortest_.count()) / 1e6; }

 private:
  std::chrono::microseconds shortest_;
};

// Runs a pack and SIGKILLs it after a moment drawn from `length` unless it ended first; true when
// it was killed. A run that ended first teaches `length` how long a run takes now.
bool run_and_kill(const fs::path& out, bool resume, RunLength& length, std::mt19937_64& rng, const fs::path& log) {
  const auto delay = length.draw(rng);
  const auto start = Clock::now();
  test::Child child(pack_args(out, resume), test::ChildSetup{}, log);
  EXPECT_TRUE(child.started());
  const bool ended = child.wait_until(start + delay);
  if (ended && !resume)
    length.saw_complete_run(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start));
  if (!ended) child.kill();
  const int code = child.wait();
  EXPECT_TRUE(code == 0 || code == test::kKilledBySigkill) << "exit " << code << "\n" << child.out() << child.err();
  return code == test::kKilledBySigkill;
}

TEST(KillAndResume, RandomSigkillThenResumeGivesTheSameBytes) {
  const fs::path dir = test::temp_dir();
  const fs::path baseline = dir / "baseline";
  const auto start = Clock::now();
  {
    test::Child child(pack_args(baseline, false), test::ChildSetup{}, dir / "baseline");
    ASSERT_EQ(child.wait(), 0) << child.out() << child.err();
  }
  RunLength length(std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start));
  ASSERT_GT(test::snapshot(baseline).size(), 14u);

  // Trials go on until kTrials of them were interrupted in their first run (a draw past the end of
  // a run proves nothing about resuming); every trial, interrupted or not, must end identical.
  std::mt19937_64 rng(20261202);
  int killed = 0, killed_twice = 0, trials = 0, passed = 0;
  for (; killed < kTrials && trials < 3 * kTrials; ++trials) {
    SCOPED_TRACE("trial " + std::to_string(trials));
    const fs::path out = dir / fmt::format("trial-{}", trials);
    const bool first = run_and_kill(out, false, length, rng, dir / "first");
    killed += first ? 1 : 0;
    if (first && killed % 2 == 0) killed_twice += run_and_kill(out, true, length, rng, dir / "second") ? 1 : 0;
    test::Child resumed(pack_args(out, true), test::ChildSetup{}, dir / "resumed");
    ASSERT_EQ(resumed.wait(), 0) << resumed.out() << resumed.err();
    std::string why;
    EXPECT_TRUE(test::same_folder(out, baseline, &why)) << why;
    if (!::testing::Test::HasFailure()) ++passed;
    fs::remove_all(out);
  }
  std::printf(
      "[ kill/resume ] %d trials passed of %d; first run killed in %d, the resume killed too in %d "
      "(uninterrupted run %.3f s)\n",
      passed, trials, killed, killed_twice, length.seconds());
  EXPECT_EQ(passed, trials);
  // The draws must actually interrupt packs, or the test proves nothing.
  EXPECT_EQ(killed, kTrials);
}

}  // namespace
}  // namespace duquant

// Every committed fuzz seed (tests/fuzz/seeds/<target>/) and every crash regression
// (tests/data/fuzz-regressions/<target>/) through its target's check, in every test build (the
// sanitizer build too): no broken invariant, no unexpected exception. Seeds are named for what the
// reader must do with them: valid_* accepted, bad_* refused, so the seeds keep testing the reader.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "common/test_paths.hpp"
#include "fuzz/fuzz_checks.hpp"

namespace duquant::fuzz {

void PrintTo(Outcome o, std::ostream* os) { *os << outcome_name(o); }

namespace {

namespace fs = std::filesystem;

std::vector<fs::path> files_in(const fs::path& dir) {
  std::vector<fs::path> files;
  if (fs::is_directory(dir))
    for (const auto& e : fs::directory_iterator(dir))
      if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

std::vector<std::byte> read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  const std::string s((std::istreambuf_iterator<char>(in)), {});
  std::vector<std::byte> b(s.size());
  std::transform(s.begin(), s.end(), b.begin(), [](char c) { return static_cast<std::byte>(c); });
  return b;
}

// Runs one file; the outcome, or a test failure naming the file and what broke.
std::optional<Outcome> run(const Target& t, const fs::path& file) {
  const std::vector<std::byte> bytes = read_bytes(file);
  try {
    return t.check(Bytes(bytes.data(), bytes.size()));
  } catch (const Violation& v) {
    ADD_FAILURE() << file << ": invariant broken: " << v.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << file << ": unexpected exception: " << e.what();
  }
  return std::nullopt;
}

class FuzzCorpus : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzCorpus, SeedsDoWhatTheirNamesSay) {
  const Target& t = GetParam();
  int valid = 0, bad = 0;
  for (const fs::path& file : files_in(fs::path(DUQUANT_FUZZ_SEEDS_DIR) / std::string(t.name))) {
    const std::string name = file.filename().string();
    const std::optional<Outcome> outcome = run(t, file);
    if (name.rfind("valid_", 0) == 0) {
      ++valid;
      EXPECT_EQ(outcome, Outcome::accepted) << file << " must be accepted";
    } else if (name.rfind("bad_", 0) == 0) {
      ++bad;
      EXPECT_EQ(outcome, Outcome::refused) << file << " must be refused";
    } else {
      ADD_FAILURE() << file << ": a seed's name starts with valid_ or bad_";
    }
  }
  std::printf("[ seeds ] %s: %d valid, %d bad\n", std::string(t.name).c_str(), valid, bad);
  EXPECT_GE(valid, 1) << "no valid seed for " << t.name;
  EXPECT_GE(bad, 1) << "no bad seed for " << t.name;
}

TEST_P(FuzzCorpus, CrashRegressionsStayFixed) {
  const Target& t = GetParam();
  const auto files = files_in(test::test_data() / "fuzz-regressions" / std::string(t.name));
  for (const fs::path& file : files) (void)run(t, file);
  std::printf("[ regressions ] %s: %zu files\n", std::string(t.name).c_str(), files.size());
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzCorpus, ::testing::ValuesIn(targets()),
                         [](const ::testing::TestParamInfo<Target>& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace duquant::fuzz

// Helpers of the inspect tests: a pack of the fixture made once per test program, JSON output.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"

namespace duquant::test {

// `duquant pack <fixture> --preset <preset>` into a folder shared by the tests of this program (not
// verify_test_util.hpp's fixture_pack: the runtime-written packs of the shared fixtures).
inline std::filesystem::path pack_of_fixture(const std::string& preset) {
  const auto dir = std::filesystem::temp_directory_path() / "duquant-tests" /
                   ("inspect-pack-" + std::to_string(::getpid())) / preset;
  if (!std::filesystem::exists(dir / "manifest.json")) {
    std::filesystem::remove_all(dir);
    const CliResult r = run_cli({"pack", tiny_checkpoint().string(), "-o", dir.string(), "--preset", preset});
    EXPECT_EQ(r.exit_code, 0) << r.err;
  }
  return dir;
}

// Runs the binary and parses standard output as JSON (a failed parse fails the test).
inline nlohmann::json run_json(const std::vector<std::string>& args, CliResult* result = nullptr) {
  const CliResult r = run_cli(args);
  if (result) *result = r;
  EXPECT_EQ(r.exit_code, 0) << r.err;
  try {
    return nlohmann::json::parse(r.out);
  } catch (const nlohmann::json::exception& e) {
    ADD_FAILURE() << "not JSON: " << e.what() << "\n" << r.out;
    return {};
  }
}

inline nlohmann::json read_json(const std::filesystem::path& path) { return nlohmann::json::parse(read_text(path)); }

}  // namespace duquant::test

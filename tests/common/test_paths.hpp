// Paths the tests use: the shared fixtures, the repository's test data, the built binary, and a
// fresh temporary folder per test.
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <functional>
#include <string>

namespace duquant::test {

inline std::filesystem::path fixtures() { return DUQUANT_FIXTURES_DIR; }
inline std::filesystem::path tiny_checkpoint() { return fixtures() / "pi05_tiny.safetensors"; }
inline std::filesystem::path test_data() { return DUQUANT_TEST_DATA_DIR; }
inline std::filesystem::path binary() { return DUQUANT_BINARY; }

// A folder unique to the running test and build folder, emptied on creation: two build folders
// running the same test at once (they share /tmp) never clobber each other.
inline std::filesystem::path temp_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::size_t build = std::hash<std::string>{}(binary().string());
  std::filesystem::path dir = std::filesystem::temp_directory_path() / "duquant-tests" /
                              (std::string(info->test_suite_name()) + "." + info->name() + "." +
                               std::to_string(build % 1000000007u));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

}  // namespace duquant::test

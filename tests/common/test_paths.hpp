// Paths the tests use: the shared fixtures, the repository's test data, the built binary, and a
// fresh temporary folder per test.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <filesystem>
#include <functional>
#include <string>

namespace duquant::test {

inline std::filesystem::path fixtures() { return DUQUANT_FIXTURES_DIR; }
inline std::filesystem::path tiny_checkpoint() { return fixtures() / "pi05_tiny.safetensors"; }
inline std::filesystem::path test_data() { return DUQUANT_TEST_DATA_DIR; }
inline std::filesystem::path binary() { return DUQUANT_BINARY; }

// The one temporary folder helper of the tests: a folder unique to the running test, build
// folder and process, emptied on creation. Two build folders (or two runs) of the same test at once
// never clobber each other (they share /tmp); folders of this test left by processes that no
// longer run are removed.
inline std::filesystem::path temp_dir() {
  namespace fs = std::filesystem;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const std::size_t build = std::hash<std::string>{}(binary().string());
  std::string prefix = info->test_suite_name();
  prefix.append(".").append(info->name()).append(".").append(std::to_string(build % 1000000007u)).append(".");
  const fs::path root = fs::temp_directory_path() / "duquant-tests";
  std::error_code ec;
  fs::create_directories(root, ec);
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string n = e.path().filename().string();
    if (n.size() <= prefix.size() || n.compare(0, prefix.size(), prefix) != 0) continue;
    const std::string pid = n.substr(prefix.size());
    if (pid.empty() || pid.size() > 9 || pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (::kill(static_cast<pid_t>(std::stol(pid)), 0) != 0 && errno == ESRCH) fs::remove_all(e.path(), ec);
  }
  const fs::path dir = root / (prefix + std::to_string(::getpid()));
  fs::remove_all(dir, ec);
  fs::create_directories(dir);
  return dir;
}

}  // namespace duquant::test

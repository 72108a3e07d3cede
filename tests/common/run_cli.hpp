// Runs the duquant binary as a user would and captures what it prints and its exit code.
#pragma once

#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/test_paths.hpp"

namespace duquant::test {

struct CliResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

inline std::string shell_quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// `env` entries ("NAME=value") are set for this run only; the rest of the environment is kept.
inline CliResult run_cli(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  static int counter = 0;
  const auto err_path = std::filesystem::temp_directory_path() /
                        ("duquant-cli-" + std::to_string(::getpid()) + "-" + std::to_string(counter++) + ".err");
  std::string cmd;
  // append() rather than operator+: GCC 12 warns falsely (-Wrestrict) on "literal" + std::string.
  for (const auto& e : env) cmd.append("export ").append(shell_quote(e)).append("; ");
  cmd.append(shell_quote(binary().string()));
  for (const auto& a : args) cmd.append(" ").append(shell_quote(a));
  cmd.append(" 2>").append(shell_quote(err_path.string()));
  CliResult r;
  FILE* pipe = ::popen(cmd.c_str(), "r");
  if (pipe == nullptr) return r;
  char buffer[4096];
  size_t n;
  while ((n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0) r.out.append(buffer, n);
  const int status = ::pclose(pipe);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  r.err = read_text(err_path);
  std::filesystem::remove(err_path);
  return r;
}

}  // namespace duquant::test

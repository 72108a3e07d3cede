// duquant: quantize robot VLA policy weights with DuQuant, offline. Exit codes: docs/cli.md.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <filesystem>
#include <new>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "duquant/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"duquant: DuQuant W4A8 packing for robot vision-language-action policies"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("duquant ") + DUQUANT_VERSION);
  std::vector<duquant::cli::Action> actions{
      duquant::cli::register_list_linears(app), duquant::cli::register_pack(app), duquant::cli::register_verify(app),
      duquant::cli::register_inspect(app), duquant::cli::register_synth(app),
      duquant::cli::register_presets(app), duquant::cli::register_version(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    app.exit(e);  // prints the reason
    return duquant::exit_code(duquant::ErrorKind::usage);
  }
  try {
    for (const auto& action : actions) {
      const int code = action();
      if (code >= 0) return code;
    }
    return duquant::exit_code(duquant::ErrorKind::internal);
  } catch (const duquant::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "duquant: error: {}\n", e.what());
    return duquant::exit_code(e.kind());
  } catch (const std::filesystem::filesystem_error& e) {
    // Last resort: every file system call should report its own error, naming its file (exit 4).
    // One that escapes is still a file that cannot be used, never a crash: exit 4 with its path(s).
    std::fflush(stdout);
    std::string where = e.path1().string();
    if (!e.path2().empty()) where += ", " + e.path2().string();
    fmt::print(stderr, "duquant: error: {}: {}\n", where.empty() ? std::string("file system") : where, e.code().message());
    return duquant::exit_code(duquant::ErrorKind::io);
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    fmt::print(stderr, "duquant: error: out of memory\n");
    return duquant::exit_code(duquant::ErrorKind::io);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "duquant: internal error: {}\n", e.what());
    return duquant::exit_code(duquant::ErrorKind::internal);
  }
}

// duquant: quantize robot VLA policy weights with DuQuant, offline. Exit codes: docs/cli.md.
#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include "base/cpu_features.hpp"

#include <cstdio>
#include <exception>
#include <filesystem>
#include <new>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include "cli/commands.hpp"
#include "cli/process_guard.hpp"
#include "duquant/error.hpp"

namespace {
// CLI11's help, version and parse errors, printed through stdio: stdout checked (exit 4 when it
// cannot be written), stderr best effort (std::cerr would bypass both).
int cli_exit(const CLI::App& app, const CLI::Error& e) {
  std::ostringstream out, err;
  const int code = app.exit(e, out, err);
  std::fputs(out.str().c_str(), stdout);
  std::fputs(err.str().c_str(), stderr);
  return duquant::cli::finish_stdout(code);
}
}  // namespace

int main(int argc, char** argv) {
  duquant::cli::prefer_passive_openmp_wait(argv);
  // Before any file is opened: closed descriptors 0-2 onto /dev/null, a stderr that never fails.
  duquant::cli::guard_standard_streams();
  duquant::cli::install_interrupt_handlers();
  duquant::cli::keep_freed_memory();
  try {  // before the first parallel region: libgomp crashes on some values, silently ignores others
    duquant::cli::check_openmp_environment();
  } catch (const duquant::Error& e) {
    fmt::print(stderr, "duquant: error: {}\n", e.what());
    return duquant::exit_code(e.kind());
  }
  CLI::App app{"duquant: DuQuant W4A8 packing for robot vision-language-action policies"};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("duquant ") + DUQUANT_VERSION);
  std::string cpu_features = "auto";
  app.add_option("--cpu-features", cpu_features,
                 "instruction-set level of the CPU kernels: auto (the best this CPU runs), scalar, sse2, avx2 or "
                 "avx512; every level writes the same bytes (also DUQUANT_CPU_FEATURES)")
      ->check(CLI::IsMember({"auto", "scalar", "sse2", "avx2", "avx512"}));
  app.fallthrough();  // --cpu-features may also follow the command's name
  std::vector<duquant::cli::Action> actions{
      duquant::cli::register_list_linears(app), duquant::cli::register_pack(app),  duquant::cli::register_verify(app),
      duquant::cli::register_inspect(app),      duquant::cli::register_synth(app), duquant::cli::register_presets(app),
      duquant::cli::register_import(app),       duquant::cli::register_bake(app),  duquant::cli::register_version(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return cli_exit(app, e);
  } catch (const CLI::CallForAllHelp& e) {
    return cli_exit(app, e);
  } catch (const CLI::CallForVersion& e) {
    return cli_exit(app, e);
  } catch (const CLI::ParseError& e) {
    cli_exit(app, e);  // prints the reason
    return duquant::exit_code(duquant::ErrorKind::usage);
  }
  try {
    if (app.count("--cpu-features") > 0) duquant::set_cpu_level(cpu_features, "--cpu-features");
    for (const auto& action : actions) {
      const int code = action();
      if (code >= 0) return duquant::cli::finish_stdout(code);  // the requested output, written or exit 4
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
    fmt::print(stderr, "duquant: error: {}: {}\n", where.empty() ? std::string("file system") : where,
               e.code().message());
    return duquant::exit_code(duquant::ErrorKind::io);
  } catch (const std::bad_alloc&) {
    std::fflush(stdout);
    fmt::print(stderr, "duquant: error: out of memory\n");
    return duquant::exit_code(duquant::ErrorKind::io);
  } catch (const std::system_error& e) {
    // fmt::print throws this when standard output cannot take the text: full, read-only, or its
    // reader gone with SIGPIPE ignored. That is the requested output lost, exit 4, never a bug.
    if (duquant::cli::report_stdout_failure(e.code().value())) return duquant::exit_code(duquant::ErrorKind::io);
    std::fflush(stdout);
    fmt::print(stderr, "duquant: internal error: {}\n", e.what());
    return duquant::exit_code(duquant::ErrorKind::internal);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "duquant: internal error: {}\n", e.what());
    return duquant::exit_code(duquant::ErrorKind::internal);
  }
}

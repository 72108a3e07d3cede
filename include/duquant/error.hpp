// The one exception type of duquant, and the exit codes `main` maps it to.
//
// Every failure the program can explain is a duquant::Error carrying a kind (which selects the
// documented exit code, see docs/cli.md) and a message that names the file, tensor or layer, the
// stage and the numbers involved. Nothing else is thrown on purpose.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace duquant {

enum class ErrorKind {
  usage,     // bad command line, configuration or environment value          -> exit 2
  format,    // an input file violates its format                              -> exit 3
  io,        // a file cannot be found, opened, mapped, read or written         -> exit 4
  no_match,  // the selection picks no layer                                    -> exit 5
  numeric,   // a value makes the math impossible (NaN/Inf in a weight, ...)    -> exit 6
  device,    // the compute device asked for is missing or failed (CUDA error)  -> exit 7
  internal,  // a broken invariant of duquant itself: a bug                     -> exit 70
};

// Exit code of a run that ended with an error of this kind.
int exit_code(ErrorKind kind) noexcept;
// Short lowercase name of the kind ("format", "io", ...), used in messages and JSON.
const char* kind_name(ErrorKind kind) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message) : std::runtime_error(message), kind_(kind) {}
  ErrorKind kind() const noexcept { return kind_; }

 private:
  ErrorKind kind_;
};

template <typename... Args>
[[noreturn]] void fail(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(kind, fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace duquant

// Checks a condition that depends on input (never compiled out, unlike assert).
#define DQ_CHECK(cond, kind, ...)                                          \
  do {                                                                     \
    if (!(cond)) ::duquant::fail(::duquant::ErrorKind::kind, __VA_ARGS__); \
  } while (0)

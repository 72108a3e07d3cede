// The one way the tests start a program: `Child` runs the duquant binary (or another program found
// on PATH) with its standard streams set up as the test asks, the environment changed by name, and
// SIGINT, SIGTERM and SIGPIPE at their defaults (as a shell would start it), so that it can be
// waited for, stopped, resumed, signalled or killed. `run_cli` and `run_program` are the one-shot
// forms: start, wait, read what it printed.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/test_paths.hpp"

extern char** environ;

namespace duquant::test {

// How a standard stream of the child is set up.
enum class Stream {
  file,       // stdout/stderr: a regular file, read back afterwards; stdin: /dev/null
  closed,     // not open at all when the child starts
  full,       // /dev/full: every write fails with ENOSPC
  read_only,  // a file opened read-only: every write fails with EBADF
  broken,     // a pipe whose reader is gone: EPIPE, and SIGPIPE unless ignored
};

inline const char* stream_name(Stream s) {
  switch (s) {
    case Stream::file: return "file";
    case Stream::closed: return "closed";
    case Stream::full: return "full";
    case Stream::read_only: return "read-only";
    case Stream::broken: return "broken";
  }
  return "?";
}

struct ChildSetup {
  Stream out = Stream::file, err = Stream::file, in = Stream::file;
  bool sigpipe_ignored = false;
  std::vector<std::string> env;        // NAME=VALUE added, replacing an inherited NAME
  std::vector<std::string> env_unset;  // names removed from the inherited environment
  // The program and the words before the arguments; empty: the duquant binary. A program without
  // a slash is looked up on PATH (e.g. {"setpriv", "--reuid=65534", ...} then the binary's path).
  std::vector<std::string> command;
};

// A setup with `env` added and everything else as by default.
inline ChildSetup with_env(const std::vector<std::string>& env) {
  ChildSetup setup;
  setup.env = env;
  return setup;
}

inline std::string read_text(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A running child; stdout and stderr (Stream::file) go to `log_stem`.out and `log_stem`.err.
class Child {
 public:
  Child(const std::vector<std::string>& args, const ChildSetup& setup, const std::filesystem::path& log_stem)
      : out_path_(log_stem.string() + ".out"), err_path_(log_stem.string() + ".err") {
    std::vector<std::string> argv_s = setup.command;
    if (argv_s.empty()) argv_s.push_back(binary().string());
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<std::string> env_s;
    const auto overridden = [&](const std::string& entry) {
      const std::string name = entry.substr(0, entry.find('='));
      for (const std::string& e : setup.env)
        if (e.substr(0, e.find('=')) == name) return true;
      for (const std::string& u : setup.env_unset)
        if (u == name) return true;
      return false;
    };
    for (char** e = environ; *e != nullptr; ++e)
      if (!overridden(*e)) env_s.emplace_back(*e);
    env_s.insert(env_s.end(), setup.env.begin(), setup.env.end());
    std::vector<char*> argv, envp;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    for (auto& e : env_s) envp.push_back(e.data());
    envp.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    std::vector<int> parent_close;
    const auto set = [&](int fd, Stream s, const std::string& path) {
      switch (s) {
        case Stream::file:
          if (fd == STDIN_FILENO)
            posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDONLY, 0);
          else
            posix_spawn_file_actions_addopen(&actions, fd, path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
          break;
        case Stream::closed: posix_spawn_file_actions_addclose(&actions, fd); break;
        case Stream::full: posix_spawn_file_actions_addopen(&actions, fd, "/dev/full", O_WRONLY, 0); break;
        case Stream::read_only:
          ::close(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644));
          posix_spawn_file_actions_addopen(&actions, fd, path.c_str(), O_RDONLY, 0);
          break;
        case Stream::broken: {
          int p[2];
          if (::pipe(p) != 0) break;
          ::close(p[0]);  // the reader is gone before the child starts
          posix_spawn_file_actions_adddup2(&actions, p[1], fd);
          posix_spawn_file_actions_addclose(&actions, p[1]);
          parent_close.push_back(p[1]);
          break;
        }
      }
    };
    set(STDIN_FILENO, setup.in, log_stem.string() + ".in");
    set(STDOUT_FILENO, setup.out, out_path_);
    set(STDERR_FILENO, setup.err, err_path_);

    // SIGINT, SIGTERM and SIGPIPE at their defaults in the child, unless SIGPIPE is to be ignored
    // (an ignored signal stays ignored across exec; this test process ignores SIGPIPE, so that a
    // child's broken pipe never ends the test).
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t defaults;
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    if (!setup.sigpipe_ignored) sigaddset(&defaults, SIGPIPE);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    sigset_t none;
    sigemptyset(&none);
    posix_spawnattr_setsigmask(&attr, &none);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    ::signal(SIGPIPE, SIG_IGN);
    const int rc = posix_spawnp(&pid_, argv[0], &actions, &attr, argv.data(), envp.data());
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    for (int fd : parent_close) ::close(fd);
    if (rc != 0) pid_ = -1;
  }
  // `duquant ARGS` with `env` added.
  Child(const std::vector<std::string>& args, const std::vector<std::string>& env,
        const std::filesystem::path& log_stem)
      : Child(args, with_env(env), log_stem) {}
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  // Waits until the child stops itself (the SIGSTOP seams); false when it ended instead.
  bool wait_stopped() {
    int status = 0;
    if (::waitpid(pid_, &status, WUNTRACED) != pid_) return false;
    if (WIFSTOPPED(status)) return true;
    finish(status);
    return false;
  }
  void resume() { ::kill(pid_, SIGCONT); }
  void signal(int sig) { ::kill(pid_, sig); }
  void kill() { ::kill(pid_, SIGKILL); }
  // Waits until the child ends or `deadline` passes, whichever is first; true when it ended.
  bool wait_until(std::chrono::steady_clock::time_point deadline) {
    while (!reaped_ && pid_ > 0) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        finish(status);
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    return true;
  }
  // Waits for the end: the exit code, or 128 + signal; -1 when the child never started. With a
  // `watchdog`, a child still running after it is killed, the test fails (a hang) and -2 is returned.
  int wait(std::optional<std::chrono::seconds> watchdog = std::nullopt) {
    if (pid_ <= 0) return -1;
    if (watchdog && !wait_until(std::chrono::steady_clock::now() + *watchdog)) {
      kill();
      int status = 0;
      ::waitpid(pid_, &status, 0);
      reaped_ = true;
      code_ = -2;
      ADD_FAILURE() << "the child hung (killed after " << watchdog->count() << " s)";
    }
    while (!reaped_) {
      int status = 0;
      if (::waitpid(pid_, &status, 0) == pid_) finish(status);
    }
    return code_;
  }
  std::string out() const { return read_text(out_path_); }
  std::string err() const { return read_text(err_path_); }

 private:
  void finish(int status) {
    reaped_ = true;
    code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }
  std::string out_path_, err_path_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int code_ = -1;
};

struct CliResult {
  int exit_code = -1;  // the exit code, or 128 + signal
  std::string out;
  std::string err;
};

// Starts `setup`'s command (default: the duquant binary) with `args`, waits for it and returns what
// it printed; the log files are removed.
inline CliResult run_program(const std::vector<std::string>& args, const ChildSetup& setup,
                             std::optional<std::chrono::seconds> watchdog = std::nullopt) {
  static std::atomic<int> counter{0};
  const std::filesystem::path stem = std::filesystem::temp_directory_path() /
                                     ("duquant-cli-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  CliResult r;
  {
    Child child(args, setup, stem);
    r.exit_code = child.wait(watchdog);
    r.out = child.out();
    r.err = child.err();
  }
  std::error_code ec;
  std::filesystem::remove(stem.string() + ".out", ec);
  std::filesystem::remove(stem.string() + ".err", ec);
  return r;
}

// `duquant ARGS` as a user would run it; `env` entries ("NAME=value") are set for this run only.
inline CliResult run_cli(const std::vector<std::string>& args, const std::vector<std::string>& env = {}) {
  return run_program(args, with_env(env));
}

}  // namespace duquant::test

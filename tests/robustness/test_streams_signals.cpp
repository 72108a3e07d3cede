// Standard streams, interruptions and the environment (docs/reliability.md, "Streams, signals and
// the environment"): every command with a closed, full, read-only and broken stdout and stderr;
// descriptors 0-2 closed at start; SIGINT/SIGTERM during a pack, then --resume; OpenMP variables
// at their extremes; calibration activations at +-3e38. No timing is measured: a child still
// running after the watchdog's limit is killed and fails the test (a hang).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "robustness/robustness_util.hpp"

extern char** environ;

namespace duquant {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kSigpipe = 128 + SIGPIPE;
constexpr auto kWatchdog = std::chrono::seconds(300);

// How a standard stream of the child is set up.
enum class Stream {
  file,        // a regular file (read back afterwards)
  closed,      // not open at all when the child starts
  full,        // /dev/full: every write fails with ENOSPC
  read_only,   // a file opened read-only: every write fails with EBADF
  broken,      // a pipe whose reader is gone: EPIPE, and SIGPIPE unless ignored
};

const char* stream_name(Stream s) {
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
  std::vector<std::string> env;         // NAME=VALUE added (replacing inherited ones)
  std::vector<std::string> env_unset;   // names removed from the inherited environment
};

struct Outcome {
  int code = -1;  // exit code, or 128 + signal
  std::string out, err;
};

// A running child with the streams of `setup`.
class Spawned {
 public:
  Spawned(const std::vector<std::string>& args, const ChildSetup& setup, const fs::path& stem)
      : out_path_(stem.string() + ".out"), err_path_(stem.string() + ".err") {
    std::vector<std::string> argv_s{test::binary().string()};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<std::string> env_s;
    auto overridden = [&](const std::string& entry) {
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
    auto set = [&](int fd, Stream s, const std::string& path) {
      switch (s) {
        case Stream::file:
          if (fd == STDIN_FILENO) posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", O_RDONLY, 0);
          else posix_spawn_file_actions_addopen(&actions, fd, path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
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
    set(STDIN_FILENO, setup.in, stem.string() + ".in");
    set(STDOUT_FILENO, setup.out, out_path_);
    set(STDERR_FILENO, setup.err, err_path_);

    // SIGINT, SIGTERM and SIGPIPE at their defaults in the child, unless SIGPIPE is to be ignored
    // (an ignored signal stays ignored across exec; this test process ignores SIGPIPE).
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
    const int rc = posix_spawn(&pid_, argv[0], &actions, &attr, argv.data(), envp.data());
    posix_spawnattr_destroy(&attr);
    posix_spawn_file_actions_destroy(&actions);
    for (int fd : parent_close) ::close(fd);
    if (rc != 0) pid_ = -1;
  }
  Spawned(const Spawned&) = delete;
  Spawned& operator=(const Spawned&) = delete;
  ~Spawned() {
    if (pid_ > 0 && code_ < 0) {
      ::kill(pid_, SIGKILL);
      int status = 0;
      ::waitpid(pid_, &status, 0);
    }
  }
  pid_t pid() const { return pid_; }
  bool wait_stopped() {
    int status = 0;
    if (::waitpid(pid_, &status, WUNTRACED) != pid_) return false;
    if (WIFSTOPPED(status)) return true;
    code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return false;
  }
  // The exit code or 128 + signal; a child still running at the watchdog's limit is killed (-2).
  Outcome wait() {
    const auto deadline = Clock::now() + kWatchdog;
    while (code_ < 0 && pid_ > 0) {
      int status = 0;
      const pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        break;
      }
      if (Clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        code_ = -2;
        ADD_FAILURE() << "the child hung (killed by the watchdog)";
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    Outcome o;
    o.code = code_;
    o.out = test::read_text(out_path_);
    o.err = test::read_text(err_path_);
    return o;
  }

 private:
  std::string out_path_, err_path_;
  pid_t pid_ = -1;
  int code_ = -1;
};

Outcome run(const std::vector<std::string>& args, const ChildSetup& setup, const fs::path& stem) {
  Spawned child(args, setup, stem);
  EXPECT_GT(child.pid(), 0);
  return child.wait();
}

const std::string kLayer = "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj";

std::vector<std::string> pack_args(const fs::path& out) {
  return {"pack", test::tiny_checkpoint().string(), "-o", out.string(), "--preset", "openpi-dit", "--max-shard-size",
          "200KB"};
}

// A finished pack of the tiny checkpoint, made once per test process (CTest runs each test in a
// process of its own, two at once) and removed at its end.
struct SharedPack {
  fs::path path;
  SharedPack() {
    // Its own folder: test::temp_dir() empties the running test's folder each time it is called.
    path = fs::temp_directory_path() / "duquant-tests" / fmt::format("StreamsSignals.shared-pack.{}", ::getpid());
    fs::remove_all(path);
    fs::create_directories(path.parent_path());
    const Outcome o = run(pack_args(path), {}, path.string() + "-log");
    EXPECT_EQ(o.code, 0) << o.err;
  }
  ~SharedPack() {
    std::error_code ec;
    fs::remove_all(path, ec);
    for (const char* ext : {"-log.out", "-log.err"}) fs::remove(path.string() + ext, ec);
  }
};

const fs::path& shared_pack() {
  static const SharedPack pack;
  return pack.path;
}

struct Command {
  std::string name;
  std::vector<std::string> args;  // "{out}" is replaced by a fresh output path of the case
  bool writes_stdout = true;
};

std::vector<Command> every_command() {
  const std::string ckpt = test::tiny_checkpoint().string();
  const std::string pack = shared_pack().string();
  return {
      {"list-linears", {"list-linears", ckpt, "--preset", "openpi-dit"}},
      {"list-linears-json", {"list-linears", ckpt, "--preset", "openpi-dit", "--json"}},
      {"pack", {"pack", ckpt, "-o", "{out}", "--layers", kLayer}},
      {"verify", {"verify", pack, "-c", ckpt}},
      {"inspect", {"inspect", pack}},
      {"inspect-json", {"inspect", pack, "--json"}},
      {"synth", {"synth", "-o", "{out}.safetensors", "--factor", "16", "--layers", "1"}},
      {"presets", {"presets"}},
      {"version", {"version"}},
      {"help", {"--help"}},
  };
}

std::vector<std::string> with_out(std::vector<std::string> args, const fs::path& out) {
  for (std::string& a : args) {
    const auto at = a.find("{out}");
    if (at != std::string::npos) a.replace(at, 5, out.string());
  }
  return args;
}

bool no_temp_files(const fs::path& dir, std::string* which) {
  if (!fs::exists(dir)) return true;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.path().filename().string().find(".tmp-") != std::string::npos) return *which = e.path().string(), false;
  return true;
}

// --- streams ------------------------------------------------------------------------------------

TEST(StreamsSignals, EveryCommandWithClosedFullReadOnlyAndBrokenStdout) {
  const fs::path dir = test::temp_dir();
  int cases = 0;
  for (const Command& c : every_command()) {
    struct Case {
      Stream s;
      bool ignored;
      int expect;
    };
    for (const Case k : {Case{Stream::file, false, 0}, Case{Stream::closed, false, 0}, Case{Stream::full, false, 4},
                         Case{Stream::read_only, false, 4}, Case{Stream::broken, false, kSigpipe},
                         Case{Stream::broken, true, 4}}) {
      const std::string label = fmt::format("{} stdout {}{}", c.name, stream_name(k.s), k.ignored ? " (SIGPIPE ignored)" : "");
      SCOPED_TRACE(label);
      const fs::path out = dir / fmt::format("out-{}", cases);
      ChildSetup setup;
      setup.out = k.s;
      setup.sigpipe_ignored = k.ignored;
      const Outcome o = run(with_out(c.args, out), setup, dir / fmt::format("case-{}", cases));
      ++cases;
      EXPECT_EQ(o.code, k.expect) << o.err;
      if (k.expect == 4) {
        EXPECT_TRUE(test::contains(o.err, "standard output: write failed")) << o.err;
      }
      EXPECT_FALSE(test::contains(o.err, "internal error")) << o.err;
      if (k.s == Stream::file) {
        EXPECT_FALSE(o.out.empty());
      }
      if (c.name == "pack" && k.expect != 0) {  // stopped before any work
        EXPECT_FALSE(fs::exists(out / "manifest.json"));
        std::string which;
        EXPECT_TRUE(no_temp_files(out, &which)) << which;
      }
    }
  }
  std::printf("[ streams ] %d stdout cases\n", cases);
}

TEST(StreamsSignals, EveryCommandWithClosedFullAndBrokenStderrKeepsItsExitCode) {
  const fs::path dir = test::temp_dir();
  int cases = 0;
  for (const Command& c : every_command()) {
    // The command as it is, and the command failing (a missing input: exit 4, a message on stderr).
    std::vector<std::pair<std::vector<std::string>, int>> variants{{c.args, 0}};
    if (c.name != "presets" && c.name != "version" && c.name != "help" && c.name != "synth") {
      std::vector<std::string> bad = c.args;
      bad[1] = (dir / "missing.safetensors").string();
      variants.emplace_back(bad, 4);
    }
    if (c.name == "help") variants.push_back({{"--no-such-flag"}, 2});  // a usage error, printed by the parser
    else variants.push_back({{c.args[0], "--no-such-flag"}, 2});
    for (const auto& [args, expect] : variants)
      for (const Stream s : {Stream::closed, Stream::full, Stream::broken})
        for (const bool ignored : {false, true}) {
          if (s != Stream::broken && ignored) continue;
          const std::string label = fmt::format("{} [{}] stderr {}{}", c.name, fmt::join(args, " "), stream_name(s),
                                                ignored ? " (SIGPIPE ignored)" : "");
          SCOPED_TRACE(label);
          ChildSetup setup;
          setup.err = s;
          setup.sigpipe_ignored = ignored;
          const fs::path out = dir / fmt::format("err-out-{}", cases);
          const Outcome o = run(with_out(args, out), setup, dir / fmt::format("err-case-{}", cases));
          ++cases;
          // Never SIGABRT, SIGPIPE or an internal error: the exit code the command has with a good stderr.
          EXPECT_EQ(o.code, expect) << o.out;
        }
  }
  std::printf("[ streams ] %d stderr cases\n", cases);
}

TEST(StreamsSignals, ClosedDescriptorsAtStartNeverBecomePackFiles) {
  const fs::path dir = test::temp_dir();
  const fs::path closed = dir / "closed";
  ChildSetup setup;
  setup.in = setup.out = setup.err = Stream::closed;
  // The notice and the progress lines would land in a pack file opened as descriptor 1 or 2.
  std::vector<std::string> args = pack_args(closed);
  const Outcome o = run(args, setup, dir / "closed");
  ASSERT_EQ(o.code, 0);
  std::string why;
  EXPECT_TRUE(test::same_folder(closed, shared_pack(), &why)) << why;
  // Every command with nothing open runs as it does with its streams on files.
  for (const Command& c : every_command()) {
    SCOPED_TRACE(c.name);
    const Outcome r = run(with_out(c.args, dir / ("closed-" + c.name)), setup, dir / ("closed-" + c.name));
    EXPECT_EQ(r.code, 0);
  }
  // verify with 0-2 closed reads the pack it is given, not a descriptor that happens to be 1.
  const Outcome v = run({"verify", closed.string(), "-c", test::tiny_checkpoint().string()}, setup, dir / "closed-verify");
  EXPECT_EQ(v.code, 0);
}

// --- interruptions ------------------------------------------------------------------------------

// Stops the pack right after its N-th temporary file was created (a seam), checks that a temporary
// file exists, sends `sig` and lets it go on: exit 128 + sig, one line naming the signal and
// --resume, no temporary file left; then --resume gives the uninterrupted bytes.
void interrupt_in_temp(int sig, int nth, const std::string& label) {
  SCOPED_TRACE(label);
  const fs::path dir = test::temp_dir();
  const fs::path out = dir / label;
  fs::remove_all(out);
  ChildSetup setup;
  setup.env = {fmt::format("DUQUANT_TEST_STOP_IN_TEMP={}", nth)};
  Spawned child(pack_args(out), setup, dir / label);
  ASSERT_TRUE(child.wait_stopped()) << "the pack ended before its temporary file " << nth;
  std::string which;
  EXPECT_FALSE(no_temp_files(out, &which)) << "no temporary file while the pack is stopped in one";
  ::kill(child.pid(), sig);
  ::kill(child.pid(), SIGCONT);
  const Outcome o = child.wait();
  EXPECT_EQ(o.code, 128 + sig) << o.err;
  const std::string name = sig == SIGINT ? "SIGINT" : "SIGTERM";
  EXPECT_TRUE(test::contains(o.err, "duquant: interrupted by " + name)) << o.err;
  EXPECT_TRUE(test::contains(o.err, "run again with --resume")) << o.err;
  EXPECT_EQ(std::count(o.err.begin(), o.err.end(), '\n'), 2) << o.err;  // the CPU notice and the one line
  EXPECT_TRUE(no_temp_files(out, &which)) << which;
  EXPECT_FALSE(fs::exists(out / "manifest.json"));

  std::vector<std::string> resume = pack_args(out);
  resume.push_back("--resume");
  const Outcome rr = run(resume, ChildSetup{}, dir / (label + "-resume"));
  ASSERT_EQ(rr.code, 0) << rr.err;
  std::string why;
  EXPECT_TRUE(test::same_folder(out, shared_pack(), &why)) << why;
}

TEST(StreamsSignals, SigintInATemporaryFileThenResumeGivesTheSameBytes) {
  interrupt_in_temp(SIGINT, 1, "sigint-temp-1");
  interrupt_in_temp(SIGINT, 7, "sigint-temp-7");
  interrupt_in_temp(SIGINT, 20, "sigint-temp-20");
}

TEST(StreamsSignals, SigtermInATemporaryFileThenResumeGivesTheSameBytes) {
  interrupt_in_temp(SIGTERM, 3, "sigterm-temp-3");
  interrupt_in_temp(SIGTERM, 15, "sigterm-temp-15");
}

TEST(StreamsSignals, SigintBetweenLayersNamesTheLayerAndResumes) {
  const fs::path dir = test::temp_dir();
  for (const int k : {1, 2, 5}) {
    SCOPED_TRACE(k);
    const fs::path out = dir / fmt::format("between-{}", k);
    fs::remove_all(out);
    ChildSetup setup;
    setup.env = {fmt::format("DUQUANT_TEST_STOP_AT=layer:{}", k)};
    Spawned child(pack_args(out), setup, dir / fmt::format("between-{}", k));
    ASSERT_TRUE(child.wait_stopped());
    ::kill(child.pid(), SIGINT);
    ::kill(child.pid(), SIGCONT);
    const Outcome o = child.wait();
    EXPECT_EQ(o.code, 128 + SIGINT) << o.err;
    // The pack stops after the k-th layer is recorded; the line names the layer reached (the engine
    // may have reported one more) of the 14.
    EXPECT_TRUE(test::contains(o.err, fmt::format("interrupted by SIGINT at layer {} of 14", k)) ||
                test::contains(o.err, fmt::format("interrupted by SIGINT at layer {} of 14", k + 1)))
        << o.err;
    std::string which;
    EXPECT_TRUE(no_temp_files(out, &which)) << which;
    std::vector<std::string> resume = pack_args(out);
    resume.push_back("--resume");
    const Outcome r = run(resume, ChildSetup{}, dir / fmt::format("between-{}-resume", k));
    ASSERT_EQ(r.code, 0) << r.err;
    EXPECT_TRUE(test::contains(r.out, "reused")) << r.out;
    std::string why;
    EXPECT_TRUE(test::same_folder(out, shared_pack(), &why)) << why;
  }
}

// --- the environment ----------------------------------------------------------------------------

TEST(StreamsSignals, OpenmpVariablesAtTheirExtremes) {
  const fs::path dir = test::temp_dir();
  struct Case {
    std::string assignment;
    int expect;
  };
  const std::vector<Case> cases{
      {"OMP_NUM_THREADS=99999999", 2}, {"OMP_NUM_THREADS=0", 2},         {"OMP_NUM_THREADS=-4", 2},
      {"OMP_NUM_THREADS=abc", 2},      {"OMP_NUM_THREADS=4,99999999", 2}, {"OMP_NUM_THREADS=1025", 2},
      {"OMP_THREAD_LIMIT=0", 2},       {"OMP_THREAD_LIMIT=99999999", 2},  {"OMP_THREAD_LIMIT=x", 2},
      {"OMP_STACKSIZE=99999999G", 2},  {"OMP_STACKSIZE=1B", 2},           {"OMP_STACKSIZE=4T", 2},
      {"OMP_STACKSIZE=xyz", 2},        {"GOMP_STACKSIZE=99999999G", 2},
      {"OMP_NUM_THREADS=1", 0},        {"OMP_NUM_THREADS=64", 0},         {"OMP_NUM_THREADS=3,2", 0},
      {"OMP_THREAD_LIMIT=2", 0},       {"OMP_STACKSIZE=64M", 0},          {"OMP_STACKSIZE= 512 k ", 0},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(c.assignment);
    const fs::path out = dir / fmt::format("omp-{}", n);
    ChildSetup setup;
    setup.env = {c.assignment};
    setup.env_unset = {"OMP_NUM_THREADS", "OMP_THREAD_LIMIT", "OMP_STACKSIZE", "GOMP_STACKSIZE"};
    const Outcome o = run(pack_args(out), setup, dir / fmt::format("omp-{}", n++));
    EXPECT_EQ(o.code, c.expect) << o.err;
    const std::string name = c.assignment.substr(0, c.assignment.find('='));
    if (c.expect == 2) {
      EXPECT_TRUE(test::contains(o.err, "duquant: error: " + name)) << o.err;
      EXPECT_FALSE(fs::exists(out));  // before any work
    } else {
      std::string why;
      EXPECT_TRUE(test::same_folder(out, shared_pack(), &why)) << why;  // any thread count: the same bytes
    }
  }
}

// A one-layer checkpoint and a dump of two calls whose values are `big` with alternating signs.
void write_extreme_inputs(const fs::path& ckpt, const fs::path& dump, float big) {
  test::write_f32_checkpoint(ckpt, {{"blk.q_proj", 32, 64, test::pattern_values(32, 64, 3)}});
  std::vector<formats::TensorSpec> specs{{"blk.q_proj.x_0000", formats::DType::F32, {16, 64}},
                                         {"blk.q_proj.x_0001", formats::DType::F32, {16, 64}}};
  std::vector<float> v(2 * 16 * 64);
  for (std::size_t k = 0; k < v.size(); ++k) v[k] = (k % 2 ? big : -big) * (k < 16 * 64 ? 1.0f : 0.5f);
  formats::SafetensorsWriter w(dump, specs, {});
  w.write(std::as_bytes(std::span(v.data(), v.size())));
  w.commit();
}

TEST(StreamsSignals, ExtremeCalibrationActivationsAreRefusedOrVerify) {
  const fs::path dir = test::temp_dir();
  struct Case {
    float big;
    std::vector<std::string> options;
    int expect;
  };
  const std::vector<Case> cases{
      {3e38f, {"--calib-steps", "1"}, 6},
      {-3e38f, {"--calib-steps", "2", "--abits", "16"}, 6},
      {3e38f, {"--calib-steps", "1", "--smooth-alpha", "0.5"}, 6},
      {1e9f, {"--calib-steps", "1"}, 6},
      {1e8f, {"--calib-steps", "1"}, 0},
      {1e8f, {"--calib-steps", "2", "--abits", "16", "--smooth-alpha", "0.5"}, 0},
      {1e4f, {"--calib-steps", "1"}, 0},
  };
  int n = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(fmt::format("{:g} {}", c.big, fmt::join(c.options, " ")));
    const fs::path ckpt = dir / fmt::format("act-{}.safetensors", n), dump = dir / fmt::format("act-{}.dump.safetensors", n);
    const fs::path out = dir / fmt::format("act-{}", n);
    write_extreme_inputs(ckpt, dump, c.big);
    std::vector<std::string> args{"pack", ckpt.string(), "-o", out.string(), "--layers", "blk.q_proj", "--calib", dump.string()};
    args.insert(args.end(), c.options.begin(), c.options.end());
    const Outcome o = run(args, ChildSetup{}, dir / fmt::format("act-{}", n++));
    EXPECT_EQ(o.code, c.expect) << o.err;
    if (c.expect == 6) {
      EXPECT_TRUE(test::contains(o.err, "layer 'blk.q_proj' call x_0000")) << o.err;
      EXPECT_FALSE(fs::exists(out / "manifest.json"));
      continue;
    }
    // What pack writes, verify accepts (WARN only for smoothing, which the runtime ignores).
    const Outcome v = run({"verify", out.string(), "-c", ckpt.string()}, ChildSetup{}, dir / fmt::format("act-verify-{}", n));
    EXPECT_EQ(v.code, 0) << v.out << v.err;
    EXPECT_TRUE(test::contains(v.out, "0 FAIL")) << v.out;
  }
}

}  // namespace
}  // namespace duquant

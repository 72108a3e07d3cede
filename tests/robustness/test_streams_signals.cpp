// Standard streams, interruptions and the environment (docs/reliability.md, "Streams, signals and
// the environment"): every command with a closed, full, read-only and broken stdout and stderr;
// descriptors 0-2 closed at start; SIGINT/SIGTERM during a pack, then --resume; OpenMP variables
// at their extremes; calibration activations at +-3e38. No timing is measured: a child still
// running after the watchdog's limit is killed and fails the test (a hang).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
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

namespace duquant {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr int kSigpipe = 128 + SIGPIPE;
constexpr auto kWatchdog = std::chrono::seconds(300);

using test::ChildSetup;
using test::Stream;
using test::stream_name;

struct Outcome {
  int code = -1;  // exit code, or 128 + signal
  std::string out, err;
};

// The child's end (the watchdog kills a hang and fails the test) and what it printed.
Outcome finish(test::Child& child) {
  Outcome o;
  o.code = child.wait(kWatchdog);
  o.out = child.out();
  o.err = child.err();
  return o;
}

Outcome run(const std::vector<std::string>& args, const ChildSetup& setup, const fs::path& stem) {
  test::Child child(args, setup, stem);
  EXPECT_GT(child.pid(), 0);
  return finish(child);
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
    for (const Case k :
         {Case{Stream::file, false, 0}, Case{Stream::closed, false, 0}, Case{Stream::full, false, 4},
          Case{Stream::read_only, false, 4}, Case{Stream::broken, false, kSigpipe}, Case{Stream::broken, true, 4}}) {
      const std::string label =
          fmt::format("{} stdout {}{}", c.name, stream_name(k.s), k.ignored ? " (SIGPIPE ignored)" : "");
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
    if (c.name == "help")
      variants.push_back({{"--no-such-flag"}, 2});  // a usage error, printed by the parser
    else
      variants.push_back({{c.args[0], "--no-such-flag"}, 2});
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
  const Outcome v =
      run({"verify", closed.string(), "-c", test::tiny_checkpoint().string()}, setup, dir / "closed-verify");
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
  test::Child child(pack_args(out), setup, dir / label);
  ASSERT_TRUE(child.wait_stopped()) << "the pack ended before its temporary file " << nth;
  std::string which;
  EXPECT_FALSE(no_temp_files(out, &which)) << "no temporary file while the pack is stopped in one";
  ::kill(child.pid(), sig);
  ::kill(child.pid(), SIGCONT);
  const Outcome o = finish(child);
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
    test::Child child(pack_args(out), setup, dir / fmt::format("between-{}", k));
    ASSERT_TRUE(child.wait_stopped());
    ::kill(child.pid(), SIGINT);
    ::kill(child.pid(), SIGCONT);
    const Outcome o = finish(child);
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
      {"OMP_NUM_THREADS=99999999", 2}, {"OMP_NUM_THREADS=0", 2},          {"OMP_NUM_THREADS=-4", 2},
      {"OMP_NUM_THREADS=abc", 2},      {"OMP_NUM_THREADS=4,99999999", 2}, {"OMP_NUM_THREADS=1025", 2},
      {"OMP_THREAD_LIMIT=0", 2},       {"OMP_THREAD_LIMIT=99999999", 2},  {"OMP_THREAD_LIMIT=x", 2},
      {"OMP_STACKSIZE=99999999G", 2},  {"OMP_STACKSIZE=1B", 2},           {"OMP_STACKSIZE=4T", 2},
      {"OMP_STACKSIZE=xyz", 2},        {"GOMP_STACKSIZE=99999999G", 2},   {"OMP_NUM_THREADS=1", 0},
      {"OMP_NUM_THREADS=64", 0},       {"OMP_NUM_THREADS=3,2", 0},        {"OMP_THREAD_LIMIT=2", 0},
      {"OMP_STACKSIZE=64M", 0},        {"OMP_STACKSIZE= 512 k ", 0},
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
    const fs::path ckpt = dir / fmt::format("act-{}.safetensors", n),
                   dump = dir / fmt::format("act-{}.dump.safetensors", n);
    const fs::path out = dir / fmt::format("act-{}", n);
    write_extreme_inputs(ckpt, dump, c.big);
    std::vector<std::string> args{"pack",     ckpt.string(), "-o",      out.string(),
                                  "--layers", "blk.q_proj",  "--calib", dump.string()};
    args.insert(args.end(), c.options.begin(), c.options.end());
    const Outcome o = run(args, ChildSetup{}, dir / fmt::format("act-{}", n++));
    EXPECT_EQ(o.code, c.expect) << o.err;
    if (c.expect == 6) {
      EXPECT_TRUE(test::contains(o.err, "layer 'blk.q_proj' call x_0000")) << o.err;
      EXPECT_FALSE(fs::exists(out / "manifest.json"));
      continue;
    }
    // What pack writes, verify accepts (WARN only for smoothing, which the runtime ignores).
    const Outcome v =
        run({"verify", out.string(), "-c", ckpt.string()}, ChildSetup{}, dir / fmt::format("act-verify-{}", n));
    EXPECT_EQ(v.code, 0) << v.out << v.err;
    EXPECT_TRUE(test::contains(v.out, "0 FAIL")) << v.out;
  }
}

}  // namespace
}  // namespace duquant

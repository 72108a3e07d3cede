// Integrity (docs/reliability.md, "Outputs and inputs", "One writer per pack", "Resume bound to the
// bytes"):
// - an output never aliases an input: every output flag against every input kind, by the same
//   name, a hard link, a symbolic link and a file of the pack; exit 2 naming both, nothing changed;
// - outputs are regular files or "-": a device node and a FIFO are refused untouched (no block),
//   `--html -` is standard output, an existing file is replaced only with --force, a symbolic link
//   is written through;
// - one writer per pack: a second writer on a folder being written changes nothing and exits 4
//   naming the first, whose pack is then byte-identical to an undisturbed one; a file system that
//   cannot lock is exit 4 unless --no-lock; only a gone writer's temporary files are removed;
// - resume bound to the bytes: whatever the checkpoint did between a killed (or stopped) run and
//   its resume, `--resume` gives the bytes of a fresh pack of the checkpoint as it is then.
#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "robustness/robustness_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using test::contains;
using test::Outcome;
using test::run_dq;
using test::tree;

std::string s(const fs::path& p) { return p.string(); }

// The shared inputs of the alias and output-kind cases: the hand-made q/k/v checkpoint, a dump, a
// configuration and a finished pack of the checkpoint.
class Integrity : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    base_ = fs::temp_directory_path() / "duquant-tests" / fmt::format("Integrity-base-{}", ::getpid());
    fs::remove_all(base_);
    fs::create_directories(base_);
    test::write_tensors(base_ / "ck.safetensors", test::kLayers, true);
    test::write_dump(base_ / "dump.safetensors");
    test::write_bytes(base_ / "cfg.json", R"({"config": {"block": 16}})");
    const Outcome p =
        run_dq({"pack", s(base_ / "ck.safetensors"), "-o", s(base_ / "pack"), "--threads", "2"}, base_ / "pack-log");
    ASSERT_EQ(p.code, 0) << p.out << p.err;
    for (const char* log : {"pack-log.out", "pack-log.err"}) fs::remove(base_ / log);
  }
  static void TearDownTestSuite() { fs::remove_all(base_); }

  fs::path sandbox(const std::string& name) {
    const fs::path w = test::temp_dir() / name;
    fs::remove_all(w);
    fs::create_directories(w);
    fs::copy(base_, w, fs::copy_options::recursive);
    return w;
  }

  static fs::path base_;
};
fs::path Integrity::base_;

// How an output path is made to be an input.
enum class Alias { same_name, hard_link, symlink };
const char* alias_name(Alias a) {
  switch (a) {
    case Alias::same_name: return "same name";
    case Alias::hard_link: return "hard link";
    case Alias::symlink: return "symbolic link";
  }
  return "?";
}

// The path, made in `w`, that is `input` under the form `a` (a new name for the links).
fs::path alias_of(const fs::path& w, const fs::path& input, Alias a, const std::string& new_name) {
  switch (a) {
    case Alias::same_name: return input.parent_path() / "." / input.filename();  // the same file, written differently
    case Alias::hard_link: fs::create_hard_link(input, w / new_name); return w / new_name;
    case Alias::symlink: fs::create_symlink(input, w / new_name); return w / new_name;
  }
  return {};
}

// One refused run: exit 2, both paths named, nothing in the sandbox changed, no signal, no hang.
void expect_alias_refused(const fs::path& w, const std::vector<std::string>& args, const std::string& input_name,
                          const std::string& label) {
  SCOPED_TRACE(label);
  const auto before = tree(w);
  const Outcome r = run_dq(args, w.parent_path() / (w.filename().string() + "-log"));
  ASSERT_FALSE(r.hung);
  EXPECT_EQ(r.code, 2) << r.out << r.err;
  EXPECT_TRUE(contains(r.err, input_name)) << "the input is not named:\n" << r.err;
  EXPECT_TRUE(contains(r.err, "nothing was written") || contains(r.err, "choose another path") ||
              contains(r.err, "another folder"))
      << r.err;
  EXPECT_TRUE(tree(w) == before) << "a refused run changed the sandbox";
}

TEST_F(Integrity, EveryOutputFlagAgainstEveryInputKind) {
  int cases = 0;
  for (Alias a : {Alias::same_name, Alias::hard_link, Alias::symlink}) {
    // inspect --html onto the checkpoint it reads, onto a file of the pack it reads, onto --checkpoint.
    {
      const fs::path w = sandbox(fmt::format("html-ck-{}", cases));
      const fs::path out = alias_of(w, w / "ck.safetensors", a, "report.html");
      expect_alias_refused(w, {"inspect", s(w / "ck.safetensors"), "--html", s(out), "--force"}, "ck.safetensors",
                           fmt::format("inspect CKPT --html (the checkpoint, {})", alias_name(a)));
      ++cases;
    }
    for (const std::string& file :
         {std::string("manifest.json"), test::kLayers[0] + ".npz", std::string("quantized.safetensors")}) {
      const fs::path w = sandbox(fmt::format("html-pack-{}", cases));
      const fs::path out = alias_of(w, w / "pack" / file, a, "report.html");
      expect_alias_refused(w, {"inspect", s(w / "pack"), "--html", s(out), "--force"}, file,
                           fmt::format("inspect PACK --html (the pack's {}, {})", file, alias_name(a)));
      ++cases;
    }
    {
      const fs::path w = sandbox(fmt::format("html-checkpoint-{}", cases));
      const fs::path out = alias_of(w, w / "ck.safetensors", a, "report.html");
      expect_alias_refused(
          w, {"inspect", s(w / "pack"), "--checkpoint", s(w / "ck.safetensors"), "--html", s(out), "--force"},
          "ck.safetensors", fmt::format("inspect PACK --checkpoint --html ({})", alias_name(a)));
      ++cases;
    }
    // pack --fold-smoothing onto the checkpoint, the dump and the configuration.
    for (const char* input : {"ck.safetensors", "dump.safetensors", "cfg.json"}) {
      const fs::path w = sandbox(fmt::format("fold-{}", cases));
      const fs::path out = alias_of(w, w / input, a, "folded.safetensors");
      expect_alias_refused(
          w,
          {"pack", s(w / "ck.safetensors"), "-o", s(w / "out"), "--calib", s(w / "dump.safetensors"), "--smooth-alpha",
           "0.5", "--config", s(w / "cfg.json"), "--fold-smoothing", s(out), "--force"},
          input, fmt::format("pack --fold-smoothing ({}, {})", input, alias_name(a)));
      ++cases;
    }
    // pack -o: a folder holding the dump (--calib in it), or a file of the folder that is an input.
    {
      const fs::path w = sandbox(fmt::format("out-{}", cases));
      fs::create_directories(w / "out");
      std::string name;
      if (a == Alias::same_name) {
        fs::copy_file(w / "dump.safetensors", w / "out" / "dump.safetensors");
        name = "dump.safetensors";
        expect_alias_refused(
            w, {"pack", s(w / "ck.safetensors"), "-o", s(w / "out"), "--calib", s(w / "out" / name), "--force"}, name,
            "pack -o holding --calib");
      } else {
        alias_of(w / "out", w / "ck.safetensors", a, "manifest.json");
        expect_alias_refused(w, {"pack", s(w / "ck.safetensors"), "-o", s(w / "out"), "--force"}, "ck.safetensors",
                             fmt::format("pack -o with manifest.json a {} of the checkpoint", alias_name(a)));
      }
      ++cases;
    }
  }
  // A file of the pack being written as --fold-smoothing (inside -o).
  for (const char* file : {"manifest.json", "folded.safetensors"}) {
    const fs::path w = sandbox(fmt::format("fold-in-pack-{}", cases));
    expect_alias_refused(w,
                         {"pack", s(w / "ck.safetensors"), "-o", s(w / "pack"), "--force", "--calib",
                          s(w / "dump.safetensors"), "--smooth-alpha", "0.5", "--fold-smoothing", s(w / "pack" / file)},
                         "pack", fmt::format("pack --fold-smoothing into the pack folder ({})", file));
    ++cases;
  }
  std::printf("alias cases: %d\n", cases);
  EXPECT_GE(cases, 29);
}

// Exempt: --config is read completely before the first write, so a rerun with the manifest of the
// pack it replaces works, and gives the same bytes.
TEST_F(Integrity, ConfigFromThePackItReplacesIsExempt) {
  const fs::path w = sandbox("rerun");
  const auto before = test::snapshot(w / "pack");
  const Outcome r = run_dq({"pack", s(w / "ck.safetensors"), "-o", s(w / "pack"), "--config",
                            s(w / "pack" / "manifest.json"), "--force", "--threads", "1"},
                           w.parent_path() / "rerun-log");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(test::snapshot(w / "pack") == before);
}

bool is_char_device(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 && S_ISCHR(st.st_mode);
}
bool is_a_fifo(const fs::path& p) {
  struct stat st {};
  return ::lstat(p.c_str(), &st) == 0 && S_ISFIFO(st.st_mode);
}

TEST_F(Integrity, DeviceNodesAndFifosAreNeverOutputs) {
  const fs::path w = sandbox("devices");
  ASSERT_EQ(::mkfifo((w / "fifo").c_str(), 0644), 0);
  // A character device of our own where the file system allows one (root, not in every container).
  const bool own_device = ::mknod((w / "null").c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0;
  std::vector<std::pair<std::string, std::vector<std::string>>> runs;
  for (const std::string& dev : {std::string("/dev/null"), s(w / "fifo")}) {
    runs.push_back({"inspect --html " + dev, {"inspect", s(w / "ck.safetensors"), "--html", dev, "--force"}});
    runs.push_back({"synth -o " + dev, {"synth", "-o", dev, "--factor", "16", "--layers", "1", "--force"}});
    runs.push_back({"pack --fold-smoothing " + dev,
                    {"pack", s(w / "ck.safetensors"), "-o", s(w / "out"), "--calib", s(w / "dump.safetensors"),
                     "--smooth-alpha", "0.5", "--fold-smoothing", dev, "--force"}});
  }
  if (own_device)
    runs.push_back(
        {"inspect --html (mknod)", {"inspect", s(w / "ck.safetensors"), "--html", s(w / "null"), "--force"}});
  for (const auto& [label, args] : runs) {
    SCOPED_TRACE(label);
    const Outcome r = run_dq(args, w.parent_path() / "devices-log");
    ASSERT_FALSE(r.hung) << "blocked on a FIFO or a device";
    EXPECT_EQ(r.code, 2) << r.err;
    EXPECT_TRUE(contains(r.err, "not opened or changed")) << r.err;
    EXPECT_TRUE(is_char_device("/dev/null"));
    EXPECT_TRUE(is_a_fifo(w / "fifo"));
    if (own_device) {
      EXPECT_TRUE(is_char_device(w / "null"));
    }
    EXPECT_FALSE(fs::exists(w / "out"));
  }
}

TEST_F(Integrity, HtmlDashIsStandardOutputAndExistingFilesNeedForce) {
  const fs::path w = sandbox("dash");
  const fs::path old_cwd = fs::current_path();
  fs::current_path(w);
  const Outcome dash = run_dq({"inspect", s(w / "ck.safetensors"), "--html", "-"}, w.parent_path() / "dash-log");
  fs::current_path(old_cwd);
  EXPECT_EQ(dash.code, 0) << dash.err;
  EXPECT_EQ(dash.out.rfind("<!DOCTYPE html>", 0), 0u) << dash.out.substr(0, 200);
  EXPECT_FALSE(fs::exists(w / "-")) << "a file named '-' was written";
  const Outcome both = run_dq({"inspect", s(w / "pack"), "--html", "-", "--json"}, w.parent_path() / "dash-log");
  EXPECT_EQ(both.code, 2) << both.err;

  // An existing file: exit 2 and untouched without --force, replaced with it.
  test::write_bytes(w / "report.html", "keep");
  const Outcome refused =
      run_dq({"inspect", s(w / "pack"), "--html", s(w / "report.html")}, w.parent_path() / "dash-log");
  EXPECT_EQ(refused.code, 2) << refused.err;
  EXPECT_TRUE(contains(refused.err, "--force")) << refused.err;
  EXPECT_EQ(test::read_text(w / "report.html"), "keep");
  test::write_bytes(w / "folded.safetensors", "keep");
  const Outcome fold =
      run_dq({"pack", s(w / "ck.safetensors"), "-o", s(w / "out"), "--calib", s(w / "dump.safetensors"),
              "--smooth-alpha", "0.5", "--fold-smoothing", s(w / "folded.safetensors")},
             w.parent_path() / "dash-log");
  EXPECT_EQ(fold.code, 2) << fold.err;
  EXPECT_EQ(test::read_text(w / "folded.safetensors"), "keep");
  EXPECT_FALSE(fs::exists(w / "out"));

  // Through a symbolic link: the file it points to is replaced, the link stays.
  fs::create_symlink("folded.safetensors", w / "folded-link.safetensors");
  const Outcome fold_linked =
      run_dq({"pack", s(w / "ck.safetensors"), "-o", s(w / "out2"), "--calib", s(w / "dump.safetensors"),
              "--smooth-alpha", "0.5", "--fold-smoothing", s(w / "folded-link.safetensors"), "--force"},
             w.parent_path() / "dash-log");
  EXPECT_EQ(fold_linked.code, 0) << fold_linked.err;
  EXPECT_TRUE(fs::is_symlink(w / "folded-link.safetensors"));
  EXPECT_NE(test::read_text(w / "folded.safetensors"), "keep");
  EXPECT_GT(fs::file_size(w / "folded.safetensors"), 100u);
  fs::create_symlink("report.html", w / "link.html");
  const Outcome linked =
      run_dq({"inspect", s(w / "pack"), "--html", s(w / "link.html"), "--force"}, w.parent_path() / "dash-log");
  EXPECT_EQ(linked.code, 0) << linked.err;
  EXPECT_TRUE(fs::is_symlink(w / "link.html"));
  EXPECT_EQ(test::read_text(w / "report.html").rfind("<!DOCTYPE html>", 0), 0u);
}

// ---------------------------------------------------------------------------------------------
// One writer per pack.

std::vector<std::string> pack_args(const fs::path& ckpt, const fs::path& out, std::vector<std::string> extra = {}) {
  std::vector<std::string> a{"pack", ckpt.string(), "-o", out.string(), "--preset", "openpi-dit"};
  a.insert(a.end(), extra.begin(), extra.end());
  return a;
}

// A private copy of the fixture checkpoint in the test's folder and its undisturbed pack (empty
// `pack` when that pack failed, with the failure recorded).
struct Baseline {
  fs::path dir, ckpt, pack;
};
Baseline fixture_with_baseline() {
  Baseline b;
  b.dir = test::temp_dir();
  b.ckpt = b.dir / "model.safetensors";
  fs::copy_file(test::tiny_checkpoint(), b.ckpt);
  const test::CliResult r = test::run_cli(pack_args(b.ckpt, b.dir / "baseline"));
  EXPECT_EQ(r.exit_code, 0) << r.err;
  if (r.exit_code == 0) b.pack = b.dir / "baseline";
  return b;
}

TEST(IntegrityLock, ASecondWriterChangesNothingAndTheFirstFinishesUndisturbed) {
  const Baseline b = fixture_with_baseline();
  const fs::path &dir = b.dir, &ckpt = b.ckpt, &baseline = b.pack;
  ASSERT_FALSE(baseline.empty());

  const fs::path out = dir / "out";
  test::Child first(pack_args(ckpt, out), {"DUQUANT_TEST_STOP_AT=layer:2"}, dir / "first");
  ASSERT_TRUE(first.started());
  ASSERT_TRUE(first.wait_stopped()) << first.err();
  const auto before = tree(out);
  for (const auto& extra : {std::vector<std::string>{"--resume"}, std::vector<std::string>{"--force"},
                            std::vector<std::string>{"--resume", "--threads", "1"}}) {
    const test::CliResult second = test::run_cli(pack_args(ckpt, out, extra));
    EXPECT_EQ(second.exit_code, 4) << second.out << second.err;
    EXPECT_TRUE(contains(second.err, "another duquant is writing this folder")) << second.err;
    EXPECT_TRUE(contains(second.err, fmt::format("pid {}", first.pid()))) << second.err;
    EXPECT_TRUE(tree(out) == before) << "the second writer changed the folder";
  }
  // Readers are told, with a reason code.
  const test::CliResult v = test::run_cli({"verify", out.string(), "--json"});
  EXPECT_TRUE(contains(v.out, "being-written")) << v.out << v.err;
  const test::CliResult i = test::run_cli({"inspect", out.string()});
  EXPECT_TRUE(contains(i.err, "being-written")) << i.out << i.err;

  first.resume();
  EXPECT_EQ(first.wait(), 0) << first.err();
  std::string why;
  EXPECT_TRUE(test::same_folder(out, baseline, &why)) << why;
  const test::CliResult after = test::run_cli({"verify", out.string(), "--json"});
  EXPECT_FALSE(contains(after.out, "being-written")) << "the lock outlived its writer";
}

TEST(IntegrityLock, AFileSystemThatCannotLockIsRefusedUnlessNoLock) {
  const Baseline b = fixture_with_baseline();
  const fs::path &dir = b.dir, &ckpt = b.ckpt, &baseline = b.pack;
  ASSERT_FALSE(baseline.empty());
  const test::CliResult refused = test::run_cli(pack_args(ckpt, dir / "out"), {"DUQUANT_TEST_FAULT=flock:1:ENOLCK"});
  EXPECT_EQ(refused.exit_code, 4) << refused.err;
  EXPECT_TRUE(contains(refused.err, "does not support locks")) << refused.err;
  EXPECT_TRUE(contains(refused.err, "--no-lock")) << refused.err;
  EXPECT_FALSE(fs::exists(dir / "out")) << "the folder made for the lock stayed";
  const test::CliResult unlocked =
      test::run_cli(pack_args(ckpt, dir / "out", {"--no-lock"}), {"DUQUANT_TEST_FAULT=flock:1:ENOLCK"});
  EXPECT_EQ(unlocked.exit_code, 0) << unlocked.err;
  EXPECT_TRUE(contains(unlocked.err, "without the folder's lock")) << unlocked.err;
  std::string why;
  EXPECT_TRUE(test::same_folder(dir / "out", baseline, &why)) << why;
}

TEST(IntegrityLock, OnlyTheTemporaryFilesOfAGoneWriterAreRemoved) {
  const Baseline b = fixture_with_baseline();
  const fs::path &dir = b.dir, &ckpt = b.ckpt, &baseline = b.pack;
  ASSERT_FALSE(baseline.empty());
  const fs::path out = dir / "out";
  EXPECT_EQ(test::run_cli(pack_args(ckpt, out), {"DUQUANT_TEST_KILL_AT=layer:2"}).exit_code, test::kKilledBySigkill);
  // A pid that is gone: a child that has ended.
  pid_t gone = -1;
  {
    test::Child c({"version"}, test::ChildSetup{}, dir / "gone");
    ASSERT_TRUE(c.started());
    gone = c.pid();
    c.wait();
  }
  const std::string dead_temp = fmt::format(".x.npz.tmp-{}", gone),
                    live_temp = fmt::format(".y.npz.tmp-{}", ::getpid());
  for (const fs::path& where : {out, out / ".duquant-work"}) {
    test::write_bytes(where / dead_temp, "dead");
    test::write_bytes(where / live_temp, "live");
  }
  const test::CliResult r = test::run_cli(pack_args(ckpt, out, {"--resume"}));
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_FALSE(fs::exists(out / dead_temp));
  EXPECT_TRUE(fs::exists(out / live_temp)) << "a live process's temporary file was removed";
  fs::remove(out / live_temp);
  std::string why;
  EXPECT_TRUE(test::same_folder(out, baseline, &why)) << why;
}

TEST(IntegrityLock, ALockFileThatIsNotAFileIsRefusedNamed) {
  const fs::path dir = test::temp_dir();
  const fs::path out = dir / "out";
  fs::create_directories(out);
  fs::create_symlink(dir / "elsewhere", out / ".duquant-lock");
  const test::CliResult r = test::run_cli(pack_args(test::tiny_checkpoint(), out));
  EXPECT_EQ(r.exit_code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, ".duquant-lock")) << r.err;
  EXPECT_FALSE(fs::exists(dir / "elsewhere"));
}

// ---------------------------------------------------------------------------------------------
// Resume bound to the bytes.

// Flips the sign of the first 16 values of `tensor` in place (and moves the file's mtime, as any
// write would, whatever the clock's granularity).
void flip_signs(const fs::path& file, const std::string& tensor) {
  const std::string bytes = test::read_text(file);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const nlohmann::json h = nlohmann::json::parse(bytes.substr(8, n));
  const nlohmann::json& t = h.at(tensor);
  const std::uint64_t elem = t.at("dtype") == "F32" ? 4 : 2;
  const std::uint64_t start = 8 + n + t.at("data_offsets")[0].get<std::uint64_t>();
  const int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  for (std::uint64_t k = 0; k < 16; ++k) {
    const auto at = static_cast<off_t>(start + k * elem + elem - 1);  // little endian: the sign is in the last byte
    unsigned char b = 0;
    ASSERT_EQ(::pread(fd, &b, 1, at), 1);
    b ^= 0x80;
    ASSERT_EQ(::pwrite(fd, &b, 1, at), 1);
  }
  ::close(fd);
  static std::int64_t stamp = 1000000000;
  const struct timespec times[2] = {{++stamp, 0}, {stamp, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, 0), 0);
}

// The selected layers in pack order, from a pack's manifest.
std::vector<std::string> layer_names(const fs::path& pack) {
  const nlohmann::json m = nlohmann::json::parse(test::read_text(pack / "manifest.json"));
  std::vector<std::string> names;
  for (const auto& l : m.at("layers")) names.push_back(l.at("name").get<std::string>());
  return names;
}

struct ResumeCase {
  std::string name;
  std::string seam;              // how the first run ends: KILL_AT (exit 137) or STOP_AT (continued: exit 4)
  std::vector<int> changed;      // indices of the layers whose weights change meanwhile
  std::vector<std::string> env;  // more environment (the pipelined path)
};

TEST(IntegrityResume, TheCheckpointChangedBeforeTheResumeGivesAFreshPackOfItAsItIsThen) {
  const std::vector<ResumeCase> cases{
      {"killed after layer 2, layer 1 (packed) changed", "DUQUANT_TEST_KILL_AT=layer:2", {0}, {}},
      {"killed after layer 2, layer 5 (not packed) changed", "DUQUANT_TEST_KILL_AT=layer:2", {4}, {}},
      {"killed after layer 3, layers 1, 3 and 6 changed", "DUQUANT_TEST_KILL_AT=layer:3", {0, 2, 5}, {}},
      // Changed while layer 3's bytes are in memory (read, not yet computed): the run goes on and
      // stops before publishing (exit 4); its record of layer 3 names the bytes it packed.
      {"changed right after layer 3 was read", "DUQUANT_TEST_STOP_AT=read:3", {2, 3}, {}},
      {"changed after layer 3 was read ahead (two engines)",
       "DUQUANT_TEST_STOP_AT=read:3",
       {2, 3, 4},
       {"DUQUANT_TEST_PIPELINE=2"}},
  };
  const fs::path dir = test::temp_dir();
  const fs::path original = dir / "original.safetensors";
  fs::copy_file(test::tiny_checkpoint(), original);
  ASSERT_EQ(test::run_cli(pack_args(original, dir / "names")).exit_code, 0);
  const std::vector<std::string> names = layer_names(dir / "names");
  ASSERT_GE(names.size(), 7u);
  int n = 0;
  for (const ResumeCase& c : cases) {
    SCOPED_TRACE(c.name);
    const fs::path w = dir / fmt::format("case{}", n++);
    fs::create_directories(w);
    const fs::path ckpt = w / "model.safetensors";
    fs::copy_file(original, ckpt);
    std::vector<std::string> env{c.seam};
    env.insert(env.end(), c.env.begin(), c.env.end());
    if (c.seam.find("KILL_AT") != std::string::npos) {
      EXPECT_EQ(test::run_cli(pack_args(ckpt, w / "out"), env).exit_code, test::kKilledBySigkill);
      for (int i : c.changed) flip_signs(ckpt, names[static_cast<std::size_t>(i)] + ".weight");
    } else {
      test::Child run(pack_args(ckpt, w / "out"), env, w / "stopped");
      ASSERT_TRUE(run.started());
      ASSERT_TRUE(run.wait_stopped()) << run.err();
      for (int i : c.changed) flip_signs(ckpt, names[static_cast<std::size_t>(i)] + ".weight");
      run.resume();
      EXPECT_EQ(run.wait(), 4) << run.err();  // the file changed under the run: nothing published
      EXPECT_FALSE(fs::exists(w / "out" / "manifest.json"));
    }
    const test::CliResult resumed = test::run_cli(pack_args(ckpt, w / "out", {"--resume"}), c.env);
    ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
    ASSERT_EQ(test::run_cli(pack_args(ckpt, w / "fresh"), c.env).exit_code, 0);
    std::string why;
    EXPECT_TRUE(test::same_folder(w / "out", w / "fresh", &why)) << why;
    const test::CliResult v = test::run_cli({"verify", (w / "out").string(), "-c", ckpt.string(), "--strict"});
    EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  }
}

}  // namespace
}  // namespace duquant

// Hostile file-system shapes (docs/reliability.md, "Hostile files"): for every input and output
// path of every command, a FIFO, a symbolic link loop, a dangling link, a folder where a file is
// expected, a link to /dev/zero or /dev/null, and an over-long path component. Each run must end
// with a documented exit code (never a signal, never 70 "internal error") within 20 s (a hang
// check: a FIFO opened for reading waits forever for a writer), name the path, and change nothing
// outside its output. The fuzz targets cannot produce these: they are shapes, not bytes.
//
// Then the hand-made cases of each class: throwing file-system calls, files that are not regular
// files (and pack-internal names that leave the pack), and output hygiene (--force, the work folder,
// --fold-smoothing).
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "robustness/robustness_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using test::Child;
using test::contains;

using test::kHangLimit;
using test::kLayers;
using test::kNorm;
using test::Outcome;
using test::outside;
using test::run_dq;
using test::tree;
using test::write_bytes;
using test::write_dump;
using test::write_tensors;

bool is_char_device(const char* p) {
  struct stat st {};
  return ::lstat(p, &st) == 0 && S_ISCHR(st.st_mode);
}

// The shared inputs, made once: a checkpoint file, a sharded folder, a dump, a configuration, a
// finished pack and a runtime pack (its npz files, no manifest).
class HostileFiles : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    base_ = fs::temp_directory_path() / "duquant-tests" / fmt::format("HostileFiles-base-{}", ::getpid());
    fs::remove_all(base_);
    fs::create_directories(base_ / "sharded");
    write_tensors(base_ / "ck.safetensors", kLayers, true);
    write_tensors(base_ / "sharded" / "model-00001-of-00002.safetensors", {kLayers[0]}, true);
    write_tensors(base_ / "sharded" / "model-00002-of-00002.safetensors", {kLayers[1], kLayers[2]}, false);
    nlohmann::json index;
    index["metadata"] = {{"total_size", 0}};
    index["weight_map"][std::string(kNorm) + ".weight"] = "model-00001-of-00002.safetensors";
    index["weight_map"][kLayers[0] + ".weight"] = "model-00001-of-00002.safetensors";
    index["weight_map"][kLayers[1] + ".weight"] = "model-00002-of-00002.safetensors";
    index["weight_map"][kLayers[2] + ".weight"] = "model-00002-of-00002.safetensors";
    write_bytes(base_ / "sharded" / "model.safetensors.index.json", index.dump());
    write_dump(base_ / "dump.safetensors");
    write_bytes(base_ / "cfg.json", R"({"config": {"block": 16}})");
    const Outcome p =
        run_dq({"pack", (base_ / "ck.safetensors").string(), "-o", (base_ / "pack").string(), "--threads", "2"},
               base_ / "pack-log");
    ASSERT_EQ(p.code, 0) << p.out << p.err;
    fs::create_directories(base_ / "rtpack");
    for (const std::string& l : kLayers) fs::copy_file(base_ / "pack" / (l + ".npz"), base_ / "rtpack" / (l + ".npz"));
  }
  static void TearDownTestSuite() { fs::remove_all(base_); }

  // A fresh copy of the shared inputs for one run.
  fs::path sandbox(const std::string& name) {
    const fs::path w = test::temp_dir() / name;
    fs::create_directories(w);
    fs::copy(base_, w, fs::copy_options::recursive);
    for (const char* log : {"pack-log.out", "pack-log.err"}) fs::remove(w / log);
    return w;
  }

  static fs::path base_;
};
fs::path HostileFiles::base_;

// ---------------------------------------------------------------------------------------------
// The shapes suite.

enum class Shape { fifo, loop, dangling, folder, dev_zero, dev_null, long_name };
const char* shape_name(Shape s) {
  switch (s) {
    case Shape::fifo: return "fifo";
    case Shape::loop: return "symlink-loop";
    case Shape::dangling: return "dangling-symlink";
    case Shape::folder: return "folder";
    case Shape::dev_zero: return "link-to-dev-zero";
    case Shape::dev_null: return "link-to-dev-null";
    case Shape::long_name: return "over-long-component";
  }
  return "?";
}

// Puts `shape` at `p` (removing what was there); returns the path to name on the command line.
fs::path substitute(const fs::path& p, Shape shape) {
  std::error_code ec;
  fs::remove_all(p, ec);
  if (shape != Shape::long_name) fs::create_directories(p.parent_path(), ec);  // e.g. a work folder
  switch (shape) {
    case Shape::fifo: ::mkfifo(p.c_str(), 0644); break;
    case Shape::loop: fs::create_symlink(p.filename(), p, ec); break;  // a link to itself
    case Shape::dangling: fs::create_symlink("no-such-target", p, ec); break;
    case Shape::folder: fs::create_directories(p / "inside", ec); break;
    case Shape::dev_zero: fs::create_symlink("/dev/zero", p, ec); break;
    case Shape::dev_null: fs::create_symlink("/dev/null", p, ec); break;
    case Shape::long_name: return p.parent_path() / std::string(300, 'n') / p.filename();
  }
  return p;
}

// One path of one command: where it lies in the sandbox, the command line naming it, the outputs
// the run may change, and the exit code each shape must give (a shape not listed is not run:
// the path cannot take that shape, or it is the expected one).
struct Slot {
  std::string name;
  std::string rel;  // the substituted path, relative to the sandbox
  std::function<std::vector<std::string>(const fs::path& w, const fs::path& target)> args;
  std::set<std::string> outputs;  // relative; may change
  std::map<Shape, int> expect;
  bool named_in_message = true;  // the message must name the substituted path
};

const std::vector<Shape> kAllShapes{Shape::fifo,     Shape::loop,     Shape::dangling, Shape::folder,
                                    Shape::dev_zero, Shape::dev_null, Shape::long_name};

std::map<Shape, int> every(int code, std::initializer_list<std::pair<const Shape, int>> overrides = {},
                           std::set<Shape> skip = {}) {
  std::map<Shape, int> m;
  for (Shape s : kAllShapes)
    if (!skip.count(s)) m[s] = code;
  for (const auto& [s, c] : overrides) m[s] = c;
  return m;
}

std::vector<Slot> slots() {
  auto s = [](const fs::path& p) { return p.string(); };
  std::vector<Slot> v;
  // list-linears
  v.push_back({"list-linears CKPT (file)",
               "ck.safetensors",
               [=](const fs::path&, const fs::path& t) {
                 return std::vector<std::string>{"list-linears", s(t)};
               },
               {},
               every(4)});
  v.push_back({"list-linears CKPT (index)",
               "sharded/model.safetensors.index.json",
               [=](const fs::path&, const fs::path& t) {
                 return std::vector<std::string>{"list-linears", s(t)};
               },
               {},
               every(4)});
  v.push_back({"list-linears CKPT (folder: its index)",
               "sharded/model.safetensors.index.json",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"list-linears", s(w / "sharded")};
               },
               {},
               every(4, {}, {Shape::long_name})});
  v.push_back({"list-linears CKPT (folder: a shard)",
               "sharded/model-00002-of-00002.safetensors",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"list-linears", s(w / "sharded")};
               },
               {},
               every(4, {}, {Shape::long_name})});
  v.push_back({"list-linears CKPT (folder)",
               "sharded",
               [=](const fs::path&, const fs::path& t) {
                 return std::vector<std::string>{"list-linears", s(t)};
               },
               {},
               every(4, {}, {Shape::folder})});
  v.push_back({"list-linears --config",
               "cfg.json",
               [=](const fs::path& w, const fs::path& t) {
                 return std::vector<std::string>{"list-linears", s(w / "ck.safetensors"), "--config", s(t)};
               },
               {},
               every(4)});
  // pack: inputs
  auto pack_args = [=](const fs::path& w, std::vector<std::string> extra) {
    std::vector<std::string> a{"pack", s(w / "ck.safetensors"), "-o", s(w / "out"), "--threads", "1"};
    a.insert(a.end(), extra.begin(), extra.end());
    return a;
  };
  v.push_back({"pack CKPT",
               "ck.safetensors",
               [=](const fs::path& w, const fs::path& t) {
                 return std::vector<std::string>{"pack", s(t), "-o", s(w / "out"), "--threads", "1"};
               },
               {"out"},
               every(4)});
  v.push_back({"pack CKPT (folder: a shard)",
               "sharded/model-00001-of-00002.safetensors",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"pack", s(w / "sharded"), "-o", s(w / "out"), "--threads", "1"};
               },
               {"out"},
               every(4, {}, {Shape::long_name})});
  v.push_back({"pack --config",
               "cfg.json",
               [=](const fs::path& w, const fs::path& t) {
                 return pack_args(w, {"--config", s(t)});
               },
               {"out"},
               every(4)});
  v.push_back({"pack --calib",
               "dump.safetensors",
               [=](const fs::path& w, const fs::path& t) {
                 return pack_args(w, {"--calib", s(t)});
               },
               {"out"},
               every(4, {{Shape::folder, 4}})});
  // pack: outputs
  v.push_back({"pack -o",
               "out",
               [=](const fs::path& w, const fs::path& t) {
                 return std::vector<std::string>{"pack", s(w / "ck.safetensors"), "-o", s(t), "--threads", "1"};
               },
               {},
               every(2, {{Shape::loop, 4}, {Shape::long_name, 4}}, {Shape::folder})});
  v.push_back({"pack -o with --force: a pack file name (LAYER.npz)",
               "pack/" + kLayers[0] + ".npz",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{
                     "pack", s(w / "ck.safetensors"), "-o", s(w / "pack"), "--force", "--threads", "1"};
               },
               {},
               every(2, {}, {Shape::long_name})});
  v.push_back({"pack -o with --force: manifest.json",
               "pack/manifest.json",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{
                     "pack", s(w / "ck.safetensors"), "-o", s(w / "pack"), "--force", "--threads", "1"};
               },
               {},
               every(2, {}, {Shape::long_name})});
  v.push_back({"pack -o with --resume: .duquant-work",
               "pack/.duquant-work",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{
                     "pack", s(w / "ck.safetensors"), "-o", s(w / "pack"), "--resume", "--threads", "1"};
               },
               {},
               every(2, {}, {Shape::long_name, Shape::folder})});
  v.push_back({"pack --resume: a resume record",
               "pack/.duquant-work/" + kLayers[0] + ".npz.json",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{
                     "pack", s(w / "ck.safetensors"), "-o", s(w / "pack"), "--resume", "--threads", "1"};
               },
               {},
               every(2, {}, {Shape::long_name})});
  v.push_back(
      {"pack --fold-smoothing",
       "folded.safetensors",
       [=](const fs::path& w, const fs::path& t) {
         return pack_args(w, {"--calib", s(w / "dump.safetensors"), "--smooth-alpha", "0.5", "--fold-smoothing", s(t)});
       },
       {"out"},
       every(2, {{Shape::loop, 4}, {Shape::long_name, 4}})});
  // verify
  v.push_back({"verify PACKDIR",
               "pack",
               [=](const fs::path&, const fs::path& t) {
                 return std::vector<std::string>{"verify", s(t)};
               },
               {},
               every(4, {}, {Shape::folder})});
  v.push_back({"verify: manifest.json",
               "pack/manifest.json",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"verify", s(w / "pack")};
               },
               {},
               every(1, {}, {Shape::long_name})});
  v.push_back({"verify: an npz",
               "pack/" + kLayers[1] + ".npz",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"verify", s(w / "pack")};
               },
               {},
               every(1, {}, {Shape::long_name})});
  v.push_back({"verify: quantized.safetensors",
               "pack/quantized.safetensors",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"verify", s(w / "pack")};
               },
               {},
               every(1, {}, {Shape::long_name})});
  v.push_back({"verify: a runtime pack's npz",
               "rtpack/" + kLayers[1] + ".npz",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"verify", s(w / "rtpack")};
               },
               {},
               every(1, {}, {Shape::long_name})});
  v.push_back({"verify --checkpoint",
               "ck.safetensors",
               [=](const fs::path& w, const fs::path& t) {
                 return std::vector<std::string>{"verify", s(w / "pack"), "--checkpoint", s(t)};
               },
               {},
               every(4)});
  v.push_back({"verify --reference",
               "rtpack",
               [=](const fs::path& w, const fs::path& t) {
                 return std::vector<std::string>{"verify", s(w / "pack"), "--reference", s(t)};
               },
               {},
               every(4, {}, {Shape::folder})});
  // inspect
  v.push_back({"inspect PACKDIR|CKPT",
               "ck.safetensors",
               [=](const fs::path&, const fs::path& t) {
                 return std::vector<std::string>{"inspect", s(t)};
               },
               {},
               every(4)});
  v.push_back({"inspect: manifest.json",
               "pack/manifest.json",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"inspect", s(w / "pack")};
               },
               {},
               every(4, {}, {Shape::long_name})});
  v.push_back({"inspect: a runtime pack's npz",
               "rtpack/" + kLayers[0] + ".npz",
               [=](const fs::path& w, const fs::path&) {
                 return std::vector<std::string>{"inspect", s(w / "rtpack")};
               },
               {},
               every(4, {}, {Shape::long_name})});
  v.push_back({"inspect --checkpoint",
               "ck.safetensors",
               [=](const fs::path& w, const fs::path& t) {
                 return std::vector<std::string>{"inspect", s(w / "pack"), "--checkpoint", s(t)};
               },
               {},
               every(4)});
  v.push_back({"inspect --html",
               "report.html",
               [=](const fs::path& w, const fs::path& t) {
                 return std::vector<std::string>{"inspect", s(w / "ck.safetensors"), "--html", s(t), "--force"};
               },
               {},
               every(2, {{Shape::loop, 4}, {Shape::long_name, 4}})});  // not a regular file: usage, untouched
  // synth
  v.push_back({"synth -o FILE --force",
               "synth.safetensors",
               [=](const fs::path&, const fs::path& t) {
                 return std::vector<std::string>{"synth", "-o", s(t), "--factor", "16", "--layers", "1", "--force"};
               },
               {},
               every(2, {{Shape::loop, 4}, {Shape::long_name, 4}})});
  v.push_back({"synth -o FOLDER (--shards 2)",
               "synth-folder",
               [=](const fs::path&, const fs::path& t) {
                 return std::vector<std::string>{"synth",    "-o", s(t),       "--factor", "16",
                                                 "--layers", "1",  "--shards", "2"};
               },
               {},
               every(2, {{Shape::loop, 4}, {Shape::dangling, 4}, {Shape::long_name, 4}}, {Shape::folder})});
  return v;
}

TEST_F(HostileFiles, EveryPathOfEveryCommandInEveryShape) {
  int cases = 0;
  std::set<std::string> paths;
  for (const Slot& slot : slots()) {
    for (const auto& [shape, want] : slot.expect) {
      const std::string label = fmt::format("{} as {}", slot.name, shape_name(shape));
      SCOPED_TRACE(label);
      const fs::path w = sandbox(fmt::format("case{}", cases));
      const fs::path target = substitute(w / slot.rel, shape);
      std::set<std::string> outputs = slot.outputs;
      outputs.insert(slot.rel);  // the substituted path itself may be replaced (an output)
      const auto before = outside(tree(w), outputs);
      const Outcome r = run_dq(slot.args(w, target), w.parent_path() / fmt::format("case{}-log", cases));
      ++cases;
      paths.insert(slot.name);
      ASSERT_FALSE(r.hung) << "still running after 20 s: a FIFO or a device read without end?";
      EXPECT_NE(r.code, 70) << r.err;
      EXPECT_LT(r.code, 128) << "ended by a signal";
      EXPECT_EQ(r.code, want) << r.out << r.err;
      if (slot.named_in_message) {
        const std::string text = r.err + r.out;
        const std::string name =
            shape == Shape::long_name ? std::string(40, 'n') : fs::path(slot.rel).filename().string();
        EXPECT_TRUE(contains(text, name)) << "the message does not name " << name << ":\n" << text;
      }
      EXPECT_FALSE(contains(r.err, "internal error")) << r.err;
      EXPECT_TRUE(outside(tree(w), outputs) == before) << "something outside the output changed";
      EXPECT_TRUE(is_char_device("/dev/null") && is_char_device("/dev/zero"));
      fs::remove_all(w);
    }
  }
  // Printed for docs/reliability.md.
  std::printf("hostile shapes: %zu paths, %d cases\n", paths.size(), cases);
  EXPECT_GE(cases, 150);
}

// ---------------------------------------------------------------------------------------------
// Class 1: file-system calls that used to throw (a link loop, an over-long name, a folder as
// --config) end as io errors (exit 4) naming the path, never "internal error: filesystem error".

TEST_F(HostileFiles, SymlinkLoopAsOutputFolderIsAnIoErrorNamingIt) {
  const fs::path w = sandbox("w");
  fs::create_symlink("b", w / "a");
  fs::create_symlink("a", w / "b");
  const Outcome r = run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "a" / "pack").string()}, w / "log");
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, (w / "a").string())) << r.err;
  EXPECT_TRUE(contains(r.err, "symbolic link")) << r.err;
  EXPECT_FALSE(contains(r.err, "internal error")) << r.err;
}

TEST_F(HostileFiles, OverlongComponentIsAnIoErrorNamingIt) {
  const fs::path w = sandbox("w");
  const std::string longname(300, 'q');
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"list-linears", (w / longname).string()},
        std::vector<std::string>{"pack", (w / "ck.safetensors").string(), "-o", (w / longname / "out").string()},
        std::vector<std::string>{"verify", (w / longname).string()},
        std::vector<std::string>{"inspect", (w / "ck.safetensors").string(), "--html", (w / longname).string()}}) {
    const Outcome r = run_dq(args, w / "log");
    EXPECT_EQ(r.code, 4) << args[0] << ": " << r.err;
    EXPECT_TRUE(contains(r.err, longname)) << r.err;
    EXPECT_FALSE(contains(r.err, "internal error")) << r.err;
  }
}

TEST_F(HostileFiles, ConfigNamingAFolderIsAnIoError) {
  const fs::path w = sandbox("w");
  fs::create_directories(w / "cfgdir");
  const Outcome r =
      run_dq({"list-linears", (w / "ck.safetensors").string(), "--config", (w / "cfgdir").string()}, w / "log");
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "--config " + (w / "cfgdir").string())) << r.err;
  EXPECT_TRUE(contains(r.err, "a folder")) << r.err;
}

TEST_F(HostileFiles, IndexNamingAShardThatIsALinkLoopIsAnIoError) {
  const fs::path w = sandbox("w");
  const fs::path shard = w / "sharded" / "model-00002-of-00002.safetensors";
  fs::remove(shard);
  fs::create_symlink(shard.filename(), shard);
  const Outcome r = run_dq({"pack", (w / "sharded").string(), "-o", (w / "out").string()}, w / "log");
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, shard.string())) << r.err;
  EXPECT_FALSE(fs::exists(w / "out"));
}

// ---------------------------------------------------------------------------------------------
// Class 2: files that are not regular files are refused at once (exit 4, naming what they are);
// names a manifest gives are confined to the pack folder (verify FAILs the layer, exit 1).

TEST_F(HostileFiles, FifoCheckpointIsRefusedAtOnceNamingIt) {
  const fs::path w = sandbox("w");
  ::mkfifo((w / "model.safetensors").c_str(), 0644);
  const auto t0 = std::chrono::steady_clock::now();
  const Outcome r = run_dq({"list-linears", (w / "model.safetensors").string()}, w / "log");
  EXPECT_FALSE(r.hung);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, kHangLimit);
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, (w / "model.safetensors").string() + ": not a regular file (a FIFO)")) << r.err;
}

TEST_F(HostileFiles, DevZeroAsCalibrationDumpOrConfigIsRefused) {
  const fs::path w = sandbox("w");
  Outcome r =
      run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "out").string(), "--calib", "/dev/zero"}, w / "log");
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "/dev/zero")) << r.err;
  EXPECT_FALSE(fs::exists(w / "out"));
  r = run_dq({"list-linears", (w / "ck.safetensors").string(), "--config", "/dev/zero"}, w / "log");
  EXPECT_EQ(r.code, 4) << r.err;
  EXPECT_TRUE(contains(r.err, "--config /dev/zero: not a regular file (a character device)")) << r.err;
}

// Rewrites the manifest entry of `layer` to name `npz` as its file.
void set_manifest_npz(const fs::path& pack, const std::string& layer, const std::string& npz) {
  nlohmann::json m = nlohmann::json::parse(test::read_text(pack / "manifest.json"));
  for (auto& l : m.at("layers"))
    if (l.at("name") == layer) l["npz"]["name"] = npz;
  write_bytes(pack / "manifest.json", m.dump(2));
}

TEST_F(HostileFiles, VerifyNeverOpensAnNpzNameThatLeavesThePack) {
  const fs::path w = sandbox("w");
  write_bytes(w / "outside.npz", test::read_text(w / "pack" / (kLayers[0] + ".npz")));
  for (const std::string& name :
       {std::string("/dev/zero"), std::string("../outside.npz"), (w / "outside.npz").string()}) {
    SCOPED_TRACE(name);
    fs::remove_all(w / "p");
    fs::copy(w / "pack", w / "p");
    set_manifest_npz(w / "p", kLayers[0], name);
    const Outcome r = run_dq({"verify", (w / "p").string()}, w / "log");
    EXPECT_EQ(r.code, 1) << r.out << r.err;
    EXPECT_TRUE(contains(r.out, name)) << r.out;
    EXPECT_FALSE(r.hung);
    const Outcome i =
        run_dq({"inspect", (w / "p").string(), "--checkpoint", (w / "ck.safetensors").string()}, w / "log");
    EXPECT_NE(i.code, 70) << i.err;
    EXPECT_FALSE(i.hung);
  }
}

TEST_F(HostileFiles, VerifyFailsAnNpzLinkedOutsideThePack) {
  const fs::path w = sandbox("w");
  const fs::path npz = w / "pack" / (kLayers[2] + ".npz");
  fs::rename(npz, w / "elsewhere.npz");
  fs::create_symlink(w / "elsewhere.npz", npz);
  const Outcome r = run_dq({"verify", (w / "pack").string()}, w / "log");
  EXPECT_EQ(r.code, 1) << r.out << r.err;
  EXPECT_TRUE(contains(r.out, "outside the pack folder")) << r.out;
}

TEST_F(HostileFiles, FifoResumeRecordIsRefusedBeforeAnyWork) {
  const fs::path w = sandbox("w");
  const Outcome first =
      run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "p").string(), "--threads", "1"}, w / "log");
  ASSERT_EQ(first.code, 0) << first.err;
  fs::remove(w / "p" / "manifest.json");
  fs::create_directories(w / "p" / ".duquant-work");
  const fs::path record = w / "p" / ".duquant-work" / (kLayers[0] + ".npz.json");
  ::mkfifo(record.c_str(), 0644);
  const Outcome r = run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "p").string(), "--resume"}, w / "log");
  EXPECT_FALSE(r.hung);
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, record.string() + " is a FIFO")) << r.err;
  fs::remove(record);  // and then the pack resumes to the end
  const Outcome again =
      run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "p").string(), "--resume"}, w / "log");
  EXPECT_EQ(again.code, 0) << again.err;
  EXPECT_FALSE(fs::exists(w / "p" / ".duquant-work"));
}

// ---------------------------------------------------------------------------------------------
// Class 3: output hygiene. --force removes only regular files pack writes; a work folder or pack
// file name that is a link or of another type is refused (exit 2) before any work; a bad
// --fold-smoothing output leaves nothing behind.

TEST_F(HostileFiles, ForceNeverRemovesAUsersFolderNamedLikeAnNpz) {
  const fs::path w = sandbox("w");
  fs::create_directories(w / "out" / "keep.npz");
  write_bytes(w / "out" / "keep.npz" / "precious.txt", "mine");
  const Outcome r = run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "out").string(), "--force"}, w / "log");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, (w / "out" / "keep.npz").string() + " is a folder")) << r.err;
  EXPECT_EQ(test::read_text(w / "out" / "keep.npz" / "precious.txt"), "mine");
  EXPECT_FALSE(fs::exists(w / "out" / ".duquant-work"));
}

TEST_F(HostileFiles, WorkFolderThatIsALinkIsRefusedAndNothingIsWrittenThroughIt) {
  const fs::path w = sandbox("w");
  fs::create_directories(w / "elsewhere");
  write_bytes(w / "elsewhere" / (kLayers[0] + ".npz.json"), "user data");
  fs::copy(w / "pack", w / "out", fs::copy_options::recursive);
  fs::create_directory_symlink(w / "elsewhere", w / "out" / ".duquant-work");
  for (const char* mode : {"--force", "--resume"}) {
    const Outcome r = run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "out").string(), mode}, w / "log");
    EXPECT_EQ(r.code, 2) << mode << r.err;
    EXPECT_TRUE(contains(r.err, (w / "out" / ".duquant-work").string() + " is a symbolic link")) << r.err;
  }
  EXPECT_EQ(test::listing(w / "elsewhere"), std::vector<std::string>{kLayers[0] + ".npz.json"});
  EXPECT_EQ(test::read_text(w / "elsewhere" / (kLayers[0] + ".npz.json")), "user data");
}

TEST_F(HostileFiles, ForceNeverFollowsALinkedPackFile) {
  const fs::path w = sandbox("w");
  write_bytes(w / "target.txt", "not a pack file");
  fs::copy(w / "pack", w / "out", fs::copy_options::recursive);
  fs::remove(w / "out" / "manifest.json");
  fs::create_symlink(w / "target.txt", w / "out" / "manifest.json");
  const Outcome r = run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "out").string(), "--force"}, w / "log");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, (w / "out" / "manifest.json").string() + " is a symbolic link")) << r.err;
  EXPECT_EQ(test::read_text(w / "target.txt"), "not a pack file");
  EXPECT_TRUE(fs::is_symlink(w / "out" / "manifest.json"));
}

TEST_F(HostileFiles, FoldSmoothingOntoTheInputLeavesNoWorkFolder) {
  const fs::path w = sandbox("w");
  const auto before = tree(w);
  const Outcome r = run_dq(
      {"pack", (w / "ck.safetensors").string(), "-o", (w / "out").string(), "--calib",
       (w / "dump.safetensors").string(), "--smooth-alpha", "0.5", "--fold-smoothing", (w / "ck.safetensors").string()},
      w / "log");
  EXPECT_EQ(r.code, 2) << r.err;
  EXPECT_TRUE(contains(r.err, "--fold-smoothing " + (w / "ck.safetensors").string())) << r.err;
  EXPECT_FALSE(fs::exists(w / "out"));
  auto after = tree(w);
  after.erase("log.out");
  after.erase("log.err");
  EXPECT_TRUE(after == before);
}

TEST_F(HostileFiles, ForceReplacesOnlyPackFilesAndAFinishedPackHasNoWorkFolder) {
  const fs::path w = sandbox("w");
  fs::copy(w / "pack", w / "out", fs::copy_options::recursive);
  write_bytes(w / "out" / "notes.txt", "keep me");
  write_bytes(w / "out" / "stale.npz", "an npz of an earlier run");
  fs::create_directories(w / "out" / ".duquant-work");
  write_bytes(w / "out" / ".duquant-work" / "old.npz.json", "{}");
  const Outcome r = run_dq({"pack", (w / "ck.safetensors").string(), "-o", (w / "out").string(), "--force"}, w / "log");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(test::read_text(w / "out" / "notes.txt"), "keep me");
  EXPECT_FALSE(fs::exists(w / "out" / "stale.npz"));
  EXPECT_FALSE(fs::exists(w / "out" / ".duquant-work"));
  const Outcome v = run_dq({"verify", (w / "out").string()}, w / "log");
  EXPECT_EQ(v.code, 0) << v.out;
}

}  // namespace
}  // namespace duquant

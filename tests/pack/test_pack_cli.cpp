// `duquant pack` run as a user would: byte-identical output whatever the thread count; an
// interrupted run (SIGKILL through the DUQUANT_TEST_KILL_AT seam) leaves no half-written file
// and --resume finishes with the bytes of an uninterrupted run; sharding; --force and the refusals
// (exit codes of docs/cli.md); NaN weights; all-zero layers; and the manifest's content.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "formats/digest.hpp"
#include "formats/npz.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_writer.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using test::CliResult;
using test::run_cli;

constexpr int kKilled = 128 + 9;  // run_cli's exit code of a process ended by SIGKILL
constexpr const char* kQ0 = "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj";

// Every regular file under `dir` (hidden ones too), relative path -> bytes.
std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = test::read_text(e.path());
  return files;
}

std::vector<std::string> names_of(const std::map<std::string, std::string>& files) {
  std::vector<std::string> out;
  for (const auto& [name, bytes] : files) out.push_back(name);
  return out;
}

// Compares two folders file by file (names, then bytes), reporting the first differing file.
void expect_same_folder(const fs::path& a, const fs::path& b) {
  const auto fa = snapshot(a), fb = snapshot(b);
  ASSERT_EQ(names_of(fa), names_of(fb)) << a << " vs " << b;
  for (const auto& [name, bytes] : fa)
    EXPECT_TRUE(bytes == fb.at(name)) << name << " differs between " << a << " and " << b;
}

CliResult pack(const fs::path& ckpt, const fs::path& out, std::vector<std::string> extra = {},
               const std::vector<std::string>& env = {}) {
  std::vector<std::string> args{"pack", ckpt.string(), "-o", out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return run_cli(args, env);
}

std::size_t count_occurrences(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (auto p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

std::vector<fs::path> files_with_suffix(const fs::path& dir, const std::string& suffix) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.size() >= suffix.size() && n.compare(n.size() - suffix.size(), suffix.size(), suffix) == 0)
      out.push_back(e.path());
  }
  return out;
}

nlohmann::json read_json(const fs::path& p) { return nlohmann::json::parse(test::read_text(p)); }

// ---------------------------------------------------------------------------------------------
// 1. Determinism

void expect_deterministic(const std::vector<std::string>& config, const std::string& label) {
  const fs::path dir = test::temp_dir() / label;
  const fs::path first = dir / "omp1";
  struct Run {
    std::string name;
    std::vector<std::string> extra;
    std::vector<std::string> env;
  };
  std::vector<std::string> t1 = config, t2 = config;
  t1.insert(t1.end(), {"--threads", "1"});
  t2.insert(t2.end(), {"--threads", "2"});
  const std::vector<Run> runs{{"omp1", config, {"OMP_NUM_THREADS=1"}},
                              {"omp2", config, {"OMP_NUM_THREADS=2"}},
                              {"threads1", t1, {}},
                              {"threads2", t2, {}}};
  for (const Run& r : runs) {
    const CliResult res = pack(test::tiny_checkpoint(), dir / r.name, r.extra, r.env);
    ASSERT_EQ(res.exit_code, 0) << r.name << "\n" << res.out << res.err;
    if (r.name == "omp2") {
      EXPECT_NE(res.out.find("(2 threads)"), std::string::npos) << res.out;
    }
    if (r.name == "threads1") {
      EXPECT_NE(res.out.find("(1 threads)"), std::string::npos) << res.out;
    }
  }
  const auto files = snapshot(first);
  EXPECT_EQ(files.size(), 14u + 3u) << "14 npz, quantized.safetensors, manifest.json, the empty .duquant-lock";
  EXPECT_EQ(files.count(".duquant-lock"), 1u);
  EXPECT_EQ(files.at(".duquant-lock").size(), 0u) << "a writer that ended leaves the lock file empty";
  EXPECT_EQ(files.count("manifest.json"), 1u);
  EXPECT_EQ(files.count("quantized.safetensors"), 1u);
  for (const Run& r : runs) expect_same_folder(first, dir / r.name);
}

TEST(PackCliDeterminism, OpenpiDitSameBytesForOneAndTwoThreads) {
  expect_deterministic({"--preset", "openpi-dit"}, "dit");
}

TEST(PackCliDeterminism, Block32Out16W8SameBytesForOneAndTwoThreads) {
  expect_deterministic({"--preset", "openpi-dit", "--block", "32", "--block-out", "16", "--wbits-default", "8"},
                       "b32w8");
}

// ---------------------------------------------------------------------------------------------
// 2. Interruption and --resume

// No file under a final name may be half-written: every npz opens (CRC-checked), every published
// quantized file opens as safetensors, and there is no manifest.
void expect_interrupted_state(const fs::path& out) {
  EXPECT_FALSE(fs::exists(out / "manifest.json"));
  for (const fs::path& p : files_with_suffix(out, ".npz")) EXPECT_NO_THROW(formats::NpzFile::open(p)) << p;
  for (const fs::path& p : files_with_suffix(out, ".safetensors")) EXPECT_NO_THROW(formats::Checkpoint::open(p)) << p;
}

// Kills a pack at `kill_at`, checks what is left, refuses to continue without --resume, resumes,
// and compares with `baseline`. Returns the resumed run's output.
std::string interrupt_and_resume(const fs::path& ckpt, const fs::path& out, const fs::path& baseline,
                                 const std::vector<std::string>& config, const std::string& kill_at,
                                 std::size_t expect_npz_after_kill) {
  const CliResult killed = pack(ckpt, out, config, {"DUQUANT_TEST_KILL_AT=" + kill_at});
  EXPECT_EQ(killed.exit_code, kKilled) << kill_at << "\n" << killed.out << killed.err;
  expect_interrupted_state(out);
  EXPECT_EQ(files_with_suffix(out, ".npz").size(), expect_npz_after_kill) << kill_at;

  const CliResult refused = pack(ckpt, out, config);
  EXPECT_EQ(refused.exit_code, 2) << refused.out << refused.err;
  EXPECT_NE(refused.err.find("--resume"), std::string::npos) << refused.err;
  EXPECT_FALSE(fs::exists(out / "manifest.json"));

  std::vector<std::string> resume = config;
  resume.push_back("--resume");
  const CliResult resumed = pack(ckpt, out, resume);
  EXPECT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  EXPECT_FALSE(fs::exists(out / ".duquant-work"));
  expect_same_folder(out, baseline);
  return resumed.out;
}

TEST(PackCliResume, KilledAfterLayer3ResumesToTheSameBytes) {
  const fs::path dir = test::temp_dir();
  const std::vector<std::string> config{"--preset", "openpi-dit"};
  ASSERT_EQ(pack(test::tiny_checkpoint(), dir / "baseline", config).exit_code, 0);
  const std::string out =
      interrupt_and_resume(test::tiny_checkpoint(), dir / "out", dir / "baseline", config, "layer:3", 3);
  EXPECT_NE(out.find("packed 14 layers (3 reused)"), std::string::npos) << out;
  EXPECT_EQ(count_occurrences(out, "(reused)"), 3u) << out;
}

// The manifest and every layer's record name the algorithm; --resume refuses records of another one
// (a pack begun on a GPU, say) instead of mixing them, and a manifest of a newer algorithm version is
// refused by name.
TEST(PackCliResume, RecordsOfAnotherAlgorithmAreRefused) {
  const fs::path dir = test::temp_dir();
  const std::vector<std::string> config{"--preset", "openpi-dit"};
  ASSERT_EQ(pack(test::tiny_checkpoint(), dir / "done", config).exit_code, 0);
  const auto manifest = nlohmann::json::parse(test::read_text(dir / "done" / "manifest.json"));
  EXPECT_EQ(manifest.at("algorithm"), (nlohmann::json{{"name", "duquant-cpu"}, {"version", 1}}));

  const fs::path out = dir / "out";
  EXPECT_EQ(pack(test::tiny_checkpoint(), out, config, {"DUQUANT_TEST_KILL_AT=layer:3"}).exit_code, kKilled);
  std::size_t records = 0;
  for (const auto& e : fs::directory_iterator(out / ".duquant-work")) {
    if (e.path().extension() != ".json") continue;
    nlohmann::json r = nlohmann::json::parse(test::read_text(e.path()));
    EXPECT_EQ(r.at("algorithm"), "duquant-cpu/1") << e.path();
    if (records++ == 0) {
      r["algorithm"] = "duquant-cuda/1";
      std::ofstream(e.path()) << r.dump(1);
    }
  }
  EXPECT_EQ(records, 3u);
  std::vector<std::string> resume = config;
  resume.push_back("--resume");
  const CliResult refused = pack(test::tiny_checkpoint(), out, resume);
  EXPECT_EQ(refused.exit_code, 2) << refused.out << refused.err;
  EXPECT_NE(refused.err.find("packed by algorithm duquant-cuda/1, this run packs with duquant-cpu/1"),
            std::string::npos)
      << refused.err;
  EXPECT_FALSE(fs::exists(out / "manifest.json"));

  nlohmann::json newer = manifest;
  newer["algorithm"]["version"] = 2;
  std::ofstream(dir / "done" / "manifest.json") << newer.dump(1);
  const CliResult inspect = test::run_cli({"inspect", (dir / "done").string()});
  EXPECT_EQ(inspect.exit_code, 3) << inspect.err;
  EXPECT_NE(inspect.err.find("algorithm duquant-cpu version 2: this duquant knows"), std::string::npos) << inspect.err;
}

// A malformed interruption seam is a usage error (exit 2) naming it, before anything is written;
// a well-formed one that names a point the run never reaches changes nothing.
TEST(PackCliResume, MalformedInterruptionSeamsAreRefusedBeforeAnyWork) {
  const fs::path dir = test::temp_dir();
  for (const std::string seam : {"DUQUANT_TEST_KILL_AT", "DUQUANT_TEST_STOP_AT"}) {
    for (const std::string bad : {"layer", "layer:", "layer:0", "layer:-1", "layer:3x", "layer:1234567890", "Layer:3",
                                  "assembly ", "manifest"}) {
      const fs::path out = dir / "out";
      const CliResult r = pack(test::tiny_checkpoint(), out, {"--preset", "openpi-dit"}, {seam + "=" + bad});
      EXPECT_EQ(r.exit_code, 2) << seam << "=" << bad << "\n" << r.out << r.err;
      EXPECT_NE(r.err.find(seam + "=" + bad + ":"), std::string::npos) << r.err;
      EXPECT_FALSE(fs::exists(out)) << seam << "=" << bad;
    }
  }
  const CliResult unreached =
      pack(test::tiny_checkpoint(), dir / "far", {"--preset", "openpi-dit"}, {"DUQUANT_TEST_KILL_AT=layer:999"});
  EXPECT_EQ(unreached.exit_code, 0) << unreached.out << unreached.err;
  EXPECT_TRUE(fs::exists(dir / "far" / "manifest.json"));
}

TEST(PackCliResume, KilledDuringAssemblyResumesToTheSameBytes) {
  const fs::path dir = test::temp_dir();
  const std::vector<std::string> config{"--preset", "openpi-dit"};
  ASSERT_EQ(pack(test::tiny_checkpoint(), dir / "baseline", config).exit_code, 0);
  const std::string out =
      interrupt_and_resume(test::tiny_checkpoint(), dir / "out", dir / "baseline", config, "assembly", 14);
  EXPECT_NE(out.find("packed 14 layers (14 reused)"), std::string::npos) << out;
}

TEST(PackCliResume, ResumeOfACompletePackRewritesTheSameBytes) {
  const fs::path dir = test::temp_dir();
  ASSERT_EQ(pack(test::tiny_checkpoint(), dir / "baseline", {"--preset", "openpi-dit"}).exit_code, 0);
  ASSERT_EQ(pack(test::tiny_checkpoint(), dir / "out", {"--preset", "openpi-dit"}).exit_code, 0);
  // A finished pack keeps no work folder, so --resume packs every layer again -- same bytes.
  const CliResult r = pack(test::tiny_checkpoint(), dir / "out", {"--preset", "openpi-dit", "--resume"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  expect_same_folder(dir / "out", dir / "baseline");
}

// Checks a sharded quantized output: the index lists exactly the tensors of the shards, each under
// the shard that holds it, and names only existing shards.
void expect_consistent_shards(const fs::path& out, int* shard_count) {
  const auto shards = files_with_suffix(out, ".safetensors");
  *shard_count = static_cast<int>(shards.size());
  ASSERT_FALSE(fs::exists(out / "quantized.safetensors"));
  const nlohmann::json index = read_json(out / "quantized.safetensors.index.json");
  const auto& map = index.at("weight_map");
  std::map<std::string, std::string> in_shards;
  std::uint64_t total_data = 0;
  for (const fs::path& p : shards) {
    const std::string name = p.filename().string();
    EXPECT_EQ(name.rfind("quantized-", 0), 0u) << name;
    EXPECT_NE(name.find("-of-" + fmt::format("{:05d}", shards.size()) + ".safetensors"), std::string::npos) << name;
    const auto ck = formats::Checkpoint::open(p);
    total_data += ck.files()[0].size - 8 - ck.files()[0].header_bytes;  // header_bytes: the JSON only
    for (const auto& t : ck.tensors()) in_shards[t.name] = name;
  }
  EXPECT_EQ(index.at("metadata").at("total_size").get<std::uint64_t>(), total_data);
  std::map<std::string, std::string> listed;
  for (auto it = map.begin(); it != map.end(); ++it) {
    listed[it.key()] = it.value().get<std::string>();
    EXPECT_TRUE(fs::exists(out / it.value().get<std::string>())) << it.key() << " -> " << it.value();
  }
  EXPECT_EQ(listed, in_shards);
  // The manifest names every shard and the index with their sizes.
  const nlohmann::json m = read_json(out / "manifest.json");
  std::set<std::string> manifest_files;
  for (const auto& f : m.at("files")) {
    manifest_files.insert(f.at("name").get<std::string>());
    EXPECT_EQ(f.at("size").get<std::uint64_t>(), fs::file_size(out / f.at("name").get<std::string>())) << f;
    EXPECT_EQ(f.at("xxh128").get<std::string>(), xxh128_file(out / f.at("name").get<std::string>())) << f;
  }
  std::set<std::string> expected{"quantized.safetensors.index.json"};
  for (const fs::path& p : shards) expected.insert(p.filename().string());
  EXPECT_EQ(manifest_files, expected);
  for (const auto& l : m.at("layers")) EXPECT_TRUE(fs::exists(out / l.at("quantized").at("shard").get<std::string>()));
}

TEST(PackCliResume, ShardedSynthCheckpointInterruptedAndResumed) {
  const fs::path dir = test::temp_dir();
  const fs::path ckpt = dir / "synth.safetensors";
  const CliResult s = run_cli({"synth", "-o", ckpt.string(), "--factor", "16", "--layers", "2"});
  ASSERT_EQ(s.exit_code, 0) << s.out << s.err;
  const std::vector<std::string> config{"--max-shard-size", "100KB"};
  const CliResult base = pack(ckpt, dir / "baseline", config);
  ASSERT_EQ(base.exit_code, 0) << base.out << base.err;
  int shards = 0;
  expect_consistent_shards(dir / "baseline", &shards);
  EXPECT_GE(shards, 3) << base.out;
  std::printf("[ sharded  ] %d shards of at most 100KB\n", shards);

  interrupt_and_resume(ckpt, dir / "killed-layer", dir / "baseline", config, "layer:3", 3);
  const std::size_t layers = files_with_suffix(dir / "baseline", ".npz").size();
  EXPECT_EQ(read_json(dir / "baseline" / "manifest.json").at("layers").size(), layers);
  const std::string out =
      interrupt_and_resume(ckpt, dir / "killed-assembly", dir / "baseline", config, "assembly", layers);
  EXPECT_NE(out.find(fmt::format("packed {} layers ({} reused)", layers, layers)), std::string::npos) << out;
  int resumed_shards = 0;
  expect_consistent_shards(dir / "killed-assembly", &resumed_shards);
  EXPECT_EQ(resumed_shards, shards);
}

// ---------------------------------------------------------------------------------------------
// 3. --force and refusals

TEST(PackCliForce, ReplacesAPreviousPackAndKeepsOtherFiles) {
  const fs::path dir = test::temp_dir(), out = dir / "out";
  ASSERT_EQ(pack(test::tiny_checkpoint(), out, {"--preset", "openpi-dit"}).exit_code, 0);
  ASSERT_EQ(files_with_suffix(out, ".npz").size(), 14u);
  ASSERT_TRUE(fs::exists(out / "manifest.json"));
  { std::ofstream(out / "notes.txt") << "not ours"; }
  const std::vector<std::string> one{"--preset", "openpi-dit", "--layers", kQ0};

  const CliResult refused = pack(test::tiny_checkpoint(), out, one);
  EXPECT_EQ(refused.exit_code, 2);
  EXPECT_NE(refused.err.find("--force"), std::string::npos) << refused.err;

  std::vector<std::string> forced = one;
  forced.push_back("--force");
  const CliResult r = pack(test::tiny_checkpoint(), out, forced);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const auto npz = files_with_suffix(out, ".npz");
  ASSERT_EQ(npz.size(), 1u);
  EXPECT_EQ(npz[0].filename().string(), std::string(kQ0) + ".npz");
  EXPECT_EQ(read_json(out / "manifest.json").at("layers").size(), 1u);
  EXPECT_EQ(test::read_text(out / "notes.txt"), "not ours");
  // Apart from the user's file, the folder is what a fresh pack of that selection writes.
  fs::remove(out / "notes.txt");
  ASSERT_EQ(pack(test::tiny_checkpoint(), dir / "fresh", one).exit_code, 0);
  expect_same_folder(out, dir / "fresh");
}

TEST(PackCliRefusals, ResumeAndForceTogether) {
  const fs::path out = test::temp_dir() / "out";
  const CliResult r = pack(test::tiny_checkpoint(), out, {"--preset", "openpi-dit", "--resume", "--force"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_NE(r.err.find("--resume and --force"), std::string::npos) << r.err;
  EXPECT_FALSE(fs::exists(out / "manifest.json"));
}

TEST(PackCliRefusals, OutputIsTheCheckpointOrInsideItsFolder) {
  const fs::path dir = test::temp_dir();
  const fs::path ckdir = dir / "ckpt";
  fs::create_directories(ckdir);
  const fs::path file = ckdir / "model.safetensors";
  fs::copy_file(test::tiny_checkpoint(), file);
  const std::string before = test::read_text(file);

  const CliResult on_file = pack(file, file, {"--preset", "openpi-dit", "--force"});
  EXPECT_EQ(on_file.exit_code, 2) << on_file.out << on_file.err;
  EXPECT_NE(on_file.err.find("checkpoint"), std::string::npos) << on_file.err;
  EXPECT_TRUE(test::read_text(file) == before);

  const CliResult inside = pack(ckdir, ckdir / "pack", {"--preset", "openpi-dit"});
  EXPECT_EQ(inside.exit_code, 2) << inside.out << inside.err;
  EXPECT_NE(inside.err.find("inside"), std::string::npos) << inside.err;
  EXPECT_FALSE(fs::exists(ckdir / "pack"));

  const CliResult same = pack(ckdir, ckdir, {"--preset", "openpi-dit", "--force"});
  EXPECT_EQ(same.exit_code, 2) << same.out << same.err;
  EXPECT_TRUE(test::read_text(file) == before);
  EXPECT_EQ(fs::directory_iterator(ckdir)->path(), file);  // nothing else written there
}

// A checkpoint file named like one of the pack's own files (quantized.safetensors) inside the
// output folder: --force must not delete or replace it; the output folder is refused.
TEST(PackCliRefusals, ForceNeverDeletesTheCheckpointFile) {
  const fs::path dir = test::temp_dir();
  const fs::path file = dir / "quantized.safetensors";
  fs::copy_file(test::tiny_checkpoint(), file);
  const std::string before = test::read_text(file);
  const CliResult r = pack(file, dir, {"--preset", "openpi-dit", "--force"});
  EXPECT_EQ(r.exit_code, 2) << r.out << r.err;
  EXPECT_TRUE(test::read_text(file) == before) << "the checkpoint was replaced";
}

TEST(PackCliRefusals, SelectionMatchingNothingExits5) {
  const fs::path out = test::temp_dir() / "out";
  const CliResult r = pack(test::tiny_checkpoint(), out, {"--scope", "no.such.module."});
  EXPECT_EQ(r.exit_code, 5) << r.out << r.err;
  EXPECT_FALSE(fs::exists(out / "manifest.json"));
}

// A small checkpoint: "blk.q_proj" [rows, cols] in `dtype` from `values`, plus a healthy "blk.k_proj".
fs::path write_checkpoint(const fs::path& path, formats::DType dtype, std::uint64_t rows, std::uint64_t cols,
                          const std::vector<float>& values) {
  const std::uint64_t esize = dtype == formats::DType::F32 ? 4 : 2;
  std::vector<formats::TensorSpec> specs{{"blk.q_proj.weight", dtype, {rows, cols}},
                                         {"blk.k_proj.weight", dtype, {16, 32}}};
  auto encode = [&](float v) {
    std::uint32_t bits;
    std::memcpy(&bits, &v, 4);
    std::string b(esize, '\0');
    if (esize == 4)
      std::memcpy(b.data(), &bits, 4);
    else {
      const auto h = static_cast<std::uint16_t>(bits >> 16);  // BF16 by truncation (values are exact)
      std::memcpy(b.data(), &h, 2);
    }
    return b;
  };
  std::string data;
  for (float v : values) data += encode(v);
  for (int k = 0; k < 16 * 32; ++k) data += encode(static_cast<float>((k * 7 % 13) - 6) * 0.125f);
  formats::SafetensorsWriter w(path, specs, {});
  w.write(std::as_bytes(std::span(data.data(), data.size())));
  w.commit();
  return path;
}

TEST(PackCliNumeric, NaNWeightExits6NamingLayerAndPosition) {
  const fs::path dir = test::temp_dir();
  for (const auto dtype : {formats::DType::BF16, formats::DType::F32}) {
    const std::string tag(formats::dtype_name(dtype));
    std::vector<float> w(8 * 32);
    for (std::size_t k = 0; k < w.size(); ++k) w[k] = static_cast<float>(k % 5) - 2.0f;
    w[3 * 32 + 17] = std::numeric_limits<float>::quiet_NaN();
    const fs::path ckpt = write_checkpoint(dir / (tag + ".safetensors"), dtype, 8, 32, w);
    const fs::path out = dir / ("out-" + tag);
    const CliResult r = pack(ckpt, out);
    EXPECT_EQ(r.exit_code, 6) << tag << "\n" << r.out << r.err;
    EXPECT_NE(r.err.find("blk.q_proj"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("[3, 17]"), std::string::npos) << r.err;
    EXPECT_FALSE(fs::exists(out / "manifest.json"));
    std::printf("[ nan %s ] %s", tag.c_str(), r.err.c_str());
  }
}

TEST(PackCliNumeric, AllZeroLayerPacks) {
  const fs::path dir = test::temp_dir();
  const fs::path ckpt =
      write_checkpoint(dir / "zero.safetensors", formats::DType::F32, 16, 32, std::vector<float>(16 * 32, 0.0f));
  const fs::path out = dir / "out";
  const CliResult r = pack(ckpt, out);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const nlohmann::json m = read_json(out / "manifest.json");
  ASSERT_EQ(m.at("layers").size(), 2u);
  const auto& layer = m.at("layers")[1].at("name") == "blk.q_proj" ? m.at("layers")[1] : m.at("layers")[0];
  ASSERT_EQ(layer.at("name"), "blk.q_proj");
  EXPECT_EQ(layer.at("quality").at("duquant").at("rel_fro_error").get<double>(), 0.0);
  EXPECT_NO_THROW(formats::NpzFile::open(out / "blk.q_proj.npz"));
  // Every code is 0, stored as 0+8 in both nibbles.
  const auto q = formats::Checkpoint::open(out / "quantized.safetensors");
  const auto* qw = q.find("blk.q_proj.qweight");
  ASSERT_NE(qw, nullptr);
  for (std::byte b : q.bytes(*qw)) ASSERT_EQ(static_cast<int>(b), 0x88);
  const auto* sc = q.find("blk.q_proj.scales");
  ASSERT_NE(sc, nullptr);
  std::vector<float> scales(sc->numel);
  q.read_f32(*sc, scales);
  for (float s : scales) EXPECT_TRUE(std::isfinite(s) && s > 0) << s;
}

// ---------------------------------------------------------------------------------------------
// 5. The manifest

TEST(PackCliManifest, ContentMatchesFilesAndCheckpoint) {
  const fs::path out = test::temp_dir() / "out";
  const CliResult r = pack(test::tiny_checkpoint(), out, {"--preset", "openpi-dit"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  const nlohmann::json m = read_json(out / "manifest.json");
  EXPECT_EQ(m.at("format"), "duquant-pack");
  EXPECT_EQ(m.at("format_version"), 1);
  const auto& c = m.at("config");
  for (const char* knob :
       {"runtime", "preset", "scope", "include", "exclude", "layers", "include_action_head", "wbits_default", "wbits",
        "wbits_rules", "abits", "block", "block_out", "permute", "row_rot", "lambda_smooth", "act_pct", "calib_steps"})
    EXPECT_TRUE(c.contains(knob)) << knob;
  EXPECT_EQ(c.at("preset"), "openpi-dit");
  EXPECT_EQ(c.at("scope"), "paligemma_with_expert.gemma_expert.model.");
  EXPECT_EQ(c.at("block"), 16);
  EXPECT_EQ(c.at("block_out"), 16);
  EXPECT_EQ(c.at("wbits_default"), 4);
  EXPECT_EQ(c.at("lambda_smooth"), 0.15);

  const auto ckpt = formats::Checkpoint::open(test::tiny_checkpoint());
  EXPECT_EQ(m.at("checkpoint").at("files")[0].at("size").get<std::uint64_t>(), fs::file_size(test::tiny_checkpoint()));
  const auto& layers = m.at("layers");
  ASSERT_EQ(layers.size(), 14u);
  double sum_dq = 0, sum_rtn = 0;
  std::set<std::string> names;
  for (const auto& l : layers) {
    const std::string name = l.at("name");
    names.insert(name);
    const auto* w = ckpt.find(name + ".weight");
    ASSERT_NE(w, nullptr) << name;
    EXPECT_EQ(l.at("shape"), nlohmann::json::array({w->shape[0], w->shape[1]})) << name;
    EXPECT_EQ(l.at("wbits"), 4) << name;
    EXPECT_EQ(l.at("dtype"), "BF16") << name;
    // The raw weight bytes' digest, computed here (every layer, not only one).
    EXPECT_EQ(l.at("weight_xxh128").get<std::string>(), xxh128_hex(ckpt.bytes(*w))) << name;
    const auto& npz = l.at("npz");
    EXPECT_EQ(npz.at("name").get<std::string>(), name + ".npz");
    const fs::path p = out / npz.at("name").get<std::string>();
    ASSERT_TRUE(fs::exists(p)) << p;
    EXPECT_EQ(npz.at("size").get<std::uint64_t>(), fs::file_size(p)) << name;
    EXPECT_EQ(npz.at("xxh128").get<std::string>(), xxh128_file(p)) << name;
    EXPECT_EQ(l.at("quantized").at("shard"), "quantized.safetensors");
    const auto& q = l.at("quality");
    for (const char* kind : {"duquant", "rtn"}) {
      const double rf = q.at(kind).at("rel_fro_error").get<double>();
      ASSERT_TRUE(q.at(kind).at("sqnr_db").is_number()) << name << " " << kind;
      const double sq = q.at(kind).at("sqnr_db").get<double>();
      EXPECT_TRUE(std::isfinite(rf) && rf > 0 && rf < 1) << name << " " << kind << " " << rf;
      EXPECT_TRUE(std::isfinite(sq)) << name << " " << kind;
      EXPECT_NEAR(sq, -20.0 * std::log10(rf), 1e-9) << name << " " << kind;
    }
    sum_dq += q.at("duquant").at("sqnr_db").get<double>();
    sum_rtn += q.at("rtn").at("sqnr_db").get<double>();
  }
  EXPECT_EQ(names.size(), 14u);
  EXPECT_NE(names.count(kQ0), 0u);
  // The manifest lists exactly the pack's npz files.
  std::set<std::string> npz_files;
  for (const fs::path& p : files_with_suffix(out, ".npz")) npz_files.insert(p.filename().replace_extension().string());
  EXPECT_EQ(npz_files, names);
  const double mean_dq = sum_dq / 14, mean_rtn = sum_rtn / 14;
  std::printf("[ manifest ] mean SQNR over the 14 expert layers: duquant %.3f dB, rtn %.3f dB\n", mean_dq, mean_rtn);
  EXPECT_GT(mean_dq, mean_rtn);
  // The command's own summary quotes the same means.
  EXPECT_NE(r.out.find(fmt::format("SQNR: mean {:.2f} dB (round-to-nearest {:.2f} dB)", mean_dq, mean_rtn)),
            std::string::npos)
      << r.out;
  // The quantized file's entry matches it.
  ASSERT_EQ(m.at("files").size(), 1u);
  EXPECT_EQ(m.at("files")[0].at("size").get<std::uint64_t>(), fs::file_size(out / "quantized.safetensors"));
  EXPECT_EQ(m.at("files")[0].at("xxh128").get<std::string>(), xxh128_file(out / "quantized.safetensors"));
}

}  // namespace
}  // namespace duquant

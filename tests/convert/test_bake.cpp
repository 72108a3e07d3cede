// `duquant bake` run as a user would, checked against ground truth: each baked layer's x·Wᵀ + b
// against the C++ reference forward of the pack (conformance_pack_output with the pack's own
// tensors read back) in the three row_rot modes, every other tensor byte for byte, the dtypes and
// the rounding the CLI reports, a sharded model folder, determinism, and the refusals (nothing
// written, the layer named).
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "base/elementwise.hpp"
#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "formats/digest.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_writer.hpp"
#include "math/conformance.hpp"
#include "packfmt/manifest.hpp"
#include "packfmt/pack_reader.hpp"
#include "verify/verify_test_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using formats::Checkpoint;
using formats::TensorRef;

constexpr const char* kExpert = "paligemma_with_expert.gemma_expert.model.";
constexpr const char* kVision = "paligemma_with_expert.paligemma.model.vision_tower.";
constexpr const char* kQ0 = "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj";

test::CliResult pack(const fs::path& ckpt, const fs::path& out, const std::string& scope,
                     const std::string& row_rot = "restore") {
  return test::run_cli({"pack", ckpt.string(), "-o", out.string(), "--scope", scope, "--row-rot", row_rot});
}

test::CliResult bake(const fs::path& pack, const fs::path& ckpt, const fs::path& out,
                     std::vector<std::string> extra = {}) {
  std::vector<std::string> args{"bake", pack.string(), "--checkpoint", ckpt.string(), "-o", out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return test::run_cli(args);
}

Manifest read_manifest(const fs::path& pack) {
  return parse_manifest(read_manifest_json(pack / "manifest.json"), "manifest.json");
}

std::vector<float> read_f32(const Checkpoint& c, const std::string& name) {
  const TensorRef* t = c.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<float> v(t->numel);
  c.read_f32(*t, v);
  return v;
}

double rel(const std::vector<double>& a, const std::vector<float>& ref) {
  double d = 0, n = 0;
  for (std::size_t i = 0; i < ref.size(); ++i) {
    d += (a[i] - ref[i]) * (a[i] - ref[i]);
    n += static_cast<double>(ref[i]) * ref[i];
  }
  return std::sqrt(d / n);
}

// x·Wᵀ + b in double, x [rows, I].
std::vector<double> forward(const std::vector<float>& x, std::size_t rows, const std::vector<float>& w, std::size_t out,
                            std::size_t in, const std::vector<float>& b) {
  std::vector<double> y(rows * out);
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t o = 0; o < out; ++o) {
      double acc = b.empty() ? 0.0 : b[o];
      for (std::size_t i = 0; i < in; ++i) acc += static_cast<double>(x[r * in + i]) * w[o * in + i];
      y[r * out + o] = acc;
    }
  return y;
}

// Every layer of `pack_dir` in `baked` (F32) against the pack's contract for the stored test_x,
// conformance inputs and wide random inputs; returns the worst relative error.
double check_contract(const fs::path& pack_dir, const fs::path& baked_path, bool expect_bias) {
  const Manifest m = read_manifest(pack_dir);
  const PackDirectory pack = PackDirectory::open(pack_dir);
  const Checkpoint baked = Checkpoint::open(baked_path);
  const RowRot mode = m.config.quant.row_rot;
  double worst = 0;
  bool saw_bias = false;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (const ManifestLayer& e : m.layers) {
    const auto q = pack.quantized_layer(e.name, e.wbits);
    EXPECT_TRUE(q.has_value()) << e.name;
    if (!q) continue;
    const std::size_t o = e.out_features, in = e.in_features;
    const TensorRef* wt = baked.find(e.name + ".weight");
    EXPECT_NE(wt, nullptr);
    if (wt == nullptr) continue;
    EXPECT_EQ(wt->dtype, formats::DType::F32) << e.name;
    const std::vector<float> w = read_f32(baked, e.name + ".weight");
    std::vector<float> b;
    if (baked.find(e.name + ".bias")) b = read_f32(baked, e.name + ".bias");
    EXPECT_EQ(b.empty(), q->bias.empty()) << e.name;
    saw_bias = saw_bias || !b.empty();
    std::vector<std::vector<float>> inputs{q->test_x, conformance_inputs(7, static_cast<std::int64_t>(in))};
    std::vector<float> wide(5 * in);
    for (float& v : wide) v = normal(rng);
    inputs.push_back(wide);
    for (const std::vector<float>& x : inputs) {
      const std::size_t rows = x.size() / in;
      const std::vector<float> ref = conformance_pack_output(
          x, static_cast<std::int64_t>(rows), static_cast<std::int64_t>(o), static_cast<std::int64_t>(in), q->perm,
          q->r_in, q->codes, q->scales, q->r_out, mode, q->bias);
      const double r = rel(forward(x, rows, w, o, in, b), ref);
      EXPECT_LT(r, 1e-5) << e.name << " row_rot " << row_rot_name(mode) << " rows " << rows;
      worst = std::max(worst, r);
    }
    // The pack's own stored contract output for test_x (a calibrated layer's includes its A8
    // activations, which a checkpoint does not represent).
    if (!e.calibrated) {
      EXPECT_LT(rel(forward(q->test_x, q->test_rows, w, o, in, b), q->test_y_q), 1e-5) << e.name;
    }
  }
  EXPECT_EQ(saw_bias, expect_bias);
  return worst;
}

// Every tensor of `out` but `changed` has the input's name, dtype, shape and bytes, in the same order.
void expect_copied(const fs::path& in_path, const fs::path& out_path, const std::set<std::string>& changed) {
  const Checkpoint in = Checkpoint::open(in_path), out = Checkpoint::open(out_path);
  const auto a = in.stored_tensors(), b = out.stored_tensors();
  ASSERT_EQ(a.size(), b.size());
  std::size_t copied = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i]->stored_name, b[i]->stored_name) << "order differs at " << i;
    EXPECT_EQ(a[i]->shape, b[i]->shape) << a[i]->stored_name;
    if (changed.count(a[i]->stored_name)) continue;
    EXPECT_EQ(a[i]->dtype, b[i]->dtype) << a[i]->stored_name;
    const auto x = in.bytes(*a[i]), y = out.bytes(*b[i]);
    EXPECT_TRUE(x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size()) == 0) << a[i]->stored_name;
    ++copied;
  }
  EXPECT_EQ(copied + changed.size(), a.size());
}

std::set<std::string> packed_tensors(const fs::path& pack_dir, bool with_bias) {
  std::set<std::string> out;
  for (const ManifestLayer& e : read_manifest(pack_dir).layers) {
    out.insert(e.name + ".weight");
    if (with_bias && e.bias) out.insert(e.name + ".bias");
  }
  return out;
}

bool nothing_beside(const fs::path& dir, const std::set<std::string>& expected) {
  for (const auto& e : fs::directory_iterator(dir))
    if (!expected.count(e.path().filename().string())) {
      ADD_FAILURE() << "left behind: " << e.path();
      return false;
    }
  return true;
}

std::string read_bytes(const fs::path& p) { return test::read_text(p); }

class Bake : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = test::temp_dir(); }
  fs::path dir_;
};

// The three row_rot modes, on the vision tower (biases: propagate rotates them) and the expert.
TEST_F(Bake, F32MatchesThePackContractInEveryRowRotMode) {
  for (const std::string mode : {"restore", "0", "propagate"}) {
    for (const char* scope : {kVision, kExpert}) {
      const bool vision = scope == std::string(kVision);
      const fs::path p = dir_ / fmt::format("pack-{}-{}", mode, vision ? "vision" : "expert");
      const fs::path out = dir_ / fmt::format("baked-{}-{}.safetensors", mode, vision ? "vision" : "expert");
      ASSERT_EQ(pack(test::tiny_checkpoint(), p, scope, mode).exit_code, 0);
      const auto r = bake(p, test::tiny_checkpoint(), out, {"--dtype", "f32"});
      ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
      EXPECT_NE(r.out.find("A8 activation contract is not represented"), std::string::npos) << r.out;
      const double worst = check_contract(p, out, vision);
      EXPECT_GT(worst, 0.0);  // a real comparison happened
      // Biases change only where the contract rotates them.
      expect_copied(test::tiny_checkpoint(), out, packed_tensors(p, mode == "propagate"));
      if (mode == "propagate" && vision) {
        const Checkpoint in = Checkpoint::open(test::tiny_checkpoint()), o = Checkpoint::open(out);
        const std::string bias = read_manifest(p).layers.front().name + ".bias";
        EXPECT_EQ(o.find(bias)->dtype, formats::DType::F32);
        EXPECT_NE(read_f32(in, bias), read_f32(o, bias));
      }
      const Checkpoint o = Checkpoint::open(out);
      const auto& meta = o.files().front().metadata;
      EXPECT_EQ(meta.at("duquant.baked"), "1");
      EXPECT_EQ(meta.at("duquant.pack"), p.filename().string());
      EXPECT_EQ(meta.at("duquant.bake_dtype"), "f32");
      EXPECT_EQ(meta.at("duquant.pack_manifest_xxh128"), xxh128_file(p / "manifest.json"));
      EXPECT_NE(meta.at("duquant.activations").find("A8"), std::string::npos);
    }
  }
}

// Rounding the CLI reports per layer for --dtype same; bf16 and f16 are the f32 values rounded.
TEST_F(Bake, DTypesAndReportedRounding) {
  const fs::path p = dir_ / "pack";
  ASSERT_EQ(pack(test::tiny_checkpoint(), p, kExpert).exit_code, 0);
  std::map<std::string, fs::path> outs;
  std::map<std::string, std::string> stdout_of;
  for (const std::string d : {"f32", "same", "bf16", "f16"}) {
    outs[d] = dir_ / (d + ".safetensors");
    const auto r = bake(p, test::tiny_checkpoint(), outs[d], {"--dtype", d});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    stdout_of[d] = r.out;
  }
  const Checkpoint f32 = Checkpoint::open(outs["f32"]), same = Checkpoint::open(outs["same"]);
  const Checkpoint bf16 = Checkpoint::open(outs["bf16"]), f16 = Checkpoint::open(outs["f16"]);
  const Checkpoint in = Checkpoint::open(test::tiny_checkpoint());
  double max_rounding = 0;
  for (const ManifestLayer& e : read_manifest(p).layers) {
    const std::string w = e.name + ".weight";
    EXPECT_EQ(same.find(w)->dtype, in.find(w)->dtype);
    EXPECT_EQ(bf16.find(w)->dtype, formats::DType::BF16);
    EXPECT_EQ(f16.find(w)->dtype, formats::DType::F16);
    const std::vector<float> exact = read_f32(f32, w), s = read_f32(same, w);
    const auto bb = bf16.bytes(*bf16.find(w)), hb = f16.bytes(*f16.find(w));
    double d = 0, n = 0;
    for (std::size_t k = 0; k < exact.size(); ++k) {
      std::uint16_t hbf = 0, hf = 0;
      std::memcpy(&hbf, bb.data() + 2 * k, 2);
      std::memcpy(&hf, hb.data() + 2 * k, 2);
      ASSERT_EQ(hbf, elementwise::f32_to_bf16(exact[k])) << w << " [" << k << "]";
      ASSERT_EQ(hf, elementwise::f32_to_f16(exact[k])) << w << " [" << k << "]";
      d += (static_cast<double>(s[k]) - exact[k]) * (static_cast<double>(s[k]) - exact[k]);
      n += static_cast<double>(exact[k]) * exact[k];
    }
    const double rounding = std::sqrt(d / n);
    max_rounding = std::max(max_rounding, rounding);
    EXPECT_GT(rounding, 1e-4) << w;  // BF16 rounding is visible
    const std::regex line(std::regex_replace(e.name, std::regex("\\."), "\\.") +
                          "  BF16  rounding ([0-9.e+-]+)  quant\\.err ([0-9.]+)");
    std::smatch match;
    ASSERT_TRUE(std::regex_search(stdout_of["same"], match, line)) << stdout_of["same"];
    EXPECT_NEAR(std::stod(match[1]), rounding, rounding * 2e-3) << e.name;
  }
  EXPECT_NE(stdout_of["same"].find(fmt::format("max {:.3e}", max_rounding)), std::string::npos) << stdout_of["same"];
  expect_copied(test::tiny_checkpoint(), outs["same"], packed_tensors(p, false));
}

TEST_F(Bake, DeterministicWhateverTheThreadCount) {
  const fs::path p = dir_ / "pack";
  ASSERT_EQ(pack(test::tiny_checkpoint(), p, kVision, "propagate").exit_code, 0);
  ASSERT_EQ(bake(p, test::tiny_checkpoint(), dir_ / "a.safetensors", {"-j", "1"}).exit_code, 0);
  ASSERT_EQ(bake(p, test::tiny_checkpoint(), dir_ / "b.safetensors", {"-j", "4"}).exit_code, 0);
  ASSERT_EQ(bake(p, test::tiny_checkpoint(), dir_ / "c.safetensors").exit_code, 0);
  EXPECT_TRUE(read_bytes(dir_ / "a.safetensors") == read_bytes(dir_ / "b.safetensors"));
  EXPECT_TRUE(read_bytes(dir_ / "a.safetensors") == read_bytes(dir_ / "c.safetensors"));
}

// A 2-shard model folder (index, config.json): the output is a folder of the same shards.
TEST_F(Bake, ShardedModelFolder) {
  const fs::path model = dir_ / "model";
  fs::create_directories(model);
  const Checkpoint in = Checkpoint::open(test::tiny_checkpoint());
  const auto tensors = in.stored_tensors();
  const std::size_t half = tensors.size() / 2;
  nlohmann::ordered_json index;
  std::uint64_t total = 0;
  for (int s = 0; s < 2; ++s) {
    const std::string name = fmt::format("model-{:05d}-of-00002.safetensors", s + 1);
    std::vector<formats::TensorSpec> specs;
    const std::size_t b = s == 0 ? 0 : half, e = s == 0 ? half : tensors.size();
    for (std::size_t i = b; i < e; ++i) {
      specs.push_back({tensors[i]->stored_name, tensors[i]->dtype, tensors[i]->shape});
      index["weight_map"][tensors[i]->stored_name] = name;
      total += tensors[i]->nbytes;
    }
    formats::SafetensorsWriter w(model / name, specs, {{"format", "pt"}});
    for (std::size_t i = b; i < e; ++i) w.write(in.bytes(*tensors[i]));
    w.commit();
  }
  index["metadata"]["total_size"] = total + 1;  // the output recomputes it
  std::ofstream(model / "model.safetensors.index.json") << index.dump(2);
  std::ofstream(model / "config.json") << R"({"model_type": "pi05"})";

  const fs::path p = dir_ / "pack";
  ASSERT_EQ(pack(test::tiny_checkpoint(), p, kExpert).exit_code, 0);  // the same weights: the same digests
  ASSERT_EQ(bake(p, test::tiny_checkpoint(), dir_ / "single.safetensors").exit_code, 0);
  const auto r = bake(p, model, dir_ / "out");
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  EXPECT_NE(r.out.find("2 safetensors files"), std::string::npos) << r.out;
  std::set<std::string> files;
  for (const auto& e : fs::directory_iterator(dir_ / "out")) files.insert(e.path().filename().string());
  EXPECT_EQ(files, (std::set<std::string>{"config.json", "model-00001-of-00002.safetensors",
                                          "model-00002-of-00002.safetensors", "model.safetensors.index.json"}));
  EXPECT_EQ(read_bytes(dir_ / "out" / "config.json"), read_bytes(model / "config.json"));
  const auto j = nlohmann::json::parse(read_bytes(dir_ / "out" / "model.safetensors.index.json"));
  EXPECT_EQ(j.at("weight_map"), nlohmann::json::parse(index.dump()).at("weight_map"));
  EXPECT_EQ(j.at("metadata").at("total_size").get<std::uint64_t>(), total);
  for (int s = 1; s <= 2; ++s) {
    const std::string name = fmt::format("model-{:05d}-of-00002.safetensors", s);
    std::vector<std::string> a, b;
    const Checkpoint i = Checkpoint::open(model / name);
    for (const TensorRef* t : i.stored_tensors()) a.push_back(t->stored_name);
    const Checkpoint o = Checkpoint::open(dir_ / "out" / name);
    for (const TensorRef* t : o.stored_tensors()) b.push_back(t->stored_name);
    EXPECT_EQ(a, b) << name;
    EXPECT_EQ(o.files().front().metadata.at("format"), "pt");
    EXPECT_EQ(o.files().front().metadata.at("duquant.baked"), "1");
  }
  // Every tensor, baked or copied, equals the single-file bake's.
  expect_copied(dir_ / "single.safetensors", dir_ / "out", {});
  expect_copied(model, dir_ / "out", packed_tensors(p, false));
  EXPECT_TRUE(nothing_beside(dir_, {"model", "pack", "single.safetensors", "out"}));
}

// LeRobot's layout ("model." before every name): the output keeps the stored names, and its tensors
// are those of the plain checkpoint's bake.
TEST_F(Bake, PrefixedCheckpointStaysPrefixed) {
  const Checkpoint in = Checkpoint::open(test::tiny_checkpoint());
  std::vector<formats::TensorSpec> specs;
  for (const TensorRef* t : in.stored_tensors()) specs.push_back({"model." + t->stored_name, t->dtype, t->shape});
  {
    formats::SafetensorsWriter w(dir_ / "lerobot.safetensors", specs, {});
    for (const TensorRef* t : in.stored_tensors()) w.write(in.bytes(*t));
    w.commit();
  }
  const fs::path p = dir_ / "pack";
  ASSERT_EQ(pack(test::tiny_checkpoint(), p, kVision).exit_code, 0);
  ASSERT_EQ(bake(p, test::tiny_checkpoint(), dir_ / "plain.safetensors").exit_code, 0);
  const auto r = bake(p, dir_ / "lerobot.safetensors", dir_ / "prefixed.safetensors");
  ASSERT_EQ(r.exit_code, 0) << r.err;
  const Checkpoint plain = Checkpoint::open(dir_ / "plain.safetensors");
  const Checkpoint prefixed = Checkpoint::open(dir_ / "prefixed.safetensors");
  const auto a = plain.stored_tensors(), b = prefixed.stored_tensors();
  ASSERT_EQ(a.size(), b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ("model." + a[i]->stored_name, b[i]->stored_name);
    const auto x = plain.bytes(*a[i]), y = prefixed.bytes(*b[i]);
    EXPECT_TRUE(x.size() == y.size() && std::memcmp(x.data(), y.data(), x.size()) == 0) << b[i]->stored_name;
  }
}

// A copy of the fixture with one element of `layer`'s weight changed.
void write_stale_copy(const fs::path& out, const std::string& layer) {
  const Checkpoint in = Checkpoint::open(test::tiny_checkpoint());
  std::vector<formats::TensorSpec> specs;
  for (const TensorRef* t : in.stored_tensors()) specs.push_back({t->stored_name, t->dtype, t->shape});
  formats::SafetensorsWriter w(out, specs, {});
  for (const TensorRef* t : in.stored_tensors()) {
    const auto b = in.bytes(*t);
    std::vector<std::byte> copy(b.begin(), b.end());
    if (t->stored_name == layer + ".weight") copy[2] ^= std::byte{0x01};
    w.write(copy);
  }
  w.commit();
}

TEST_F(Bake, RefusalsLeaveNoOutputAndNameTheLayer) {
  const fs::path p = dir_ / "pack";
  ASSERT_EQ(pack(test::tiny_checkpoint(), p, kExpert).exit_code, 0);
  // A checkpoint with one weight changed: stale, exit 3, naming the layer and both digests.
  write_stale_copy(dir_ / "stale.safetensors", kQ0);
  const Manifest m = read_manifest(p);
  std::string recorded;
  for (const ManifestLayer& e : m.layers)
    if (e.name == kQ0) recorded = e.weight_xxh128;
  const auto stale = bake(p, dir_ / "stale.safetensors", dir_ / "out.safetensors");
  EXPECT_EQ(stale.exit_code, 3) << stale.err;
  EXPECT_NE(stale.err.find(std::string("layer '") + kQ0 + "'"), std::string::npos) << stale.err;
  EXPECT_NE(stale.err.find(recorded), std::string::npos) << stale.err;
  EXPECT_NE(stale.err.find("not the checkpoint the pack was made from"), std::string::npos) << stale.err;
  // The same into a folder output (a model folder input): nothing left either.
  fs::create_directories(dir_ / "stale-model");
  fs::copy_file(dir_ / "stale.safetensors", dir_ / "stale-model" / "model.safetensors");
  EXPECT_EQ(bake(p, dir_ / "stale-model", dir_ / "out-folder").exit_code, 3);
  // A runtime pack (npz only): run import first.
  const auto npz = bake(test::fixtures() / "openpi-pack-b16", test::tiny_checkpoint(), dir_ / "out.safetensors");
  EXPECT_EQ(npz.exit_code, 2);
  EXPECT_NE(npz.err.find("duquant import"), std::string::npos) << npz.err;
  // A single-file checkpoint bakes into a .safetensors file.
  EXPECT_EQ(bake(p, test::tiny_checkpoint(), dir_ / "out-dir").exit_code, 2);
  EXPECT_TRUE(nothing_beside(dir_, {"pack", "stale.safetensors", "stale-model"}));

  // An existing output without --force: refused, untouched; with --force: replaced.
  std::ofstream(dir_ / "out.safetensors") << "keep";
  const auto exists = bake(p, test::tiny_checkpoint(), dir_ / "out.safetensors");
  EXPECT_EQ(exists.exit_code, 2) << exists.err;
  EXPECT_EQ(read_bytes(dir_ / "out.safetensors"), "keep");
  ASSERT_EQ(bake(p, test::tiny_checkpoint(), dir_ / "out.safetensors", {"--force"}).exit_code, 0);
  // The input as output.
  EXPECT_EQ(bake(p, dir_ / "out.safetensors", dir_ / "out.safetensors", {"--force"}).exit_code, 2);

  // A baked checkpoint is no FP original: verify and bake refuse it, naming the pack.
  const auto v = test::run_cli({"verify", p.string(), "--checkpoint", (dir_ / "out.safetensors").string()});
  EXPECT_EQ(v.exit_code, 2) << v.out << v.err;
  EXPECT_NE(v.err.find("baked by `duquant bake` from pack 'pack'"), std::string::npos) << v.err;
  const auto again = bake(p, dir_ / "out.safetensors", dir_ / "again.safetensors");
  EXPECT_EQ(again.exit_code, 2);
  EXPECT_NE(again.err.find("written by `duquant bake`"), std::string::npos) << again.err;
  EXPECT_FALSE(fs::exists(dir_ / "again.safetensors"));

  // inspect shows where it came from, in the text and in the JSON.
  const std::string digest = xxh128_file(p / "manifest.json");
  const auto text = test::run_cli({"inspect", (dir_ / "out.safetensors").string()});
  EXPECT_EQ(text.exit_code, 0) << text.err;
  EXPECT_NE(text.out.find("baked by duquant from pack pack (manifest xxh128 " + digest + ")"), std::string::npos)
      << text.out;
  const auto json = test::run_cli({"inspect", (dir_ / "out.safetensors").string(), "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.err;
  const auto j = nlohmann::json::parse(json.out);
  EXPECT_EQ(j.at("baked").at("pack"), "pack");
  EXPECT_EQ(j.at("baked").at("manifest_xxh128"), digest);
  EXPECT_EQ(j.at("baked").at("dtype"), "same");
  const auto plain = test::run_cli({"inspect", test::tiny_checkpoint().string(), "--json"});
  EXPECT_FALSE(nlohmann::json::parse(plain.out).contains("baked"));
}

// A damaged pack is refused before anything is written: tensors that are not what the manifest records,
// and (the manifest's digest made to agree) a perm that is no permutation, which would place columns
// out of the weight.
TEST_F(Bake, DamagedPackIsRefusedByName) {
  const fs::path p = dir_ / "pack";
  ASSERT_EQ(pack(test::tiny_checkpoint(), p, kExpert).exit_code, 0);
  const fs::path shard = p / "quantized.safetensors";
  vtest::edit_tensor(shard, std::string(kQ0) + ".perm", [](std::string& bytes, const vtest::StTensor& t) {
    const std::int64_t far = 1'000'000'000;
    std::memcpy(bytes.data() + t.begin + 8, &far, sizeof far);  // perm[1]
  });
  const auto damaged = bake(p, test::tiny_checkpoint(), dir_ / "out.safetensors");
  EXPECT_EQ(damaged.exit_code, 3) << damaged.err;
  EXPECT_NE(damaged.err.find(std::string("layer '") + kQ0 + "': its tensors"), std::string::npos) << damaged.err;
  EXPECT_FALSE(fs::exists(dir_ / "out.safetensors"));
  // The manifest made to agree with the damaged bytes: the perm itself is refused.
  const auto stored = PackDirectory::open(p).quantized_layer_bytes(kQ0);
  ASSERT_TRUE(stored.has_value());
  nlohmann::json m = nlohmann::json::parse(vtest::read_file(p / "manifest.json"));
  for (auto& l : m["layers"])
    if (l["name"] == kQ0) l["quantized"]["xxh128"] = stored->xxh128;
  vtest::write_file(p / "manifest.json", m.dump(1));
  const auto perm = bake(p, test::tiny_checkpoint(), dir_ / "out.safetensors");
  EXPECT_EQ(perm.exit_code, 3) << perm.err;
  EXPECT_NE(perm.err.find("perm[1] = 1000000000 is outside"), std::string::npos) << perm.err;
  EXPECT_FALSE(fs::exists(dir_ / "out.safetensors"));
}

// A smoothed pack bakes only against its --fold-smoothing checkpoint.
TEST_F(Bake, SmoothedPackNeedsItsFoldedCheckpoint) {
  const Checkpoint in = Checkpoint::open(test::tiny_checkpoint());
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<formats::TensorSpec> specs;
  std::vector<std::vector<float>> values;
  for (const TensorRef& t : in.tensors()) {
    if (t.name.rfind(kExpert, 0) != 0 || t.shape.size() != 2 || t.name.find("layernorm") != std::string::npos ||
        t.name.size() < 7 || t.name.compare(t.name.size() - 7, 7, ".weight") != 0)
      continue;
    const std::string layer = t.name.substr(0, t.name.size() - 7);
    specs.push_back({layer + ".x_0000", formats::DType::F32, {64, t.shape[1]}});
    values.emplace_back(64 * t.shape[1]);
    for (float& v : values.back()) v = normal(rng);
  }
  ASSERT_FALSE(specs.empty());
  {
    formats::SafetensorsWriter w(dir_ / "dump.safetensors", specs, {});
    for (const auto& v : values) w.write(std::as_bytes(std::span(v)));
    w.commit();
  }
  const fs::path folded = dir_ / "folded.safetensors";
  const auto r = test::run_cli({"pack", test::tiny_checkpoint().string(), "-o", (dir_ / "pack").string(), "--preset",
                                "openpi-dit", "--calib", (dir_ / "dump.safetensors").string(), "--smooth-alpha", "0.5",
                                "--fold-smoothing", folded.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err << r.out;
  bool smoothed = false;
  for (const ManifestLayer& e : read_manifest(dir_ / "pack").layers) smoothed = smoothed || e.smoothed;
  ASSERT_TRUE(smoothed);
  const auto original = bake(dir_ / "pack", test::tiny_checkpoint(), dir_ / "out.safetensors");
  EXPECT_EQ(original.exit_code, 3) << original.err;
  EXPECT_NE(original.err.find("--fold-smoothing"), std::string::npos) << original.err;
  EXPECT_FALSE(fs::exists(dir_ / "out.safetensors"));
  const auto ok = bake(dir_ / "pack", folded, dir_ / "out.safetensors", {"--dtype", "f32"});
  ASSERT_EQ(ok.exit_code, 0) << ok.err;
  check_contract(dir_ / "pack", dir_ / "out.safetensors", false);
}

}  // namespace
}  // namespace duquant

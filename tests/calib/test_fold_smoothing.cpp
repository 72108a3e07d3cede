// --fold-smoothing: random positive smoothing scales folded into the pi0.5 fixture (language model
// layer 0: Gemma RMSNorm → q/k/v and gate/up; action expert layer 0: adaptive RMSNorm, both groups;
// vision layer 0: LayerNorm → q/k/v and fc1), read back and checked against reference norms in
// double; a hand-made sharded F32/F16/BF16 checkpoint checked value for value; refusals.
//
// Tolerances are derived, not fitted. A folded parameter p' is the float32 value of the formula
// rounded to the tensor's dtype: BF16 rounding moves it by at most half an ulp ≤ 2^-8·|p'|, and
// the float32 arithmetic by a few 2^-24 of the operands (bounded by 2^-20·(|p'| + |1 + p'| + 1)).
// So per output element
//   folded norm − original norm / s  ≤  Σ over the element's parameters of |multiplier| · err(p')
// (multiplier: x̂_j for a weight, 1 for a bias, x̂_j·cond_c or cond_c for an adaptive dense), and
// for the norm → linear composition the same propagated through the folded weight, plus
// |n_j / s_j| · 2^-8·(1 + 2^-10)·|W'_rj| for the BF16 rounding of W·s. Each check asserts
// error ≤ bound element by element, and a looser global one: max error ≤ 1e-2 · max |value|.
// Negative controls run the same checks on unfolded parameters and on a fold that multiplies by
// s instead of dividing, and require them to fail.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <random>
#include <set>

#include "base/elementwise.hpp"
#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "formats/safetensors_writer.hpp"
#include "math/smoothing.hpp"
#include "pack/fold_smoothing.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using formats::Checkpoint;
using formats::DType;
using formats::TensorRef;

const std::string kLm = "paligemma_with_expert.paligemma.model.language_model.layers.0";
const std::string kExpert = "paligemma_with_expert.gemma_expert.model.layers.0";
const std::string kVision = "paligemma_with_expert.paligemma.model.vision_tower.vision_model.encoder.layers.0";

constexpr double kRound = 0x1p-8 * (1 + 0x1p-10);  // BF16 half ulp, relative, with float32 slop
constexpr double kSlop = 0x1p-20;                  // float32 arithmetic of the fold formulas
constexpr double kGlobalRel = 1e-2;                // max error / max |value|, the loose check

std::vector<float> values(const Checkpoint& c, const std::string& name) {
  const TensorRef* t = c.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<float> v(t->numel);
  c.read_f32(*t, v);
  return v;
}

std::vector<std::byte> raw(const Checkpoint& c, const std::string& name) {
  const TensorRef* t = c.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  const auto b = c.bytes(*t);
  return {b.begin(), b.end()};
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Deterministic uniform numbers (mt19937's output is fixed by the standard; the conversion is ours).
class Rng {
 public:
  explicit Rng(std::uint32_t seed) : g_(seed) {}
  double uniform() { return static_cast<double>(g_() >> 8) * 0x1p-24; }  // [0, 1)
  double symmetric(double scale) { return (2 * uniform() - 1) * scale; }
  // log-uniform in [0.25, 4]
  float scale() { return static_cast<float>(std::exp2(4 * uniform() - 2)); }

 private:
  std::mt19937 g_;
};

// ---------------------------------------------------------------------------------------------
// Reference norms in double, with the rounding bound of their (folded) parameters.

struct NormParams {
  NormKind kind{};
  std::vector<float> w, b;  // gemma: w [I]; layer_norm: w [I], b [I] or empty; ada: w [3I, C], b [3I]
  std::size_t cond = 0;     // C for ada
};

struct NormOut {
  std::vector<double> y;    // the norm's output
  std::vector<double> err;  // bound on |y − ideal| from the rounding of the parameters
  std::vector<double> mag;  // the magnitude of the sum behind y (for double slop)
};

std::vector<double> normalized(NormKind kind, const std::vector<double>& x) {
  const double n = static_cast<double>(x.size());
  double mean = 0;
  if (kind == NormKind::layer_norm) {
    for (double v : x) mean += v;
    mean /= n;
  }
  double var = 0;
  for (double v : x) var += (v - mean) * (v - mean);
  const double r = 1 / std::sqrt(var / n + 1e-6);
  std::vector<double> h(x.size());
  for (std::size_t j = 0; j < x.size(); ++j) h[j] = (x[j] - mean) * r;
  return h;
}

// Rounding bound of a folded parameter p whose formula has a "1 +" in it (gemma w, ada scale bias).
double err_one_plus(double p) { return kRound * std::fabs(p) + kSlop * (std::fabs(1 + p) + 1); }
double err_plain(double p) { return kRound * std::fabs(p) + kSlop * std::fabs(p); }

NormOut apply_norm(const NormParams& p, const std::vector<double>& x, const std::vector<double>& cond) {
  const std::size_t n = x.size();
  const std::vector<double> h = normalized(p.kind, x);
  NormOut o{std::vector<double>(n), std::vector<double>(n), std::vector<double>(n)};
  for (std::size_t j = 0; j < n; ++j) {
    switch (p.kind) {
      case NormKind::gemma_rms:
        o.y[j] = h[j] * (1 + double(p.w[j]));
        o.err[j] = std::fabs(h[j]) * err_one_plus(p.w[j]);
        o.mag[j] = std::fabs(o.y[j]);
        break;
      case NormKind::layer_norm: {
        const double b = p.b.empty() ? 0.0 : double(p.b[j]);
        o.y[j] = h[j] * double(p.w[j]) + b;
        o.err[j] = std::fabs(h[j]) * err_plain(p.w[j]) + err_plain(b);
        o.mag[j] = std::fabs(h[j] * double(p.w[j])) + std::fabs(b);
        break;
      }
      case NormKind::ada_rms: {
        // modulation = dense(cond): scale = row j, shift = row n + j (gate rows 2n.. unused here).
        double scale = p.b[j], shift = p.b[n + j];
        double e_scale = err_one_plus(p.b[j]), e_shift = err_plain(p.b[n + j]);
        double m_scale = std::fabs(scale), m_shift = std::fabs(shift);
        for (std::size_t c = 0; c < p.cond; ++c) {
          const double ws = p.w[j * p.cond + c], wh = p.w[(n + j) * p.cond + c];
          scale += ws * cond[c];
          shift += wh * cond[c];
          e_scale += std::fabs(cond[c]) * err_plain(ws);
          e_shift += std::fabs(cond[c]) * err_plain(wh);
          m_scale += std::fabs(ws * cond[c]);
          m_shift += std::fabs(wh * cond[c]);
        }
        o.y[j] = h[j] * (1 + scale) + shift;
        o.err[j] = std::fabs(h[j]) * e_scale + e_shift;
        o.mag[j] = std::fabs(h[j]) * (1 + m_scale) + m_shift;
        break;
      }
    }
  }
  return o;
}

NormParams read_norm(const Checkpoint& c, const SmoothGroup& g) {
  NormParams p;
  p.kind = *g.norm;
  p.w = values(c, g.norm_weight);
  if (!g.norm_bias.empty()) p.b = values(c, g.norm_bias);
  if (p.kind == NormKind::ada_rms) p.cond = c.find(g.norm_weight)->shape[1];
  return p;
}

struct CheckResult {
  double worst_ratio = 0;  // max over elements of |error| / bound (≤ 1 passes)
  double worst_rel = 0;    // max |error| / max |value|
};

// Random inputs (and conditions) through the original norm, divided by s, against `folded`.
CheckResult check_norm(const NormParams& orig, const NormParams& folded, const std::vector<float>& s, Rng& rng) {
  CheckResult r;
  const std::size_t n = s.size();
  for (int token = 0; token < 8; ++token) {
    std::vector<double> x(n), cond(orig.cond);
    for (double& v : x) v = rng.symmetric(3.0);
    for (double& v : cond) v = rng.symmetric(2.0);
    const NormOut a = apply_norm(orig, x, cond);
    const NormOut f = apply_norm(folded, x, cond);
    double max_err = 0, max_val = 0;
    for (std::size_t j = 0; j < n; ++j) {
      const double want = a.y[j] / s[j];
      const double e = std::fabs(f.y[j] - want);
      const double bound = f.err[j] + 1e-12 * (f.mag[j] + a.mag[j] / s[j]) + 1e-300;
      r.worst_ratio = std::max(r.worst_ratio, e / bound);
      max_err = std::max(max_err, e);
      max_val = std::max(max_val, std::fabs(want));
    }
    r.worst_rel = std::max(r.worst_rel, max_err / max_val);
  }
  return r;
}

// A wrong fold, in memory: multiplies by s where the right one divides.
NormParams multiplied(const NormParams& p, const std::vector<float>& s) {
  NormParams q = p;
  const std::size_t n = s.size();
  auto bf = [](float v) { return elementwise::bf16_to_f32(elementwise::f32_to_bf16(v)); };
  switch (p.kind) {
    case NormKind::gemma_rms:
      for (std::size_t j = 0; j < n; ++j) q.w[j] = bf((1 + p.w[j]) * s[j] - 1);
      break;
    case NormKind::layer_norm:
      for (std::size_t j = 0; j < n; ++j) q.w[j] = bf(p.w[j] * s[j]);
      for (std::size_t j = 0; j < q.b.size(); ++j) q.b[j] = bf(p.b[j] * s[j]);
      break;
    case NormKind::ada_rms:
      for (std::size_t j = 0; j < 2 * n; ++j) {
        for (std::size_t c = 0; c < p.cond; ++c) q.w[j * p.cond + c] = bf(p.w[j * p.cond + c] * s[j % n]);
        q.b[j] = j < n ? bf((1 + p.b[j]) * s[j] - 1) : bf(p.b[j] * s[j - n]);
      }
      break;
  }
  return q;
}

// norm → linear: original norm and weight against the folded ones, for every member.
CheckResult check_composition(const NormParams& orig, const NormParams& folded, const std::vector<float>& w,
                              const std::vector<float>& w_folded, std::size_t rows, const std::vector<float>& s,
                              Rng& rng) {
  CheckResult r;
  const std::size_t n = s.size();
  for (int token = 0; token < 4; ++token) {
    std::vector<double> x(n), cond(orig.cond);
    for (double& v : x) v = rng.symmetric(3.0);
    for (double& v : cond) v = rng.symmetric(2.0);
    const NormOut a = apply_norm(orig, x, cond);
    const NormOut f = apply_norm(folded, x, cond);
    double max_err = 0, max_val = 0;
    for (std::size_t row = 0; row < rows; ++row) {
      double y = 0, yf = 0, bound = 0, mag = 0;
      for (std::size_t j = 0; j < n; ++j) {
        const double wf = w_folded[row * n + j];
        y += double(w[row * n + j]) * a.y[j];
        yf += wf * f.y[j];
        bound += std::fabs(wf) * f.err[j] + std::fabs(a.y[j] / s[j]) * kRound * std::fabs(wf);
        mag += std::fabs(wf * f.y[j]) + std::fabs(double(w[row * n + j]) * a.y[j]);
      }
      const double e = std::fabs(yf - y);
      r.worst_ratio = std::max(r.worst_ratio, e / (bound + 1e-12 * mag + 1e-300));
      max_err = std::max(max_err, e);
      max_val = std::max(max_val, std::fabs(y));
    }
    r.worst_rel = std::max(r.worst_rel, max_err / max_val);
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// The fixture, folded once per test.

struct Folded {
  Checkpoint orig;
  std::vector<LinearLayer> linears;
  std::vector<SmoothGroup> groups;
  std::map<std::string, std::vector<float>> scales;
  fs::path path;
  Checkpoint out;
};

const std::vector<std::string> kFoldedKeys = {kLm + ".input_layernorm",     kLm + ".post_attention_layernorm",
                                              kExpert + ".input_layernorm", kExpert + ".post_attention_layernorm",
                                              kVision + ".layer_norm1",     kVision + ".layer_norm2"};

const SmoothGroup& group(const std::vector<SmoothGroup>& groups, const std::string& key) {
  for (const SmoothGroup& g : groups)
    if (g.key == key) return g;
  throw std::runtime_error("no group " + key);
}

std::vector<SmoothGroup> all_groups(const Checkpoint& ckpt, const std::vector<LinearLayer>& linears) {
  std::vector<SelectedLayer> sel;
  for (const LinearLayer& l : linears) sel.push_back({&l, 4});
  return smoothing_groups(ckpt, linears, sel);
}

Folded fold_fixture(const fs::path& dir) {
  Checkpoint orig = Checkpoint::open(test::tiny_checkpoint());
  std::vector<LinearLayer> linears = find_linear_layers(orig);
  std::vector<SmoothGroup> groups = all_groups(orig, linears);
  std::map<std::string, std::vector<float>> scales;
  Rng rng(20240611);
  for (const std::string& key : kFoldedKeys) {
    const SmoothGroup& g = group(groups, key);
    std::vector<float> s(orig.find(g.layers.front() + ".weight")->shape[1]);
    for (float& v : s) v = rng.scale();
    scales[key] = s;
  }
  const fs::path path = dir / "folded.safetensors";
  write_folded_checkpoint(orig, groups, scales, path);
  Checkpoint out = Checkpoint::open(path);
  return {std::move(orig), std::move(linears), std::move(groups), std::move(scales), path, std::move(out)};
}

TEST(FoldSmoothing, GroupsOfTheFixtureHaveTheExpectedNorms) {
  const Folded f = fold_fixture(test::temp_dir());
  EXPECT_EQ(group(f.groups, kFoldedKeys[0]).norm, NormKind::gemma_rms);
  EXPECT_EQ(group(f.groups, kFoldedKeys[1]).norm, NormKind::gemma_rms);
  EXPECT_EQ(group(f.groups, kFoldedKeys[2]).norm, NormKind::ada_rms);
  EXPECT_EQ(group(f.groups, kFoldedKeys[3]).norm, NormKind::ada_rms);
  EXPECT_EQ(group(f.groups, kFoldedKeys[4]).norm, NormKind::layer_norm);
  EXPECT_EQ(group(f.groups, kFoldedKeys[5]).norm, NormKind::layer_norm);
}

TEST(FoldSmoothing, FoldedNormOutputIsTheOriginalDividedByS) {
  const Folded f = fold_fixture(test::temp_dir());
  Rng rng(7);
  for (const std::string& key : kFoldedKeys) {
    const SmoothGroup& g = group(f.groups, key);
    const std::vector<float>& s = f.scales.at(key);
    const NormParams orig = read_norm(f.orig, g), folded = read_norm(f.out, g);
    const CheckResult ok = check_norm(orig, folded, s, rng);
    EXPECT_LE(ok.worst_ratio, 1.0) << key;
    EXPECT_LE(ok.worst_rel, kGlobalRel) << key;
    // Negative controls: the unfolded norm, and a fold that multiplies, fail both checks.
    const CheckResult unfolded = check_norm(orig, orig, s, rng);
    const CheckResult wrong = check_norm(orig, multiplied(orig, s), s, rng);
    EXPECT_GT(unfolded.worst_ratio, 10.0) << key;
    EXPECT_GT(unfolded.worst_rel, kGlobalRel) << key;
    EXPECT_GT(wrong.worst_ratio, 10.0) << key;
    EXPECT_GT(wrong.worst_rel, kGlobalRel) << key;
    std::printf("  %-90s bound ratio %.3f, rel %.2e (unfolded %.2e, multiplied %.2e)\n", key.c_str(), ok.worst_ratio,
                ok.worst_rel, unfolded.worst_rel, wrong.worst_rel);
  }
}

TEST(FoldSmoothing, AdaptiveNormGateRowsKeepTheirBytes) {
  const Folded f = fold_fixture(test::temp_dir());
  for (const std::string& key : {kFoldedKeys[2], kFoldedKeys[3]}) {
    const SmoothGroup& g = group(f.groups, key);
    const std::size_t n = f.scales.at(key).size();
    const std::vector<std::byte> w0 = raw(f.orig, g.norm_weight), w1 = raw(f.out, g.norm_weight);
    const std::vector<std::byte> b0 = raw(f.orig, g.norm_bias), b1 = raw(f.out, g.norm_bias);
    ASSERT_EQ(w0.size(), w1.size());
    ASSERT_EQ(b0.size(), 3 * n * 2);  // BF16
    const std::size_t gate_w = w0.size() / 3 * 2, gate_b = b0.size() / 3 * 2;
    EXPECT_TRUE(std::equal(w0.begin() + gate_w, w0.end(), w1.begin() + gate_w)) << key;
    EXPECT_TRUE(std::equal(b0.begin() + gate_b, b0.end(), b1.begin() + gate_b)) << key;
    EXPECT_FALSE(std::equal(w0.begin(), w0.begin() + gate_w, w1.begin())) << key;
    EXPECT_FALSE(std::equal(b0.begin(), b0.begin() + gate_b, b1.begin())) << key;
  }
}

// The language model's gate/up ([1024, 128]) are larger than one chunk of the writer (2^16
// elements), so this also covers a tensor recomputed in several chunks.
TEST(FoldSmoothing, MemberWeightsAreTheSmoothedWeightBitForBit) {
  const Folded f = fold_fixture(test::temp_dir());
  int members = 0;
  for (const std::string& key : kFoldedKeys) {
    const SmoothGroup& g = group(f.groups, key);
    for (const std::string& layer : g.layers) {
      const TensorRef& t = *f.orig.find(layer + ".weight");
      const std::vector<float> w = values(f.orig, t.name), folded = values(f.out, t.name);
      const auto rows = static_cast<std::int64_t>(t.shape[0]), cols = static_cast<std::int64_t>(t.shape[1]);
      EXPECT_TRUE(same_bits(folded, smoothed_weight(w, rows, cols, f.scales.at(key), DType::BF16))) << layer;
      EXPECT_FALSE(same_bits(folded, w)) << layer;
      ++members;
    }
  }
  EXPECT_EQ(members, 3 + 2 + 3 + 2 + 3 + 1);
}

TEST(FoldSmoothing, NormThenLinearIsUnchangedUpToRounding) {
  const Folded f = fold_fixture(test::temp_dir());
  Rng rng(11);
  for (const std::string& key : kFoldedKeys) {
    const SmoothGroup& g = group(f.groups, key);
    const std::vector<float>& s = f.scales.at(key);
    const NormParams orig = read_norm(f.orig, g), folded = read_norm(f.out, g);
    for (const std::string& layer : g.layers) {
      const std::size_t rows = f.orig.find(layer + ".weight")->shape[0];
      const std::vector<float> w = values(f.orig, layer + ".weight"), wf = values(f.out, layer + ".weight");
      const CheckResult ok = check_composition(orig, folded, w, wf, rows, s, rng);
      EXPECT_LE(ok.worst_ratio, 1.0) << layer;
      EXPECT_LE(ok.worst_rel, kGlobalRel) << layer;
      // Negative control: the folded weight behind the unfolded norm.
      const CheckResult half = check_composition(orig, orig, w, wf, rows, s, rng);
      EXPECT_GT(half.worst_ratio, 10.0) << layer;
      EXPECT_GT(half.worst_rel, kGlobalRel) << layer;
      std::printf("  %-90s bound ratio %.3f, rel %.2e (half-folded %.2e)\n", layer.c_str(), ok.worst_ratio,
                  ok.worst_rel, half.worst_rel);
    }
  }
}

TEST(FoldSmoothing, EveryOtherTensorIsCopiedByteForByte) {
  const Folded f = fold_fixture(test::temp_dir());
  std::set<std::string> modified;
  for (const std::string& key : kFoldedKeys) {
    const SmoothGroup& g = group(f.groups, key);
    modified.insert(g.norm_weight);
    if (!g.norm_bias.empty()) modified.insert(g.norm_bias);
    for (const std::string& l : g.layers) modified.insert(l + ".weight");
  }
  EXPECT_EQ(modified.size(), 6u + 2u + 14u);  // 4 gemma/LN weights, 2 ada (weight + bias), 14 members
  ASSERT_EQ(f.out.files().size(), 1u);
  EXPECT_EQ(f.out.files()[0].metadata, f.orig.files()[0].metadata);
  EXPECT_EQ(f.out.files()[0].metadata.at("format"), "pt");
  const auto& a = f.orig.tensors();
  const auto& b = f.out.tensors();
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(a.size(), 82u);
  std::set<std::string> differing;
  for (std::size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name) << i;
    EXPECT_EQ(a[i].dtype, b[i].dtype) << a[i].name;
    EXPECT_EQ(a[i].shape, b[i].shape) << a[i].name;
    const auto x = f.orig.bytes(a[i]), y = f.out.bytes(b[i]);
    ASSERT_EQ(x.size(), y.size()) << a[i].name;
    if (!std::equal(x.begin(), x.end(), y.begin())) differing.insert(a[i].name);
  }
  EXPECT_EQ(differing, modified);
}

TEST(FoldSmoothing, NoScalesIsAByteCopyOfEveryTensor) {
  const auto dir = test::temp_dir();
  const Checkpoint orig = Checkpoint::open(test::tiny_checkpoint());
  const auto linears = find_linear_layers(orig);
  write_folded_checkpoint(orig, all_groups(orig, linears), {}, dir / "copy.safetensors");
  const Checkpoint out = Checkpoint::open(dir / "copy.safetensors");
  ASSERT_EQ(out.tensors().size(), orig.tensors().size());
  for (std::size_t i = 0; i < orig.tensors().size(); ++i) {
    const auto x = orig.bytes(orig.tensors()[i]), y = out.bytes(out.tensors()[i]);
    EXPECT_EQ(out.tensors()[i].name, orig.tensors()[i].name);
    EXPECT_TRUE(x.size() == y.size() && std::equal(x.begin(), x.end(), y.begin())) << orig.tensors()[i].name;
  }
}

// ---------------------------------------------------------------------------------------------
// A hand-made sharded checkpoint with F32, F16 and BF16 tensors: exact values.

struct Tensor {
  std::string name;
  DType dtype;
  std::vector<std::uint64_t> shape;
  std::vector<float> v;  // rounded to the dtype when written; I8 as integers
};

void write_file(const fs::path& path, const std::vector<Tensor>& tensors,
                const std::map<std::string, std::string>& metadata) {
  std::vector<formats::TensorSpec> specs;
  for (const Tensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  formats::SafetensorsWriter w(path, specs, metadata);
  for (const Tensor& t : tensors) {
    std::vector<std::byte> bytes(formats::TensorSpec{t.name, t.dtype, t.shape}.nbytes());
    for (std::size_t i = 0; i < t.v.size(); ++i) {
      std::uint16_t h = 0;
      switch (t.dtype) {
        case DType::F32: std::memcpy(&bytes[4 * i], &t.v[i], 4); break;
        case DType::F16:
          h = elementwise::f32_to_f16(t.v[i]);
          std::memcpy(&bytes[2 * i], &h, 2);
          break;
        case DType::BF16:
          h = elementwise::f32_to_bf16(t.v[i]);
          std::memcpy(&bytes[2 * i], &h, 2);
          break;
        default: bytes[i] = static_cast<std::byte>(static_cast<std::int8_t>(t.v[i])); break;
      }
    }
    w.write(bytes);
  }
  w.commit();
}

Tensor random_tensor(const std::string& name, DType dtype, std::vector<std::uint64_t> shape, Rng& rng, double scale) {
  std::uint64_t n = 1;
  for (std::uint64_t d : shape) n *= d;
  Tensor t{name, dtype, std::move(shape), std::vector<float>(n)};
  for (float& v : t.v) v = static_cast<float>(rng.symmetric(scale));
  return t;
}

// Two shards and an index; returns the index path.
fs::path write_sharded(const fs::path& dir, Rng& rng) {
  write_file(dir / "model-00001-of-00002.safetensors",
             {random_tensor("a.self_attn.q_proj.weight", DType::F16, {6, 4}, rng, 1.0),
              random_tensor("a.input_layernorm.weight", DType::F32, {4}, rng, 0.5),
              random_tensor("a.self_attn.k_proj.weight", DType::F32, {2, 4}, rng, 1.0),
              {"counts", DType::I8, {3}, {1, -2, 3}},
              random_tensor("e.self_attn.q_proj.weight", DType::F32, {3, 4}, rng, 1.0),
              random_tensor("e.input_layernorm.dense.weight", DType::F32, {12, 2}, rng, 1.0),
              random_tensor("e.input_layernorm.dense.bias", DType::F32, {12}, rng, 1.0)},
             {{"format", "pt"}, {"shard", "1"}});
  write_file(dir / "model-00002-of-00002.safetensors",
             {random_tensor("a.mlp.gate_proj.weight", DType::BF16, {5, 4}, rng, 1.0),
              random_tensor("a.mlp.up_proj.weight", DType::F16, {5, 4}, rng, 1.0),
              random_tensor("a.post_attention_layernorm.weight", DType::F16, {4}, rng, 0.5),
              random_tensor("b.self_attn.q_proj.weight", DType::F32, {3, 4}, rng, 1.0),
              random_tensor("b.self_attn.q_proj.bias", DType::F32, {3}, rng, 1.0),
              random_tensor("b.layer_norm1.weight", DType::F16, {4}, rng, 1.0),
              random_tensor("b.layer_norm1.bias", DType::BF16, {4}, rng, 1.0)},
             {{"format", "pt"}, {"shard", "2"}, {"extra", "x"}});
  std::string index = R"({"metadata": {"total_size": 0}, "weight_map": {)";
  bool first = true;
  for (const char* shard : {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}) {
    const Checkpoint c = Checkpoint::open(dir / shard);
    for (const TensorRef& t : c.tensors()) {
      index += (first ? "\"" : ", \"") + t.name + "\": \"" + shard + "\"";
      first = false;
    }
  }
  index += "}}";
  std::ofstream(dir / "model.safetensors.index.json") << index;
  return dir / "model.safetensors.index.json";
}

TEST(FoldSmoothing, ShardedCheckpointWithEveryFloatDtype) {
  const auto dir = test::temp_dir();
  fs::create_directories(dir / "in");
  Rng rng(3);
  const Checkpoint orig = Checkpoint::open(write_sharded(dir / "in", rng));
  ASSERT_EQ(orig.files().size(), 2u);
  const auto linears = find_linear_layers(orig);
  const auto groups = all_groups(orig, linears);
  std::map<std::string, std::vector<float>> scales;
  for (const char* key : {"a.input_layernorm", "a.post_attention_layernorm", "b.layer_norm1", "e.input_layernorm"}) {
    std::vector<float> s(4);
    for (float& v : s) v = rng.scale();
    scales[key] = s;
  }
  EXPECT_EQ(group(groups, "e.input_layernorm").norm, NormKind::ada_rms);
  EXPECT_EQ(group(groups, "b.layer_norm1").norm_bias, "b.layer_norm1.bias");
  write_folded_checkpoint(orig, groups, scales, dir / "out.safetensors");
  const Checkpoint out = Checkpoint::open(dir / "out.safetensors");

  // One file, every tensor in the input's order (shards by name, then offset), the shards'
  // metadata joined (the first shard wins "shard").
  ASSERT_EQ(out.files().size(), 1u);
  EXPECT_EQ(out.files()[0].metadata,
            (std::map<std::string, std::string>{{"format", "pt"}, {"shard", "1"}, {"extra", "x"}}));
  ASSERT_EQ(out.tensors().size(), orig.tensors().size());
  for (std::size_t i = 0; i < orig.tensors().size(); ++i) {
    EXPECT_EQ(out.tensors()[i].name, orig.tensors()[i].name);
    EXPECT_EQ(out.tensors()[i].dtype, orig.tensors()[i].dtype);
    EXPECT_EQ(out.tensors()[i].shape, orig.tensors()[i].shape);
  }
  EXPECT_EQ(raw(out, "counts"), raw(orig, "counts"));
  EXPECT_EQ(raw(out, "b.self_attn.q_proj.bias"), raw(orig, "b.self_attn.q_proj.bias"));

  auto f16 = [](float v) { return elementwise::f16_to_f32(elementwise::f32_to_f16(v)); };
  auto bf16 = [](float v) { return elementwise::bf16_to_f32(elementwise::f32_to_bf16(v)); };
  // Members: smoothed_weight in each one's dtype.
  const std::map<std::string, std::pair<std::string, DType>> members = {
      {"a.self_attn.q_proj", {"a.input_layernorm", DType::F16}},
      {"a.self_attn.k_proj", {"a.input_layernorm", DType::F32}},
      {"a.mlp.gate_proj", {"a.post_attention_layernorm", DType::BF16}},
      {"a.mlp.up_proj", {"a.post_attention_layernorm", DType::F16}},
      {"b.self_attn.q_proj", {"b.layer_norm1", DType::F32}},
      {"e.self_attn.q_proj", {"e.input_layernorm", DType::F32}}};
  for (const auto& [layer, how] : members) {
    const TensorRef& t = *orig.find(layer + ".weight");
    const std::vector<float> sw =
        smoothed_weight(values(orig, t.name), static_cast<std::int64_t>(t.shape[0]),
                        static_cast<std::int64_t>(t.shape[1]), scales.at(how.first), how.second);
    EXPECT_TRUE(same_bits(values(out, t.name), sw)) << layer;
    EXPECT_FALSE(same_bits(values(out, t.name), values(orig, t.name))) << layer;
  }
  // Norms: the formulas in float32, rounded to each tensor's dtype.
  const std::vector<float>& sa = scales.at("a.input_layernorm");
  const std::vector<float>& sp = scales.at("a.post_attention_layernorm");
  const std::vector<float>& sb = scales.at("b.layer_norm1");
  const std::vector<float>& se = scales.at("e.input_layernorm");
  std::vector<float> want(4);
  const auto w_in = values(orig, "a.input_layernorm.weight");
  for (int j = 0; j < 4; ++j) want[j] = (1.0f + w_in[j]) / sa[j] - 1.0f;  // F32
  EXPECT_TRUE(same_bits(values(out, "a.input_layernorm.weight"), want));
  const auto w_post = values(orig, "a.post_attention_layernorm.weight");
  for (int j = 0; j < 4; ++j) want[j] = f16((1.0f + w_post[j]) / sp[j] - 1.0f);
  EXPECT_TRUE(same_bits(values(out, "a.post_attention_layernorm.weight"), want));
  const auto ln_w = values(orig, "b.layer_norm1.weight"), ln_b = values(orig, "b.layer_norm1.bias");
  for (int j = 0; j < 4; ++j) want[j] = f16(ln_w[j] / sb[j]);
  EXPECT_TRUE(same_bits(values(out, "b.layer_norm1.weight"), want));
  for (int j = 0; j < 4; ++j) want[j] = bf16(ln_b[j] / sb[j]);
  EXPECT_TRUE(same_bits(values(out, "b.layer_norm1.bias"), want));
  // Adaptive: rows 0..3 scale, 4..7 shift, 8..11 gate.
  const auto dw = values(orig, "e.input_layernorm.dense.weight"), db = values(orig, "e.input_layernorm.dense.bias");
  std::vector<float> want_w(24), want_b(12);
  for (int r = 0; r < 12; ++r) {
    for (int c = 0; c < 2; ++c) want_w[r * 2 + c] = r < 8 ? dw[r * 2 + c] / se[r % 4] : dw[r * 2 + c];
    want_b[r] = r < 4 ? (1.0f + db[r]) / se[r] - 1.0f : r < 8 ? db[r] / se[r - 4] : db[r];
  }
  EXPECT_TRUE(same_bits(values(out, "e.input_layernorm.dense.weight"), want_w));
  EXPECT_TRUE(same_bits(values(out, "e.input_layernorm.dense.bias"), want_b));
}

TEST(FoldSmoothing, AdaptiveNormSpanningSeveralChunks) {
  // [384, 384] F32: the writer's chunks of 2^16 elements hold 170 rows, so chunk borders fall
  // inside the shift block (row 170) and inside the gate block (row 340).
  const auto dir = test::temp_dir();
  Rng rng(9);
  constexpr int kI = 128, kC = 384;
  write_file(dir / "in.safetensors",
             {random_tensor("x.self_attn.q_proj.weight", DType::BF16, {8, kI}, rng, 1.0),
              random_tensor("x.input_layernorm.dense.weight", DType::F32, {3 * kI, kC}, rng, 1.0),
              random_tensor("x.input_layernorm.dense.bias", DType::F32, {3 * kI}, rng, 1.0)},
             {});
  const Checkpoint orig = Checkpoint::open(dir / "in.safetensors");
  std::vector<float> s(kI);
  for (float& v : s) v = rng.scale();
  write_folded_checkpoint(orig, all_groups(orig, find_linear_layers(orig)), {{"x.input_layernorm", s}},
                          dir / "out.safetensors");
  const Checkpoint out = Checkpoint::open(dir / "out.safetensors");
  const auto dw = values(orig, "x.input_layernorm.dense.weight"), db = values(orig, "x.input_layernorm.dense.bias");
  std::vector<float> want_w(dw.size()), want_b(db.size());
  for (int r = 0; r < 3 * kI; ++r) {
    for (int c = 0; c < kC; ++c) want_w[r * kC + c] = r < 2 * kI ? dw[r * kC + c] / s[r % kI] : dw[r * kC + c];
    want_b[r] = r < kI ? (1.0f + db[r]) / s[r] - 1.0f : r < 2 * kI ? db[r] / s[r - kI] : db[r];
  }
  EXPECT_TRUE(same_bits(values(out, "x.input_layernorm.dense.weight"), want_w));
  EXPECT_TRUE(same_bits(values(out, "x.input_layernorm.dense.bias"), want_b));
  EXPECT_TRUE(same_bits(values(out, "x.self_attn.q_proj.weight"),
                        smoothed_weight(values(orig, "x.self_attn.q_proj.weight"), 8, kI, s, DType::BF16)));
}

// ---------------------------------------------------------------------------------------------
// Refusals

template <typename F>
std::string error_of(ErrorKind want, F&& f) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), want) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no duquant::Error";
  return {};
}

bool has(const std::string& message, const std::string& part) { return message.find(part) != std::string::npos; }

// Nothing under `dir` but the listed entries (no output, no temporary left behind).
void expect_only(const fs::path& dir, std::set<std::string> names) {
  std::set<std::string> found;
  for (const auto& e : fs::directory_iterator(dir)) found.insert(e.path().filename().string());
  EXPECT_EQ(found, names);
}

TEST(FoldSmoothing, RefusesToOverwriteTheInput) {
  const auto dir = test::temp_dir();
  fs::copy_file(test::tiny_checkpoint(), dir / "in.safetensors");
  fs::create_symlink(dir / "in.safetensors", dir / "link.safetensors");
  const Checkpoint ckpt = Checkpoint::open(dir / "in.safetensors");
  const auto before = raw(ckpt, kLm + ".input_layernorm.weight");
  const auto linears = find_linear_layers(ckpt);
  const auto groups = all_groups(ckpt, linears);
  const std::map<std::string, std::vector<float>> scales = {{kLm + ".input_layernorm", std::vector<float>(128, 2.0f)}};
  for (const fs::path& p : {dir / "in.safetensors", dir / "." / "in.safetensors", dir / "link.safetensors"}) {
    const std::string m = error_of(ErrorKind::usage, [&] { write_folded_checkpoint(ckpt, groups, scales, p); });
    EXPECT_TRUE(has(m, "in.safetensors")) << m;
  }
  expect_only(dir, {"in.safetensors", "link.safetensors"});
  EXPECT_EQ(raw(Checkpoint::open(dir / "in.safetensors"), kLm + ".input_layernorm.weight"), before);

  // A shard of a sharded checkpoint, and its index.
  fs::create_directories(dir / "sharded");
  Rng rng(5);
  const Checkpoint sharded = Checkpoint::open(write_sharded(dir / "sharded", rng));
  const auto sg = all_groups(sharded, find_linear_layers(sharded));
  for (const char* name : {"model-00002-of-00002.safetensors", "model.safetensors.index.json"})
    error_of(ErrorKind::usage, [&] { write_folded_checkpoint(sharded, sg, {}, dir / "sharded" / name); });
}

TEST(FoldSmoothing, RefusesBadScales) {
  const auto dir = test::temp_dir();
  const Checkpoint ckpt = Checkpoint::open(test::tiny_checkpoint());
  const auto linears = find_linear_layers(ckpt);
  const auto groups = all_groups(ckpt, linears);
  const fs::path out = dir / "out.safetensors";
  const std::string key = kLm + ".input_layernorm";
  auto run = [&](const std::string& k, std::vector<float> s) {
    write_folded_checkpoint(ckpt, groups, {{k, std::move(s)}}, out);
  };
  // A group without a norm.
  std::string m = error_of(ErrorKind::internal, [&] { run(kLm + ".self_attn.o_proj", std::vector<float>(128, 1.0f)); });
  EXPECT_TRUE(has(m, kLm + ".self_attn.o_proj")) << m;
  // No such group.
  m = error_of(ErrorKind::internal, [&] { run("no.such.norm", std::vector<float>(128, 1.0f)); });
  EXPECT_TRUE(has(m, "no.such.norm")) << m;
  // Wrong length.
  m = error_of(ErrorKind::internal, [&] { run(key, std::vector<float>(127, 1.0f)); });
  EXPECT_TRUE(has(m, key) && has(m, "127") && has(m, "128")) << m;
  // Not positive and finite.
  for (float bad : {0.0f, -1.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    std::vector<float> s(128, 1.0f);
    s[77] = bad;
    m = error_of(ErrorKind::numeric, [&] { run(key, s); });
    EXPECT_TRUE(has(m, key) && has(m, "channel 77")) << m;
  }
  // Groups that do not belong to this checkpoint.
  std::vector<SmoothGroup> alien = groups;
  for (SmoothGroup& g : alien)
    if (g.key == key) g.norm_weight = "missing.weight";
  m = error_of(ErrorKind::internal, [&] {
    write_folded_checkpoint(ckpt, alien, {{key, std::vector<float>(128, 1.0f)}}, out);
  });
  EXPECT_TRUE(has(m, "missing.weight")) << m;
  alien = groups;
  alien.push_back(alien.front());
  error_of(ErrorKind::internal, [&] { write_folded_checkpoint(ckpt, alien, {}, out); });
  expect_only(dir, {});
}

TEST(FoldSmoothing, RefusesAValueThatOverflowsItsDtype) {
  const auto dir = test::temp_dir();
  // An F16 norm weight of 1: (1 + 1)/1e-4 − 1 ≈ 2e4 fits, (1 + 1)/1e-5 − 1 ≈ 2e5 does not.
  write_file(dir / "in.safetensors",
             {{"a.self_attn.q_proj.weight", DType::F32, {2, 2}, {1, 2, 3, 4}},
              {"a.input_layernorm.weight", DType::F16, {2}, {1, 1}}},
             {});
  const Checkpoint ckpt = Checkpoint::open(dir / "in.safetensors");
  const auto groups = all_groups(ckpt, find_linear_layers(ckpt));
  write_folded_checkpoint(ckpt, groups, {{"a.input_layernorm", {1e-4f, 1.0f}}}, dir / "fits.safetensors");
  EXPECT_TRUE(std::isfinite(values(Checkpoint::open(dir / "fits.safetensors"), "a.input_layernorm.weight")[0]));
  const std::string m = error_of(ErrorKind::numeric, [&] {
    write_folded_checkpoint(ckpt, groups, {{"a.input_layernorm", {1.0f, 1e-5f}}}, dir / "out.safetensors");
  });
  EXPECT_TRUE(has(m, "a.input_layernorm.weight") && has(m, "element 1") && has(m, "F16")) << m;
  expect_only(dir, {"in.safetensors", "fits.safetensors"});
}

TEST(FoldSmoothing, RefusesAMemberWeightThatIsNotFloat) {
  const auto dir = test::temp_dir();
  write_file(dir / "in.safetensors",
             {{"a.self_attn.q_proj.weight", DType::F32, {2, 2}, {1, 2, 3, 4}},
              {"a.self_attn.k_proj.weight", DType::I8, {2, 2}, {1, 2, 3, 4}},
              {"a.input_layernorm.weight", DType::F32, {2}, {1, 1}}},
             {});
  const Checkpoint ckpt = Checkpoint::open(dir / "in.safetensors");
  const auto groups = all_groups(ckpt, find_linear_layers(ckpt));
  ASSERT_EQ(group(groups, "a.input_layernorm").layers.size(), 2u);
  const std::string m = error_of(ErrorKind::format, [&] {
    write_folded_checkpoint(ckpt, groups, {{"a.input_layernorm", {2.0f, 2.0f}}}, dir / "out.safetensors");
  });
  EXPECT_TRUE(has(m, "a.self_attn.k_proj.weight") && has(m, "I8")) << m;
  expect_only(dir, {"in.safetensors"});
}

}  // namespace
}  // namespace duquant

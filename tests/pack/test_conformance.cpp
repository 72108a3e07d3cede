// Conformance vectors (conformance.hpp, docs/pack-format.md "Conformance vectors"): the inputs are
// a pinned N(0, 1) stream; the pack output equals x Wᵀ + b when codes × scales is exactly the
// transformed weight (every row_rot mode, several block sizes and odd widths); packs made by the
// CLI carry test_x / test_y_fp / test_y_q that are recomputed here from the checkpoint and from
// the pack's own tensors, and the same bytes for one and two threads.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "base/elementwise.hpp"
#include "common/child_process.hpp"
#include "duquant/error.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "math/conformance.hpp"
#include "math/duquant_math.hpp"

namespace duquant {
namespace {
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// 1. Inputs

TEST(ConformanceInputs, FirstValuesArePinned) {
  // Computed independently (Python, integers and math.log/cos in double) from the generator as
  // docs/pack-format.md specifies it.
  const float golden[8] = {-0x1.3ee7b6p+0f, 0x1.617126p+0f, 0x1.832530p-2f,  -0x1.c6a266p-2f,
                           -0x1.6bb2c8p-5f, 0x1.6fb6f4p-1f, -0x1.0024cap-1f, -0x1.060ee8p+0f};
  const std::vector<float> x = conformance_inputs(2, 4);
  ASSERT_EQ(x.size(), 8u);
  for (int k = 0; k < 8; ++k) EXPECT_EQ(x[k], golden[k]) << k;
}

TEST(ConformanceInputs, CounterBasedAndDeterministic) {
  const std::vector<float> a = conformance_inputs(4, 37), b = conformance_inputs(4, 37);
  EXPECT_EQ(a, b);
  // Element k depends on k alone: a [1, 148] call gives the same values, row-major.
  EXPECT_EQ(conformance_inputs(1, 4 * 37), a);
  EXPECT_TRUE(conformance_inputs(0, 5).empty());
}

TEST(ConformanceInputs, StandardNormalStatistics) {
  const std::int64_t n = 1 << 20;
  const std::vector<float> x = conformance_inputs(1, n);
  double sum = 0, sum2 = 0, sum4 = 0;
  std::int64_t within1 = 0;
  for (float v : x) {
    ASSERT_TRUE(std::isfinite(v));
    sum += v;
    sum2 += static_cast<double>(v) * v;
    sum4 += static_cast<double>(v) * v * v * v;
    within1 += std::abs(v) < 1.0f ? 1 : 0;
  }
  const double mean = sum / n, var = sum2 / n - mean * mean, kurt = sum4 / n;
  std::printf("[ inputs   ] n=%lld mean %.5f var %.5f E[x^4] %.4f P(|x|<1) %.5f\n", static_cast<long long>(n), mean,
              var, kurt, static_cast<double>(within1) / n);
  EXPECT_LT(std::abs(mean), 0.005);       // sd of the mean: 0.001
  EXPECT_LT(std::abs(var - 1.0), 0.01);   // sd: 0.0014
  EXPECT_LT(std::abs(kurt - 3.0), 0.05);  // sd: about 0.01
  EXPECT_LT(std::abs(static_cast<double>(within1) / n - 0.682689), 0.003);
}

// ---------------------------------------------------------------------------------------------
// 2. The math on exact weights

TEST(ConformanceMath, ReferenceOutputByHand) {
  const std::vector<float> x{1, 2, 3, -1, 0.5f, 2};   // [2, 3]
  const std::vector<float> w{1, 0, 2, -1, 4, 0.25f};  // [2, 3]
  const std::vector<float> b{0.5f, -1};
  const std::vector<float> y = conformance_reference_output(x, 2, WeightView{w.data(), 2, 3}, b);
  // row 0: [1+6, -1+8+0.75] + b; row 1: [-1+4, 1+2+0.5] + b
  EXPECT_EQ(y, (std::vector<float>{7.5f, 6.75f, 3.5f, 2.5f}));
  EXPECT_EQ(conformance_reference_output(x, 2, WeightView{w.data(), 2, 3}, {}),
            (std::vector<float>{7, 7.75f, 3, 3.5f}));
}

// Rotations as the pack makes them (eigenvectors of a random Gram matrix), at true widths.
std::vector<MatrixF> random_rotations(std::int64_t n, std::int64_t block, std::mt19937& rng) {
  std::normal_distribution<double> nd;
  std::vector<MatrixF> out;
  for (std::int64_t b = 0; b < block_count(n, block); ++b) {
    const std::int64_t s = block_width(n, block, b);
    Eigen::MatrixXd a(s + 3, s);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = nd(rng);
    out.push_back(eigen_rotation(a.transpose() * a));
  }
  return out;
}

Eigen::MatrixXd block_diag(const std::vector<MatrixF>& blocks, std::int64_t n) {
  Eigen::MatrixXd m = Eigen::MatrixXd::Zero(n, n);
  std::int64_t at = 0;
  for (const MatrixF& r : blocks) {
    m.block(at, at, r.rows(), r.cols()) = r.cast<double>();
    at += r.rows();
  }
  return m;
}

struct Case {
  std::int64_t o, i, block, block_out;
};

// Codes × scales is W_t exactly; W is built from it by undoing the transform
// (W[:, perm] = Routᵀ · W_t · Rinᵀ per block), so the pack output must be x Wᵀ + b up to float
// rounding of W. In propagate mode the output is in the rotated basis: y · Rout undoes it.
void expect_exact(const Case& c, RowRot mode, bool permute, std::uint32_t seed) {
  SCOPED_TRACE(fmt::format("O={} I={} block={} block_out={} row_rot={} permute={}", c.o, c.i, c.block, c.block_out,
                           row_rot_name(mode), permute));
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> code(-8, 7);
  std::uniform_real_distribution<float> scale(0.01f, 0.2f), bias_d(-1.0f, 1.0f);
  std::vector<std::int8_t> codes(static_cast<std::size_t>(c.o * c.i));
  for (auto& q : codes) q = static_cast<std::int8_t>(code(rng));
  std::vector<float> scales(static_cast<std::size_t>(c.o)), bias(static_cast<std::size_t>(c.o));
  for (auto& s : scales) s = scale(rng);
  for (auto& b : bias) b = bias_d(rng);
  std::vector<std::int64_t> perm(static_cast<std::size_t>(c.i));
  for (std::int64_t j = 0; j < c.i; ++j) perm[j] = j;
  if (permute) std::shuffle(perm.begin(), perm.end(), rng);
  const std::vector<MatrixF> r_in = random_rotations(c.i, c.block, rng);
  const std::vector<MatrixF> r_out =
      mode == RowRot::off ? std::vector<MatrixF>{} : random_rotations(c.o, c.block_out, rng);

  Eigen::MatrixXd wt(c.o, c.i);
  for (std::int64_t r = 0; r < c.o; ++r)
    for (std::int64_t j = 0; j < c.i; ++j) wt(r, j) = static_cast<double>(codes[r * c.i + j]) * scales[r];
  const Eigen::MatrixXd rout = mode == RowRot::off ? Eigen::MatrixXd::Identity(c.o, c.o) : block_diag(r_out, c.o);
  const Eigen::MatrixXd wp = rout.transpose() * wt * block_diag(r_in, c.i).transpose();
  std::vector<float> w(static_cast<std::size_t>(c.o * c.i));
  for (std::int64_t r = 0; r < c.o; ++r)
    for (std::int64_t j = 0; j < c.i; ++j) w[r * c.i + perm[j]] = static_cast<float>(wp(r, j));

  const std::vector<float> x = conformance_inputs(kConformanceRows, c.i);
  const std::vector<float> ref =
      conformance_reference_output(x, kConformanceRows, WeightView{w.data(), c.o, c.i}, bias);
  const std::span<const std::int64_t> p =
      permute ? std::span<const std::int64_t>(perm) : std::span<const std::int64_t>();
  std::vector<float> got =
      conformance_pack_output(x, kConformanceRows, c.o, c.i, p, r_in, codes, scales, r_out, mode, bias);
  ASSERT_EQ(got.size(), ref.size());
  if (mode == RowRot::propagate) {  // undo the rotation: y · Rout per row block
    for (std::int64_t r = 0; r < kConformanceRows; ++r) {
      const Eigen::RowVectorXd row =
          Eigen::Map<const Eigen::RowVectorXf>(got.data() + r * c.o, c.o).cast<double>() * rout;
      for (std::int64_t o = 0; o < c.o; ++o) got[r * c.o + o] = static_cast<float>(row[o]);
    }
  }
  double max_ref = 0, max_diff = 0;
  for (std::size_t k = 0; k < ref.size(); ++k) {
    max_ref = std::max(max_ref, std::abs(static_cast<double>(ref[k])));
    max_diff = std::max(max_diff, std::abs(static_cast<double>(got[k]) - ref[k]));
  }
  EXPECT_GT(max_ref, 0.1);
  EXPECT_LE(max_diff, 1e-5 * max_ref) << "max |Δ| " << max_diff << " of max |y| " << max_ref;
}

TEST(ConformanceMath, PackOutputEqualsReferenceWhenQuantizationIsExact) {
  const std::vector<Case> cases{{29, 37, 8, 8}, {48, 64, 16, 16}, {33, 70, 32, 16}, {5, 40, 16, 16},
                                {3, 7, 8, 32},  {64, 19, 32, 32}, {17, 100, 16, 8}};
  std::uint32_t seed = 1;
  for (const Case& c : cases)
    for (RowRot mode : {RowRot::restore, RowRot::off, RowRot::propagate})
      for (bool permute : {true, false}) expect_exact(c, mode, permute, seed++);
}

// The tolerance above is tight enough to see a wrong convention: Rout instead of Routᵀ for the
// propagated bias is caught (a check that the check can fail).
TEST(ConformanceMath, PropagateRotatesTheBiasIntoTheRotatedBasis) {
  const std::vector<float> x{0, 0};  // x = 0: the output is the (rotated) bias alone
  const std::vector<std::int8_t> codes{1, 2, 3, 4};
  const std::vector<float> scales{1, 1}, bias{1, 2};
  MatrixF r_in = MatrixF::Identity(2, 2), r_out(2, 2);
  r_out << 0, 1, -1, 0;  // rotation by 90 degrees: b · Routᵀ = [b0·0 + b1·1, -b0 + 0] = [2, -1]
  const auto y = conformance_pack_output(x, 1, 2, 2, {}, {r_in}, codes, scales, {r_out}, RowRot::propagate, bias);
  EXPECT_EQ(y, (std::vector<float>{2, -1}));
  const auto restored = conformance_pack_output(x, 1, 2, 2, {}, {r_in}, codes, scales, {r_out}, RowRot::restore, bias);
  EXPECT_EQ(restored, bias);
  // restore on a nonzero input: y_t = [1·1 + 1·2, 1·3 + 1·4] = [3, 7]; · Rout = [-7, 3]; + b.
  const std::vector<float> ones{1, 1};
  EXPECT_EQ(conformance_pack_output(ones, 1, 2, 2, {}, {r_in}, codes, scales, {r_out}, RowRot::restore, bias),
            (std::vector<float>{-6, 5}));
}

TEST(ConformanceMath, RejectsInconsistentShapes) {
  const std::vector<float> x(4, 1.0f), scales{1, 1}, bias{0, 0};
  const std::vector<std::int8_t> codes{1, 2, 3, 4};
  const std::vector<MatrixF> r{MatrixF::Identity(2, 2)};
  const std::vector<std::int64_t> bad_perm{0, 2};
  EXPECT_THROW(conformance_pack_output(x, 2, 2, 2, bad_perm, r, codes, scales, {}, RowRot::off, bias), Error);
  EXPECT_THROW(conformance_pack_output(x, 2, 2, 2, {}, r, codes, scales, {}, RowRot::restore, bias), Error);
  EXPECT_THROW(conformance_pack_output(x, 2, 2, 2, {}, r, codes, scales, r, RowRot::off, bias), Error);
  EXPECT_THROW(conformance_pack_output(x, 2, 2, 2, {}, {MatrixF::Identity(1, 1)}, codes, scales, {}, RowRot::off, bias),
               Error);
  EXPECT_THROW(conformance_pack_output(x, 3, 2, 2, {}, r, codes, scales, {}, RowRot::off, bias), Error);
  EXPECT_NO_THROW(conformance_pack_output(x, 2, 2, 2, {}, r, codes, scales, {}, RowRot::off, bias));
}

// ---------------------------------------------------------------------------------------------
// 3. Packs made by the CLI

std::vector<float> read_f32(const formats::Checkpoint& ck, const std::string& name) {
  const auto* t = ck.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<float> v(t->numel);
  ck.read_f32(*t, v);
  return v;
}

// Stacked, identity-padded [n, B, B] rotations back to true widths.
std::vector<MatrixF> unstack(const formats::Checkpoint& ck, const std::string& name, std::int64_t n) {
  const auto* t = ck.find(name);
  std::vector<MatrixF> out;
  if (t == nullptr) return out;
  const std::vector<float> v = read_f32(ck, name);
  const auto b = static_cast<std::int64_t>(t->shape[1]);
  for (std::int64_t k = 0; k < block_count(n, b); ++k) {
    const std::int64_t s = block_width(n, b, k);
    const Eigen::Map<const MatrixF> full(v.data() + k * b * b, b, b);
    out.push_back(full.topLeftCorner(s, s));
  }
  return out;
}

double rel_norm(const std::vector<float>& a, const std::vector<float>& b) {
  double d2 = 0, n2 = 0;
  for (std::size_t k = 0; k < a.size(); ++k) {
    d2 += (static_cast<double>(a[k]) - b[k]) * (static_cast<double>(a[k]) - b[k]);
    n2 += static_cast<double>(b[k]) * b[k];
  }
  return std::sqrt(d2 / n2);
}

void check_pack(const fs::path& out, RowRot mode, std::size_t expect_layers, bool expect_bias) {
  const nlohmann::json m = nlohmann::json::parse(test::read_text(out / "manifest.json"));
  const auto ckpt = formats::Checkpoint::open(test::tiny_checkpoint());
  const auto q = formats::Checkpoint::open(out / "quantized.safetensors");
  ASSERT_EQ(m.at("layers").size(), expect_layers);
  const int wbits = m.at("config").at("wbits_default").get<int>();
  bool saw_bias = false;
  for (const auto& l : m.at("layers")) {
    const std::string name = l.at("name");
    SCOPED_TRACE(name);
    const std::int64_t o = l.at("shape")[0], i = l.at("shape")[1];
    for (const char* t : {".test_x", ".test_y_fp", ".test_y_q"}) {
      const auto* ref = q.find(name + t);
      ASSERT_NE(ref, nullptr) << t;
      EXPECT_EQ(ref->dtype, formats::DType::F32) << t;
      const std::uint64_t cols = std::string(t) == ".test_x" ? i : o;
      EXPECT_EQ(ref->shape, (std::vector<std::uint64_t>{4, cols})) << t;
    }
    const std::vector<float> x = read_f32(q, name + ".test_x");
    EXPECT_EQ(x, conformance_inputs(kConformanceRows, i));

    // test_y_fp from the checkpoint, recomputed.
    const std::vector<float> w = read_f32(ckpt, name + ".weight");
    std::vector<float> bias;
    if (ckpt.find(name + ".bias") != nullptr) {
      bias = read_f32(ckpt, name + ".bias");
      saw_bias = true;
    }
    const std::vector<float> y_fp = read_f32(q, name + ".test_y_fp");
    EXPECT_EQ(y_fp, conformance_reference_output(x, kConformanceRows, WeightView{w.data(), o, i}, bias));

    // test_y_q from the pack's tensors as stored.
    const auto* qw = q.find(name + ".qweight");
    ASSERT_NE(qw, nullptr);
    const auto bytes = q.bytes(*qw);
    std::vector<std::int8_t> codes(static_cast<std::size_t>(o * i));
    for (std::int64_t r = 0; r < o; ++r)
      for (std::int64_t c = 0; c < i; ++c) {
        if (wbits <= 4) {
          const auto byte = static_cast<unsigned char>(bytes[static_cast<std::size_t>(r * ((i + 1) / 2) + c / 2)]);
          codes[r * i + c] =
              static_cast<std::int8_t>(c % 2 ? elementwise::unpack_high(byte) : elementwise::unpack_low(byte));
        } else {
          codes[r * i + c] = static_cast<std::int8_t>(bytes[static_cast<std::size_t>(r * i + c)]);
        }
      }
    const std::vector<float> scales = read_f32(q, name + ".scales");
    std::vector<std::int64_t> perm;
    if (const auto* p = q.find(name + ".perm")) {
      perm.resize(p->numel);
      std::memcpy(perm.data(), q.bytes(*p).data(), p->numel * sizeof(std::int64_t));
    }
    const std::vector<MatrixF> r_in = unstack(q, name + ".R_in", i), r_out = unstack(q, name + ".R_out", o);
    EXPECT_EQ(r_out.empty(), mode == RowRot::off);
    const std::vector<float> y_q = read_f32(q, name + ".test_y_q");
    EXPECT_EQ(y_q, conformance_pack_output(x, kConformanceRows, o, i, perm, r_in, codes, scales, r_out, mode, bias));

    // Independently, with dense float64 matrices: y = ((x P) Rin (q s)ᵀ) [Rout] + b [· Routᵀ].
    Eigen::MatrixXd X(kConformanceRows, i), P = Eigen::MatrixXd::Zero(i, i), QS(o, i);
    for (std::int64_t r = 0; r < kConformanceRows; ++r)
      for (std::int64_t c = 0; c < i; ++c) X(r, c) = x[r * i + c];
    for (std::int64_t j = 0; j < i; ++j) P(perm.empty() ? j : perm[j], j) = 1;
    for (std::int64_t r = 0; r < o; ++r)
      for (std::int64_t c = 0; c < i; ++c) QS(r, c) = codes[r * i + c] * static_cast<double>(scales[r]);
    Eigen::MatrixXd Y = X * P * block_diag(r_in, i) * QS.transpose();
    Eigen::RowVectorXd B = Eigen::RowVectorXd::Zero(o);
    for (std::size_t k = 0; k < bias.size(); ++k) B[static_cast<Eigen::Index>(k)] = bias[k];
    if (mode == RowRot::restore) Y = Y * block_diag(r_out, o);
    if (mode == RowRot::propagate) B = B * block_diag(r_out, o).transpose();
    Y.rowwise() += B;
    double max_y = 0, max_d = 0;
    for (std::int64_t r = 0; r < kConformanceRows; ++r)
      for (std::int64_t c = 0; c < o; ++c) {
        max_y = std::max(max_y, std::abs(Y(r, c)));
        max_d = std::max(max_d, std::abs(Y(r, c) - y_q[r * o + c]));
      }
    EXPECT_LE(max_d, 1e-5 * max_y + 1e-7) << max_d << " of " << max_y;

    // The manifest's figure, and a sane quantization error where y_q and y_fp share a basis.
    const auto& conf = l.at("conformance");
    EXPECT_EQ(conf.at("rows"), 4);
    const double rel = rel_norm(y_q, y_fp);
    EXPECT_NEAR(conf.at("rel_error_q_vs_fp").get<double>(), rel, 1e-12 * rel);
    if (mode != RowRot::propagate) {
      EXPECT_LT(rel, wbits <= 4 ? 0.5 : 0.05);
      EXPECT_GT(rel, 1e-4);
    }
  }
  EXPECT_EQ(saw_bias, expect_bias);
}

test::CliResult pack(const fs::path& out, std::vector<std::string> extra) {
  std::vector<std::string> args{"pack", test::tiny_checkpoint().string(), "-o", out.string()};
  args.insert(args.end(), extra.begin(), extra.end());
  return test::run_cli(args);
}

const char* kVision = "paligemma_with_expert.paligemma.model.vision_tower.";

TEST(ConformancePack, OpenpiDitRestoreSameBytesForOneAndTwoThreads) {
  const fs::path dir = test::temp_dir();
  for (const char* t : {"1", "2"}) {
    const auto r = pack(dir / t, {"--preset", "openpi-dit", "--threads", t});
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  }
  EXPECT_TRUE(test::read_text(dir / "1" / "quantized.safetensors") ==
              test::read_text(dir / "2" / "quantized.safetensors"));
  EXPECT_EQ(test::read_text(dir / "1" / "manifest.json"), test::read_text(dir / "2" / "manifest.json"));
  check_pack(dir / "1", RowRot::restore, 14, false);
}

TEST(ConformancePack, VisionTowerWithBiasPropagateBlock8) {
  const fs::path out = test::temp_dir() / "out";
  const auto r = pack(out, {"--scope", kVision, "--row-rot", "propagate", "--block", "8"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  check_pack(out, RowRot::propagate, 12, true);
}

TEST(ConformancePack, VisionTowerWithBiasNoRowRotNoPermuteW8Block32) {
  const fs::path out = test::temp_dir() / "out";
  const auto r =
      pack(out, {"--scope", kVision, "--row-rot", "0", "--no-permute", "--wbits-default", "8", "--block", "32"});
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  check_pack(out, RowRot::off, 12, true);
}

}  // namespace
}  // namespace duquant

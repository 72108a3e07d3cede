// Bad and awkward values and shapes: each case either packs and verifies clean against its
// checkpoint (`duquant verify -c`, exit 0), or is refused with the documented exit code and a
// message naming the layer or setting. docs/reliability.md has the same table.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "robustness/robustness_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;

struct ValueCase {
  std::string name;
  std::uint64_t rows, cols;
  std::vector<std::string> args;                  // pack options
  std::function<void(std::vector<float>&)> edit;  // applied to the pattern values
  int expected_exit;                              // 0: packs and verifies clean
  std::string expected_message;                   // for a refusal
};

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();

void nothing(std::vector<float>&) {}

std::vector<ValueCase> cases() {
  std::vector<ValueCase> c;
  auto add = [&](std::string name, std::uint64_t rows, std::uint64_t cols, std::vector<std::string> args,
                 std::function<void(std::vector<float>&)> edit, int code, std::string message = "") {
    c.push_back({std::move(name), rows, cols, std::move(args), std::move(edit), code, std::move(message)});
  };
  // Non-finite weights: a numeric error naming the layer and the position.
  add(
      "NaN", 32, 64, {}, [](auto& v) { v[5 * 64 + 9] = kNaN; }, 6, "[5, 9]");
  add(
      "PlusInf", 32, 64, {}, [](auto& v) { v[31 * 64 + 63] = kInf; }, 6, "[31, 63]");
  add(
      "MinusInf", 32, 64, {}, [](auto& v) { v[0] = -kInf; }, 6, "[0, 0]");
  // Degenerate values.
  add(
      "AllZeroLayer", 32, 64, {}, [](auto& v) { std::fill(v.begin(), v.end(), 0.0f); }, 0);
  add(
      "ZeroRows", 32, 64, {}, [](auto& v) { std::fill(v.begin() + 3 * 64, v.begin() + 9 * 64, 0.0f); }, 0);
  add(
      "ZeroColumns", 32, 64, {},
      [](auto& v) {
        for (std::size_t r = 0; r < 32; ++r) v[r * 64 + 7] = v[r * 64 + 8] = 0.0f;
      },
      0);
  add(
      "ConstantLayer", 32, 64, {}, [](auto& v) { std::fill(v.begin(), v.end(), 0.5f); }, 0);
  add(
      "OneSubnormal", 32, 64, {}, [](auto& v) { v[70] = 1e-41f; }, 0);
  add(
      "TinyValues", 32, 64, {},
      [](auto& v) {
        for (auto& x : v) x *= 1e-12f;
      },
      0);
  add(
      "LargeValues", 32, 64, {},
      [](auto& v) {
        for (auto& x : v) x *= 1e10f;
      },
      0);
  // Magnitudes float32 cannot carry through the math (kLargestWeightMagnitude, kSmallestLargestWeight).
  add(
      "AllSubnormal", 32, 64, {},
      [](auto& v) {
        for (auto& x : v) x *= 1e-41f;
      },
      6, "too small");
  add(
      "BelowTheSmallestLargest", 32, 64, {},
      [](auto& v) {
        for (auto& x : v) x *= 1e-17f;
      },
      6, "too small");
  add(
      "HugeValues", 32, 64, {},
      [](auto& v) {
        for (auto& x : v) x *= 1e37f;
      },
      6, "too large");
  add(
      "FloatMax", 32, 64, {}, [](auto& v) { v[17] = std::numeric_limits<float>::max(); }, 6, "[0, 17]");
  // Shapes.
  add("SingleColumn", 32, 1, {}, nothing, 0);
  add("SingleRow", 1, 64, {}, nothing, 0);
  add("OneByOne", 1, 1, {}, nothing, 0);
  add("InputSmallerThanBlock", 32, 8, {}, nothing, 0);
  add("OutputSmallerThanBlock", 4, 64, {}, nothing, 0);
  add("InputNotAMultipleOfTheBlock", 32, 40, {}, nothing, 0);
  add("OddInputWidth", 32, 33, {}, nothing, 0);
  add("OddOutputWidth", 17, 64, {}, nothing, 0);
  add("OddBoth", 19, 37, {"--block", "8"}, nothing, 0);
  // Bits.
  for (int bits : {2, 3, 4, 5, 6, 7, 8})
    add("Wbits" + std::to_string(bits), 32, 64, {"--wbits-default", std::to_string(bits)}, nothing, 0);
  add("Wbits1", 32, 64, {"--wbits-default", "1"}, nothing, 2, "--wbits-default");
  add("Wbits9", 32, 64, {"--wbits-default", "9"}, nothing, 2, "--wbits-default");
  add("Abits2", 32, 64, {"--abits", "2"}, nothing, 0);
  add("Abits1", 32, 64, {"--abits", "1"}, nothing, 2, "--abits");
  // Block sizes.
  for (int block : {1, 2, 3, 5, 7, 16, 31, 64, 100, 128, 256})
    add("Block" + std::to_string(block), 24, 96, {"--block", std::to_string(block)}, nothing, 0);
  add("Block256Full", 16, 256, {"--block", "256"}, nothing, 0);
  add("BlockOut1", 24, 96, {"--block-out", "1"}, nothing, 0);
  add("BlockOut3", 24, 96, {"--block-out", "3"}, nothing, 0);
  add("Block0", 24, 96, {"--block", "0"}, nothing, 2, "--block");
  add("BlockNegative", 24, 96, {"--block", "-4"}, nothing, 2, "--block");
  add("BlockTooLarge", 24, 96, {"--block", "4097"}, nothing, 2, "--block");
  return c;
}

void PrintTo(const ValueCase& c, std::ostream* os) { *os << c.name; }

class BadValues : public ::testing::TestWithParam<ValueCase> {};

TEST_P(BadValues, PacksAndVerifiesCleanOrIsRefusedClearly) {
  const ValueCase& vc = GetParam();
  const fs::path dir = test::temp_dir();
  std::vector<float> values = test::pattern_values(vc.rows, vc.cols, 7);
  vc.edit(values);
  const fs::path ckpt =
      test::write_f32_checkpoint(dir / "model.safetensors", {{"blk.q_proj", vc.rows, vc.cols, values}});
  const fs::path out = dir / "pack";
  std::vector<std::string> args{"pack", ckpt.string(), "-o", out.string()};
  args.insert(args.end(), vc.args.begin(), vc.args.end());
  const test::CliResult r = test::run_cli(args);
  if (vc.expected_exit == 0) {
    ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
    const test::CliResult v = test::run_cli({"verify", out.string(), "-c", ckpt.string()});
    EXPECT_EQ(v.exit_code, 0) << v.out << v.err;
  } else {
    EXPECT_EQ(r.exit_code, vc.expected_exit) << r.out << r.err;
    EXPECT_TRUE(test::contains(r.err, vc.expected_message)) << r.err;
    if (vc.expected_exit == 6) {
      EXPECT_TRUE(test::contains(r.err, "blk.q_proj")) << r.err;
    }
    EXPECT_FALSE(fs::exists(out / "manifest.json"));
  }
}

INSTANTIATE_TEST_SUITE_P(Table, BadValues, ::testing::ValuesIn(cases()),
                         [](const auto& info) { return info.param.name; });

}  // namespace
}  // namespace duquant

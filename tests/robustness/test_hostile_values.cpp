// Hostile values a checkpoint, a pack or a command line can carry (issue 16, second round): names
// of absurd length, zero and absurd dimensions, limits that must be met before any work (npz
// members, NaN/Inf biases, thread counts), Python `re` inline flags, npz members in any order, and
// a manifest whose configuration does not compile. Each case checks the documented exit code and
// that the message names the thing. docs/reliability.md has the table.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/regex.hpp"
#include "duquant/error.hpp"
#include "formats/npy.hpp"
#include "formats/npz.hpp"
#include "formats/safetensors_header.hpp"
#include "robustness/robustness_util.hpp"
#include "select/module_order.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;
using test::contains;
using test::run_cli;

struct RawTensor {
  std::string name;
  std::vector<std::uint64_t> shape;
  std::vector<float> values;  // F32, numel of the shape (empty for a zero-size tensor)
};

// A safetensors file written byte by byte (no validation), so that a test can store any shape.
fs::path write_raw(const fs::path& path, const std::vector<RawTensor>& tensors) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::string data;
  for (const RawTensor& t : tensors) {
    const std::uint64_t begin = data.size();
    data.append(reinterpret_cast<const char*>(t.values.data()), t.values.size() * sizeof(float));
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  std::string file(8, '\0');
  const std::uint64_t n = text.size();
  std::memcpy(file.data(), &n, 8);
  file += text;
  file += data;
  std::ofstream(path, std::ios::binary) << file;
  return path;
}

class Hostile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / (std::string("duquant-hostile-").append(std::to_string(::getpid())).append("-") +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

// A name of `parts` parts "a" joined by dots, then ".weight".
std::string dotted(std::size_t parts) {
  std::string s;
  s.reserve(2 * parts + 8);
  for (std::size_t i = 0; i < parts; ++i) s += i == 0 ? "a" : ".a";
  return s + ".weight";
}

// ---------------------------------------------------------------------------------------------
// 1. Names: limits on length and parts, and no recursion over name parts.

TEST_F(Hostile, NameOf400000PartsIsAFormatErrorInEveryCommand) {
  const fs::path ckpt = write_raw(dir_ / "deep.safetensors", {{dotted(400'000), {2, 2}, {1, 2, 3, 4}}});
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"list-linears", ckpt.string()},
        {"inspect", ckpt.string()},
        {"pack", ckpt.string(), "-o", (dir_ / "out").string(), "--include", "a"}}) {
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 3) << args[0] << ": " << r.err;
    EXPECT_TRUE(contains(r.err, "a name of 800006 bytes; at most 4096")) << args[0] << ": " << r.err;
    EXPECT_TRUE(contains(r.err, "tensor 'a.a.a.a.")) << r.err;  // named by its start
    EXPECT_LT(r.err.size(), 2000u) << "the message must not repeat the whole name";
  }
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(Hostile, NameOfTooManyPartsWithinTheByteLimitIsRefused) {
  const std::string name = dotted(formats::kMaxTensorNameParts);  // + ".weight": one part more
  ASSERT_LE(name.size(), formats::kMaxTensorNameBytes);
  const fs::path ckpt = write_raw(dir_ / "parts.safetensors", {{name, {2, 2}, {1, 2, 3, 4}}});
  const auto r = run_cli({"list-linears", ckpt.string(), "--include", "a"});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_TRUE(contains(r.err, "a name of 257 dot-separated parts; at most 256")) << r.err;
}

TEST_F(Hostile, NameOverTheByteLimitIsRefusedAndOneAtTheLimitsIsRead) {
  const std::string long_name =
      std::string("blk.").append(formats::kMaxTensorNameBytes - 10, 'x').append(".weight");  // 4097 bytes
  ASSERT_EQ(long_name.size(), formats::kMaxTensorNameBytes + 1);
  const auto r =
      run_cli({"list-linears", write_raw(dir_ / "long.safetensors", {{long_name, {2, 2}, {1, 2, 3, 4}}}).string()});
  EXPECT_EQ(r.exit_code, 3) << r.err;
  EXPECT_TRUE(contains(r.err, "a name of 4097 bytes")) << r.err;
  EXPECT_TRUE(contains(r.err, "tensor 'blk.xxxx")) << r.err;

  // Exactly at both limits (4096 bytes, 256 parts): an ordinary layer.
  std::string name = dotted(formats::kMaxTensorNameParts - 1);  // 256 parts with ".weight"
  name.insert(0, std::string(formats::kMaxTensorNameBytes - name.size(), 'q'));
  ASSERT_EQ(name.size(), formats::kMaxTensorNameBytes);
  const auto ok =
      run_cli({"list-linears", write_raw(dir_ / "edge.safetensors", {{name, {2, 2}, {1, 2, 3, 4}}}).string(),
               "--include", "a$", "--json"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
  EXPECT_TRUE(contains(ok.out, "\"layers\": 1")) << ok.out;
}

TEST(HostileNames, ModuleOrderIsIterativeOver200000Parts) {
  // No recursion over parts (the walk and the tree's destruction): a name of 200,000 parts (a recursive walk needs
  // tens of MB of stack), beside short ones, orders without exhausting the stack.
  std::vector<std::string> names{"b.1", dotted(200'000), "b.0", "a.2", "a.10"};
  const std::vector<std::size_t> order = module_order(names);
  EXPECT_EQ(order, (std::vector<std::size_t>{2, 0, 1, 3, 4}));
}

// ---------------------------------------------------------------------------------------------
// 2. Zero and absurd dimensions: refused where the layer is selected, before any work.

struct ShapeCase {
  const char* label;
  std::uint64_t rows, cols;
  const char* shape_text;
};

TEST_F(Hostile, ZeroAndAbsurdDimensionsAreRefusedBeforeAnyWork) {
  const std::uint64_t huge = std::uint64_t{1} << 62;
  const ShapeCase cases[] = {{"32x0", 32, 0, "[32, 0]"},
                             {"0x0", 0, 0, "[0, 0]"},
                             {"0x64", 0, 64, "[0, 64]"},
                             {"0xhuge", 0, huge, "[0, 4611686018427387904]"},
                             {"hugex0", huge, 0, "[4611686018427387904, 0]"}};
  for (const ShapeCase& c : cases) {
    SCOPED_TRACE(c.label);
    const fs::path ckpt = write_raw(
        dir_ / (std::string(c.label) + ".safetensors"),
        {{"blk.q_proj.weight", {c.rows, c.cols}, {}}, {"blk.k_proj.weight", {4, 8}, test::pattern_values(4, 8, 3)}});
    const fs::path out = dir_ / (std::string(c.label) + "-out");
    for (const std::vector<std::string>& args : {std::vector<std::string>{"list-linears", ckpt.string()},
                                                 {"list-linears", ckpt.string(), "--json"},
                                                 {"pack", ckpt.string(), "-o", out.string()}}) {
      const auto r = run_cli(args);
      EXPECT_EQ(r.exit_code, 3) << args[0] << ": " << r.err;
      EXPECT_TRUE(contains(r.err, std::string("layer 'blk.q_proj': weight shape ").append(c.shape_text))) << r.err;
    }
    EXPECT_FALSE(fs::exists(out)) << "nothing is created";
    // Not selected: the other layer lists; inspect describes the checkpoint without crashing.
    const auto other = run_cli({"list-linears", ckpt.string(), "--include", "k_proj"});
    EXPECT_EQ(other.exit_code, 0) << other.err;
    const auto inspect = run_cli({"inspect", ckpt.string(), "--json"});
    EXPECT_EQ(inspect.exit_code, 0) << inspect.err;
  }
}

TEST_F(Hostile, InspectWarnsAboutPresetsPackWouldRefuse) {
  // A layer every OpenPI action-expert preset selects, with a zero dimension: described, and each
  // preset that picks it warned about instead of estimated.
  const std::string expert = "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.";
  const fs::path ckpt =
      write_raw(dir_ / "p.safetensors", {{expert + "q_proj.weight", {0, std::uint64_t{1} << 62}, {}},
                                         {expert + "k_proj.weight", {4, 8}, test::pattern_values(4, 8, 6)}});
  const auto r = run_cli({"inspect", ckpt.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  const std::string all = r.out + r.err;
  EXPECT_TRUE(contains(all, "preset 'openpi-dit': `duquant pack` would refuse this selection")) << all;
  EXPECT_TRUE(contains(all, "layer '" + expert + "q_proj': weight shape [0, 4611686018427387904]")) << all;
}

// A one-layer pack without a manifest (the runtime's kind): weight_scale, meta, Rin_0/R_in_blocks,
// Rout_0/R_out_blocks, with `meta` as given.
fs::path write_runtime_npz(const fs::path& path, const std::string& meta, std::uint64_t out = 4, std::uint64_t in = 4) {
  formats::NpzWriter npz(path);
  const std::vector<float> scale(out, 0.1f);
  npz.add("weight_scale", formats::npy_f32({out}, scale));
  npz.add("meta", formats::npy_unicode_scalar(meta));
  std::vector<float> eye_in(in * in, 0.0f), eye_out(out * out, 0.0f);
  for (std::uint64_t k = 0; k < in; ++k) eye_in[k * in + k] = 1.0f;
  for (std::uint64_t k = 0; k < out; ++k) eye_out[k * out + k] = 1.0f;
  const std::vector<std::int64_t> zero{0};
  npz.add("Rin_0", formats::npy_f32({in, in}, eye_in));
  npz.add("R_in_blocks", formats::npy_i64({1}, zero));
  npz.add("Rout_0", formats::npy_f32({out, out}, eye_out));
  npz.add("R_out_blocks", formats::npy_i64({1}, zero));
  npz.commit();
  return path;
}

TEST_F(Hostile, VerifyReportsAbsurdMetaSizesAsAFailNotOutOfMemory) {
  const fs::path pack = dir_ / "pack";
  fs::create_directories(pack);
  const struct {
    const char* file;
    const char* meta;
    const char* expected;
  } cases[] = {
      {"a.in.npz",
       R"({"in_features": 1099511627776, "out_features": 4, "block_size": 16, "block_out_size": 16, "enable_permute": false, "lambda_smooth": 0.15})",
       "in_features"},
      {"a.out.npz",
       R"({"in_features": 4, "out_features": 1099511627776, "block_size": 16, "block_out_size": 16, "enable_permute": false, "lambda_smooth": 0.15})",
       "out_features"},
      {"a.block.npz",
       R"({"in_features": 4, "out_features": 4, "block_size": 1099511627776, "block_out_size": 16, "enable_permute": false, "lambda_smooth": 0.15})",
       "block_size"},
      {"a.big.npz",
       R"({"in_features": 16777216, "out_features": 16777216, "block_size": 1, "block_out_size": 1, "enable_permute": false, "lambda_smooth": 0.15})",
       "16777216"},
  };
  for (const auto& c : cases) write_runtime_npz(pack / c.file, c.meta);
  const auto r = run_cli({"verify", pack.string(), "--json"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  const auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out << r.err;
  for (const auto& c : cases) {
    bool found = false;
    for (const auto& l : j["layers"])
      if (l["file"] == c.file) {
        EXPECT_EQ(l["result"], "FAIL") << c.file;
        found = contains(l["findings"].dump(), c.expected);
        EXPECT_TRUE(found) << c.file << ": " << l["findings"].dump();
      }
    EXPECT_TRUE(found) << c.file;
  }
}

// ---------------------------------------------------------------------------------------------
// 3. Limits met before any work.

TEST_F(Hostile, NpzMemberLimitIsCheckedInThePlan) {
  // 1 x 70000 with --block 1: 70,006 members, more than a ZIP end record counts.
  const fs::path ckpt =
      write_raw(dir_ / "wide.safetensors", {{"wide.fc1.weight", {1, 70000}, std::vector<float>(70000, 0.5f)}});
  const fs::path out = dir_ / "out";
  for (const std::vector<std::string>& args : {std::vector<std::string>{"list-linears", ckpt.string(), "--block", "1"},
                                               {"pack", ckpt.string(), "-o", out.string(), "--block", "1"}}) {
    const auto r = run_cli(args);
    EXPECT_EQ(r.exit_code, 2) << args[0] << ": " << r.err;
    EXPECT_TRUE(contains(r.err, "layer 'wide.fc1' [1, 70000]: its npz would hold 70006 members")) << r.err;
    EXPECT_TRUE(contains(r.err, "65535")) << r.err;
  }
  EXPECT_FALSE(fs::exists(out)) << "nothing is created";
  // A larger block fits.
  const auto ok = run_cli({"list-linears", ckpt.string(), "--block", "2"});
  EXPECT_EQ(ok.exit_code, 0) << ok.err;
}

TEST_F(Hostile, NpzWriterAndReaderAgreeOnExactly65535Members) {
  const fs::path path = dir_ / "full.npz";
  const std::vector<float> one{1.0f};
  const std::string npy = formats::npy_f32({1}, one);
  {
    formats::NpzWriter w(path);
    for (std::uint64_t k = 0; k < formats::kMaxNpzMembers; ++k) w.add(std::string("m").append(std::to_string(k)), npy);
    try {
      w.add("one_too_many", npy);
      ADD_FAILURE() << "member 65536 was accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::usage);
      EXPECT_TRUE(contains(e.what(), "one_too_many")) << e.what();
      EXPECT_TRUE(contains(e.what(), "65535")) << e.what();
    }
    w.commit();
  }
  const formats::NpzFile f = formats::NpzFile::open(path);
  EXPECT_EQ(f.keys().size(), formats::kMaxNpzMembers);
  EXPECT_EQ(f.keys().back(), "m65534");
}

TEST_F(Hostile, NonFiniteBiasIsANumericErrorBeforeAnyWork) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  const struct {
    const char* label;
    std::size_t at;
    float value;
    const char* text;
  } cases[] = {{"nan", 5, nan, "bias [5] is nan"},
               {"inf", 0, inf, "bias [0] is inf"},
               {"minus_inf", 31, -inf, "bias [31] is -inf"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.label);
    std::vector<float> bias(32, 0.25f);
    bias[c.at] = c.value;
    const fs::path ckpt =
        write_raw(dir_ / (std::string(c.label) + ".safetensors"),
                  {{"blk.q_proj.weight", {32, 64}, test::pattern_values(32, 64, 1)}, {"blk.q_proj.bias", {32}, bias}});
    const fs::path out = dir_ / (std::string(c.label) + "-out");
    const auto r = run_cli({"pack", ckpt.string(), "-o", out.string()});
    EXPECT_EQ(r.exit_code, 6) << r.err;
    EXPECT_TRUE(contains(r.err, std::string("layer 'blk.q_proj': ").append(c.text))) << r.err;
    EXPECT_FALSE(fs::exists(out)) << "nothing is created";
  }
}

TEST_F(Hostile, ThreadCountOutsideItsRangeIsAUsageError) {
  const fs::path ckpt =
      write_raw(dir_ / "t.safetensors", {{"blk.q_proj.weight", {4, 8}, test::pattern_values(4, 8, 2)}});
  for (const char* n : {"2147483647", "1025", "-1"}) {
    const auto p = run_cli({"pack", ckpt.string(), "-o", (dir_ / "out").string(), "--threads", n});
    EXPECT_EQ(p.exit_code, 2) << n << ": " << p.err;
    EXPECT_TRUE(contains(p.err, std::string("--threads: ").append(n).append(" threads; give 1 to 1024"))) << p.err;
    const auto v = run_cli({"verify", (dir_ / "nothing").string(), "-j", n});
    EXPECT_EQ(v.exit_code, 2) << n << ": " << v.err;
    EXPECT_TRUE(contains(v.err, "--threads")) << v.err;
  }
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

// ---------------------------------------------------------------------------------------------
// 4. Python's inline flags, npz members in any order, a manifest whose configuration is invalid.

TEST(HostileRegex, UnicodeAndAsciiInlineFlagsHavePythonSemantics) {
  const std::string e_acute = "\xc3\xa9", arabic_three = "\xd9\xa3", nbsp = "\xc2\xa0";
  EXPECT_TRUE(Regex("(?u)^\\w$", "t").search(e_acute));   // the default of str patterns
  EXPECT_FALSE(Regex("(?a)^\\w$", "t").search(e_acute));  // ASCII-only \w
  EXPECT_TRUE(Regex("(?a)^\\w+$", "t").search("q_proj9"));
  EXPECT_FALSE(Regex("(?a)\\d", "t").search(arabic_three));
  EXPECT_TRUE(Regex("\\d", "t").search(arabic_three));
  EXPECT_FALSE(Regex("(?a)\\s", "t").search(nbsp));
  EXPECT_TRUE(Regex("(?a)^\\S$", "t").search(nbsp));
  EXPECT_TRUE(Regex("(?a)^[\\W]$", "t").search(e_acute));                        // inside a set too
  EXPECT_TRUE(Regex("(?a)x\\b", "t").search(std::string("x").append(e_acute)));  // é is no word character
  EXPECT_FALSE(Regex("x\\b", "t").search(std::string("x").append(e_acute)));
  // Scoped: only inside the group.
  EXPECT_TRUE(Regex("(?a:\\w)\\w", "t").search(std::string("a").append(e_acute)));
  EXPECT_FALSE(Regex("(?a:\\w\\w)", "t").search(std::string("a").append(e_acute)));
  EXPECT_TRUE(Regex("(?a)(?u:\\w)", "t").search(e_acute));
  // Combined with other flags; a global flag after the start applies to the whole pattern.
  EXPECT_TRUE(Regex("(?ai)Q_PROJ", "t").search("layers.0.q_proj"));
  EXPECT_FALSE(Regex("\\w(?a)", "t").search(e_acute));
  // Python refuses 'a' with 'u'.
  try {
    Regex("(?au)x", "--include");
    ADD_FAILURE() << "(?au) accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_TRUE(contains(e.what(), "--include")) << e.what();
  }
}

TEST_F(Hostile, InlineFlagsSelectOnTheCommandLine) {
  const fs::path ckpt =
      write_raw(dir_ / "f.safetensors", {{"blk.q_proj.weight", {4, 8}, test::pattern_values(4, 8, 2)},
                                         {"blk.up_proj.weight", {4, 8}, test::pattern_values(4, 8, 4)}});
  for (const char* pattern : {"(?u)q_proj", "(?a)\\bq_proj$", "(?a:q)_pro(?u:j)"}) {
    const auto r = run_cli({"list-linears", ckpt.string(), "--include", pattern, "--json"});
    EXPECT_EQ(r.exit_code, 0) << pattern << ": " << r.err;
    EXPECT_TRUE(contains(r.out, "\"layers\": 1")) << pattern << ": " << r.out;
  }
}

// A member list of a stored ZIP, reordered: central-directory entries reversed.
std::string reverse_central_directory(const std::string& zip) {
  std::uint32_t cd_size = 0, cd_offset = 0;
  const std::size_t end = zip.size() - 22;
  std::memcpy(&cd_size, zip.data() + end + 12, 4);
  std::memcpy(&cd_offset, zip.data() + end + 16, 4);
  std::vector<std::string> entries;
  for (std::size_t at = cd_offset; at < cd_offset + cd_size;) {
    std::uint16_t n = 0, x = 0, c = 0;
    std::memcpy(&n, zip.data() + at + 28, 2);
    std::memcpy(&x, zip.data() + at + 30, 2);
    std::memcpy(&c, zip.data() + at + 32, 2);
    const std::size_t len = 46 + n + x + c;
    entries.push_back(zip.substr(at, len));
    at += len;
  }
  std::string out = zip.substr(0, cd_offset);
  for (auto it = entries.rbegin(); it != entries.rend(); ++it) out += *it;
  return out + zip.substr(end);
}

TEST_F(Hostile, NpzMembersInReverseOrderAreReadAsNumpyReadsThem) {
  const fs::path path = write_runtime_npz(
      dir_ / "blk.q_proj.npz",
      R"({"in_features": 4, "out_features": 4, "block_size": 16, "block_out_size": 16, "enable_permute": false, "lambda_smooth": 0.15})");
  const std::string reversed = reverse_central_directory(test::read_text(path));
  std::vector<std::byte> bytes(reversed.size());
  std::memcpy(bytes.data(), reversed.data(), reversed.size());
  const formats::NpzFile f = formats::NpzFile::parse(std::move(bytes), "reversed.npz");
  EXPECT_EQ(f.keys(),
            (std::vector<std::string>{"R_out_blocks", "Rout_0", "R_in_blocks", "Rin_0", "meta", "weight_scale"}));
  // The runtime's pack of such a file verifies.
  std::ofstream(path, std::ios::binary | std::ios::trunc) << reversed;
  const auto r = run_cli({"verify", dir_.string()});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
}

TEST_F(Hostile, ManifestWithAnInvalidExpressionIsAFailNamingTheField) {
  const fs::path ckpt =
      write_raw(dir_ / "m.safetensors", {{"blk.q_proj.weight", {8, 16}, test::pattern_values(8, 16, 5)}});
  const fs::path pack = dir_ / "pack";
  const auto p = run_cli({"pack", ckpt.string(), "-o", pack.string(), "--block", "8"});
  ASSERT_EQ(p.exit_code, 0) << p.err;
  const std::string original = test::read_text(pack / "manifest.json");
  const struct {
    const char* field;
    const char* json_path;
    nlohmann::json value;
  } cases[] = {{"config.include", "/config/include", "("},
               {"config.exclude", "/config/exclude", "[a-"},
               {"config.not_linear", "/config/not_linear", nlohmann::json::array({"(?P<x"})}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.field);
    nlohmann::ordered_json m = nlohmann::ordered_json::parse(original);
    const nlohmann::ordered_json::json_pointer ptr(c.json_path);
    m[ptr] = c.value;
    std::ofstream(pack / "manifest.json", std::ios::binary | std::ios::trunc) << m.dump(2);
    for (const bool with_checkpoint : {false, true}) {
      std::vector<std::string> args{"verify", pack.string()};
      if (with_checkpoint) args.insert(args.end(), {"-c", ckpt.string()});
      const auto r = run_cli(args);
      EXPECT_EQ(r.exit_code, 1) << r.out << r.err;
      EXPECT_TRUE(contains(r.out, c.field)) << r.out << r.err;
    }
  }
}

}  // namespace
}  // namespace duquant

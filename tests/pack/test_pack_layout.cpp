// The pack's layout (packfmt/layout.hpp): code storage per bit width and the passes over codes,
// and the size of a pack directory before packing against the directory a real pack writes.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "common/test_paths.hpp"
#include "duquant/pack.hpp"
#include "packfmt/layout.hpp"
#include "report/dryrun_report.hpp"
#include "select/checkpoint_names.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"

namespace duquant::test {
namespace {

namespace fs = std::filesystem;

std::span<const std::byte> as_bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

TEST(PackLayout, CodeStoragePerBitWidth) {
  for (int bits = kMinWeightBits; bits <= kMaxWeightBits; ++bits) {
    const CodeStorage s = code_storage(bits);
    EXPECT_EQ(s.nibbles, bits <= 4) << bits;
    EXPECT_EQ(s.dtype, bits <= 4 ? formats::DType::U8 : formats::DType::I8) << bits;
    for (std::uint64_t cols : {1, 2, 7, 8, 2049}) EXPECT_EQ(s.row_bytes(cols), bits <= 4 ? (cols + 1) / 2 : cols);
  }
}

TEST(PackLayout, NibbleOrderOfPackedCodes) {
  // Column 2k in bits 3..0 and 2k+1 in bits 7..4, each q + 8; an odd last column's high nibble is 8.
  const std::vector<std::int8_t> codes = {-8, 7, 3, /* row 1 */ 0, -1, -7};
  const std::string bytes = pack_codes(codes, 2, 3, 4);
  ASSERT_EQ(bytes.size(), 4u);
  EXPECT_EQ(static_cast<unsigned char>(bytes[0]), 0xF0);
  EXPECT_EQ(static_cast<unsigned char>(bytes[1]), 0x8B);
  EXPECT_EQ(static_cast<unsigned char>(bytes[2]), 0x78);
  EXPECT_EQ(static_cast<unsigned char>(bytes[3]), 0x81);
  EXPECT_EQ(unpack_codes(as_bytes(bytes), 2, 3, 4), codes);
  // 5-8 bits: one signed byte per code, as is.
  const std::string wide = pack_codes(codes, 2, 3, 8);
  EXPECT_EQ(wide, std::string(reinterpret_cast<const char*>(codes.data()), codes.size()));
  EXPECT_EQ(unpack_codes(as_bytes(wide), 2, 3, 8), codes);
}

TEST(PackLayout, PackAndUnpackAreInverseAtEveryWidth) {
  for (int bits = kMinWeightBits; bits <= kMaxWeightBits; ++bits)
    for (std::int64_t cols : {1, 2, 5, 16, 33}) {
      const std::int64_t rows = 3;
      const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
      std::vector<std::int8_t> codes(static_cast<std::size_t>(rows * cols));
      for (std::size_t k = 0; k < codes.size(); ++k)
        codes[k] = static_cast<std::int8_t>(lo + static_cast<int>(k * 7) % (hi - lo + 1));
      const std::string bytes = pack_codes(codes, rows, cols, bits);
      EXPECT_EQ(bytes.size(), code_storage(bits).bytes(rows, cols)) << bits << " bits, " << cols;
      EXPECT_EQ(unpack_codes(as_bytes(bytes), rows, cols, bits), codes) << bits << " bits, " << cols;
    }
}

std::uint64_t size_of(const fs::path& p) { return static_cast<std::uint64_t>(fs::file_size(p)); }

// list-linears --json's sizes against the pack that `duquant pack` writes for the same selection:
// every layer's tensor bytes and npz size, and quantized.safetensors, exactly; the whole directory
// within the manifest estimate's bound (layout.hpp: each of the 5 figures per layer that are known
// only after packing is counted as 18 characters and is written in 3 to 24, so at most 15 bytes
// off per figure, 75 bytes per layer; nothing else is estimated).
void expect_sizes_of_a_real_pack(const RunConfig& config, const std::string& what) {
  const fs::path ckpt = tiny_checkpoint();
  const OpenedCheckpoint opened = open_checkpoint(ckpt, config.naming);
  const std::vector<LinearLayer> linears = find_linear_layers(opened.checkpoint, config.selection.not_linear);
  const Selection selection = select_layers(linears, config);
  ASSERT_EQ(selection.layers.size(), 14u) << what;
  const nlohmann::ordered_json j = selection_json(selection, config, &opened, ckpt.string());

  PackOptions o;
  o.checkpoint = ckpt;
  o.output = temp_dir() / "pack";
  o.config = config;
  o.warn = [](const std::string&) {};
  o.notice = [](const std::string&) {};
  run_pack(o, [](const PackProgress&) {});

  nlohmann::json manifest;
  std::ifstream(o.output / std::string(kManifestName)) >> manifest;
  std::map<std::string, nlohmann::json> entries;
  for (const auto& e : manifest["layers"]) entries[e["name"].get<std::string>()] = e;
  std::uint64_t npz = 0;
  for (const auto& l : j["layers"]) {
    const nlohmann::json& e = entries.at(l["name"].get<std::string>());
    EXPECT_EQ(l["tensor_bytes"].get<std::uint64_t>(), e["quantized"]["bytes"].get<std::uint64_t>())
        << what << " " << l["name"];
    const std::uint64_t npz_file = size_of(o.output / e["npz"]["name"].get<std::string>());
    EXPECT_EQ(l["npz_bytes"].get<std::uint64_t>(), npz_file) << what << " " << l["name"];
    EXPECT_EQ(l["packed_bytes"].get<std::uint64_t>(), l["tensor_bytes"].get<std::uint64_t>() + npz_file) << what;
    npz += npz_file;
  }
  const nlohmann::ordered_json& t = j["totals"];
  EXPECT_EQ(t["npz_bytes"].get<std::uint64_t>(), npz) << what;
  EXPECT_EQ(t["safetensors_bytes"].get<std::uint64_t>(), size_of(o.output / std::string(kQuantizedName))) << what;

  std::uint64_t directory = 0;
  for (const auto& f : fs::directory_iterator(o.output))
    if (f.is_regular_file()) directory += size_of(f.path());  // .duquant-lock is empty
  const std::uint64_t manifest_file = size_of(o.output / std::string(kManifestName));
  const std::uint64_t bound = selection.layers.size() * kManifestFiguresPerLayer * kManifestFigureError;
  const auto off = [](std::uint64_t a, std::uint64_t b) { return a > b ? a - b : b - a; };
  EXPECT_LE(off(t["manifest_bytes"].get<std::uint64_t>(), manifest_file), bound)
      << what << ": manifest estimated " << t["manifest_bytes"] << ", written " << manifest_file;
  EXPECT_EQ(t["packed_bytes"].get<std::uint64_t>() - t["manifest_bytes"].get<std::uint64_t>(),
            directory - manifest_file)
      << what;
  EXPECT_LE(off(t["packed_bytes"].get<std::uint64_t>(), directory), bound)
      << what << ": estimated " << t["packed_bytes"] << ", the directory holds " << directory;
}

RunConfig expert_config() {
  RunConfig c;
  c.selection.scope = "paligemma_with_expert.gemma_expert.model.";
  return c;
}

TEST(PackLayout, SizesBeforePackingMatchTheDirectoryPackWrites) {
  expect_sizes_of_a_real_pack(expert_config(), "defaults");
}

TEST(PackLayout, SizesMatchWithPaddedBlocksOddBitsAndNoRowRotation) {
  RunConfig c = expert_config();
  c.quant.wbits_default = 3;
  c.selection.wbits_rules = {{".*mlp.*", 8}};
  c.quant.block = 24;  // does not divide 64, 128 or 256: a shorter last block, padded in R_in
  c.quant.block_out = 40;
  c.quant.row_rot = RowRot::off;
  c.quant.permute = false;
  expect_sizes_of_a_real_pack(c, "b24/40, W3 and W8, row_rot 0, no permutation");
}

}  // namespace
}  // namespace duquant::test

// npy/npz: our writer's bytes read back by our strict reader; numpy.savez files (the fixtures,
// with ZIP64 extra fields) read; hostile archives and headers rejected with named errors.
#include <gtest/gtest.h>

#include <fstream>

#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "formats/npz.hpp"

namespace duquant {
namespace {

using formats::NpzFile;

std::vector<std::byte> bytes_of(const std::string& s) {
  const auto* p = reinterpret_cast<const std::byte*>(s.data());
  return {p, p + s.size()};
}

std::vector<std::byte> file_bytes(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::string s((std::istreambuf_iterator<char>(in)), {});
  return bytes_of(s);
}

void expect_format_error(const std::vector<std::byte>& bytes, const std::string& fragment) {
  try {
    NpzFile::parse(bytes, "x.npz");
    ADD_FAILURE() << "accepted; expected an error containing '" << fragment << "'";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::format) << e.what();
    EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
  }
}

TEST(Npy, HeaderIsNumpyVersion1Aligned) {
  const std::vector<float> v{1, 2, 3};
  const std::string a = formats::npy_f32({3}, v);
  EXPECT_EQ(a.substr(0, 8), std::string("\x93NUMPY\x01\x00", 8));
  const std::size_t header = 10 + static_cast<unsigned char>(a[8]) + 256u * static_cast<unsigned char>(a[9]);
  EXPECT_EQ(header % 64, 0u);
  EXPECT_EQ(a.size(), header + 12);
  EXPECT_NE(a.find("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"), std::string::npos);
  const auto parsed = formats::parse_npy(std::as_bytes(std::span(a.data(), a.size())), "a");
  EXPECT_EQ(formats::npy_to_f32(parsed, "a"), v);
}

TEST(Npz, WriterRoundTripIsByteStable) {
  const auto dir = test::temp_dir();
  for (const char* name : {"a.npz", "b.npz"}) {
    formats::NpzWriter w(dir / name);
    const std::vector<std::int64_t> perm{2, 0, 1};
    w.add("perm", formats::npy_i64({3}, perm));
    w.add("meta", formats::npy_unicode_scalar("{\"x\": 1} µ"));
    w.commit();
  }
  const auto a = file_bytes(dir / "a.npz"), b = file_bytes(dir / "b.npz");
  EXPECT_EQ(a, b);
  const NpzFile f = NpzFile::open(dir / "a.npz");
  EXPECT_EQ(f.keys(), (std::vector<std::string>{"perm", "meta"}));
  EXPECT_EQ(formats::npy_to_i64(f.at("perm"), "perm"), (std::vector<std::int64_t>{2, 0, 1}));
  EXPECT_EQ(formats::npy_unicode_to_utf8(f.at("meta"), "meta"), "{\"x\": 1} µ");
}

TEST(Npz, ReadsNumpySavezFiles) {
  const auto path =
      test::fixtures() / "openpi-pack-b16" / "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj.npz";
  const NpzFile f = NpzFile::open(path);
  EXPECT_EQ(f.keys().front(), "weight_scale");
  EXPECT_EQ(f.at("weight_scale").shape, (std::vector<std::uint64_t>{128}));
  EXPECT_EQ(f.at("perm").descr, "<i8");
  EXPECT_EQ(f.at("meta").descr, "<U127");
  EXPECT_EQ(formats::npy_unicode_to_utf8(f.at("meta"), "meta"),
            "{\"in_features\": 64, \"out_features\": 128, \"block_size\": 16, \"block_out_size\": 16, "
            "\"enable_permute\": true, \"lambda_smooth\": 0.15}");
  EXPECT_EQ(f.at("Rin_3").shape, (std::vector<std::uint64_t>{16, 16}));
  EXPECT_TRUE(f.at("Rin_3").fortran_order);  // numpy saved the transposed SVD factor as is
}

TEST(Npy, FortranOrderReadsAsCOrder) {
  // 2 x 3 matrix [[1, 2, 3], [4, 5, 6]] stored column-major: 1 4 2 5 3 6.
  const std::vector<float> column_major{1, 4, 2, 5, 3, 6};
  std::string a = formats::npy_f32({2, 3}, column_major);
  const auto at = a.find("False");
  a.replace(at, 5, "True ");
  const auto parsed = formats::parse_npy(std::as_bytes(std::span(a.data(), a.size())), "f");
  EXPECT_TRUE(parsed.fortran_order);
  EXPECT_EQ(formats::npy_to_f32(parsed, "f"), (std::vector<float>{1, 2, 3, 4, 5, 6}));
}

TEST(Npz, RejectsHostileArchives) {
  const auto good = file_bytes(test::fixtures() / "openpi-pack-b16" /
                               "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.k_proj.npz");
  auto truncated = good;
  truncated.resize(good.size() - 30);
  expect_format_error(truncated, "end-of-central-directory");
  auto flipped = good;
  flipped[200] ^= std::byte{0x01};  // inside the first member's data
  expect_format_error(flipped, "CRC-32");
  auto compressed = good;
  compressed[8] = std::byte{8};  // local header method: deflate (the central one still says stored)
  std::size_t cd = 0;
  for (std::size_t i = good.size() - 22; i > 0; --i)
    if (good[i] == std::byte{0x50} && good[i + 1] == std::byte{0x4b} && good[i + 2] == std::byte{0x01} &&
        good[i + 3] == std::byte{0x02})
      cd = i;  // first central header
  ASSERT_GT(cd, 0u);
  compressed[cd + 10] = std::byte{8};
  expect_format_error(compressed, "compressed");
  expect_format_error(bytes_of("not a zip at all, just text padding padding"), "end-of-central-directory");
}

TEST(Npy, RejectsUnsafeHeaders) {
  auto npy = [](const std::string& dict, std::size_t data) {
    std::string h = dict;
    h += '\n';
    std::string out("\x93NUMPY\x01\x00", 8);
    out += static_cast<char>(h.size() & 0xff);
    out += static_cast<char>(h.size() >> 8);
    return out + h + std::string(data, '\0');
  };
  auto expect = [](const std::string& b, const std::string& fragment) {
    try {
      formats::parse_npy(std::as_bytes(std::span(b.data(), b.size())), "m.npy");
      ADD_FAILURE() << "accepted, expected '" << fragment << "'";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect(npy("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", 16), "not accepted");
  expect(npy("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8), "not accepted");
  expect(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 8), "needs 12 bytes");
  expect(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", 8), "non-negative");
  expect(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 8), "overflows");
  expect(npy("{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8), "duplicate");
  expect(npy("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }", 8), "expected a string");
  expect(npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 4294967296), }", 8),
         "overflows");
}

}  // namespace
}  // namespace duquant

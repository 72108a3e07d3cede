// The calibration dump reader (formats/calib_dump.*, docs/calibration-dumps.md): HDF5 files made
// here with the HDF5 C API read back exactly, NaN/Inf raised by read(), and the safetensors
// container. Hostile files and chunks: test_calib_dump_hostile.cpp.
//
// Suites are named calib_dump_* so that `ctest -R calib_dump` selects them.
#include "calib/calib_dump_test_util.hpp"

namespace duquant::calib_dump_test {
namespace {

// =============================================================================================
// Valid HDF5 dumps

class calib_dump_hdf5 : public DumpTest {};

TEST_F(calib_dump_hdf5, ReadsEveryDtypeAndLayoutExactly) {
  const fs::path p = file("dump.h5");
  const std::vector<float> f32 = {1.5f, -2.25f, 1e-30f, 3.0e38f, -0.0f, 7.0f, 0.1f, -1e-45f, 42.0f, 8.5f, 9.0f, 10.0f};
  const std::vector<std::uint16_t> f16 = {0x3c00, 0xc000, 0x0001, 0x7bff, 0x8000, 0x3555};
  const std::vector<std::uint16_t> bf16 = {0x3f80, 0xc049, 0x0001, 0x7f7f};
  const std::vector<float> rank3 = ramp(24, 0.5f, -3.0f);
  const std::vector<std::uint16_t> bf16_chunked = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0, 0x40c0, 0x40e0, 0x4100,
                                                   0x4110, 0x4120, 0x4130, 0x4140, 0x4150, 0x4160, 0xbf80};
  std::vector<float> noise(64 * 64);
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& v : noise) v = normal(rng);
  {
    const Id f = create_file(p);
    const Id a = group(f, kLayer);
    // Names in link order x_00003 < x_0002 < x_0010; index order 2, 3, 10.
    f32_dataset(a, "x_0002", {3, 4}, f32);
    const Id half = half_type();
    dataset(a, "x_00003", half, {2, 3}, half, f16.data());
    bf16_dataset(a, "x_0010", {2, 2}, bf16);

    const Id b = group(f, "model.layers.1.mlp.down_proj");
    {  // rank 3, partial edge chunks, shuffle + deflate + fletcher32
      const Id plist = chunked({1, 2, 3});
      ok(H5Pset_shuffle(plist), "H5Pset_shuffle");
      ok(H5Pset_deflate(plist, 6), "H5Pset_deflate");
      ok(H5Pset_fletcher32(plist), "H5Pset_fletcher32");
      f32_dataset(b, "x_0000", {2, 3, 4}, rank3, plist);
    }
    dataset(b, "x_0001", H5T_IEEE_F32BE, {2, 2}, H5T_NATIVE_FLOAT, f32.data());  // big-endian, contiguous
    {
      const Id plist = dcpl();
      ok(H5Pset_layout(plist, H5D_COMPACT), "H5Pset_layout");
      const Id half2 = half_type();
      dataset(b, "x_0002", half2, {1, 4}, half2, f16.data(), plist);
    }
    {  // bfloat16, chunked and deflated, fixed-length attribute
      const Id plist = chunked({2, 2});
      ok(H5Pset_deflate(plist, 9), "H5Pset_deflate");
      bf16_dataset(b, "x_0003", {5, 3}, bf16_chunked, false, plist);
    }
    {  // incompressible data: HDF5 may store chunks with deflate skipped (filter mask)
      const Id plist = chunked({32, 64});
      ok(H5Pset_deflate(plist, 1), "H5Pset_deflate");
      f32_dataset(b, "x_0004", {64, 64}, noise, plist);
    }
    {  // big-endian float16, contiguous; big-endian bfloat16, chunked with a partial edge chunk
      const Id half_be = half_type();
      ok(H5Tset_order(half_be, H5T_ORDER_BE), "H5Tset_order");
      const Id half_le = half_type();
      dataset(b, "x_0005", half_be, {2, 2}, half_le, f16.data());
      const Id plist = chunked({2, 1});
      ok(H5Pset_deflate(plist, 1), "H5Pset_deflate");
      const Id d = dataset(b, "x_0006", H5T_STD_U16BE, {3, 1}, H5T_NATIVE_UINT16, bf16.data(), plist);
      string_attribute(d, "dtype", "bfloat16", true);
    }
    const Id empty = group(f, "empty.layer");
  }

  const CalibDump dump = CalibDump::open(p);
  EXPECT_EQ(dump.container(), "hdf5");
  EXPECT_EQ(dump.path(), p);
  EXPECT_EQ(dump.layers(), (std::vector<std::string>{"empty.layer", "model.layers.1.mlp.down_proj", kLayer}));
  EXPECT_EQ(dump.calls("absent.layer"), nullptr);
  EXPECT_EQ(dump.calls("model.layers.1.mlp"), nullptr);
  ASSERT_NE(dump.calls("empty.layer"), nullptr);
  EXPECT_TRUE(dump.calls("empty.layer")->empty());

  const auto* a = dump.calls(kLayer);
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->size(), 3u);
  EXPECT_EQ((*a)[0].index, 2);
  EXPECT_EQ((*a)[0].name, "x_0002");
  EXPECT_EQ((*a)[0].rows, 3u);
  EXPECT_EQ((*a)[0].cols, 4u);
  EXPECT_EQ((*a)[0].dtype, "F32");
  EXPECT_EQ((*a)[1].index, 3);
  EXPECT_EQ((*a)[1].name, "x_00003");
  EXPECT_EQ((*a)[1].dtype, "F16");
  EXPECT_EQ((*a)[1].rows, 2u);
  EXPECT_EQ((*a)[1].cols, 3u);
  EXPECT_EQ((*a)[2].index, 10);
  EXPECT_EQ((*a)[2].name, "x_0010");
  EXPECT_EQ((*a)[2].dtype, "BF16");

  std::vector<float> out(100, 123.0f);  // resized by read
  dump.read(kLayer, (*a)[0], out);
  EXPECT_EQ(bits(out), bits(f32));
  dump.read(kLayer, (*a)[1], out);
  EXPECT_EQ(bits(out), bits({1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f, -0.0f, 0.333251953125f}));
  dump.read(kLayer, (*a)[2], out);
  EXPECT_EQ(bits(out), bits({1.0f, -3.140625f, from_bits(0x00010000u), from_bits(0x7f7f0000u)}));

  const auto* b = dump.calls("model.layers.1.mlp.down_proj");
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->size(), 7u);
  EXPECT_EQ((*b)[0].rows, 6u);  // [2, 3, 4] -> 6 tokens of 4 features
  EXPECT_EQ((*b)[0].cols, 4u);
  dump.read("model.layers.1.mlp.down_proj", (*b)[0], out);
  EXPECT_EQ(bits(out), bits(rank3));
  dump.read("model.layers.1.mlp.down_proj", (*b)[1], out);
  EXPECT_EQ(bits(out), bits({1.5f, -2.25f, 1e-30f, 3.0e38f}));
  EXPECT_EQ((*b)[2].dtype, "F16");
  dump.read("model.layers.1.mlp.down_proj", (*b)[2], out);
  EXPECT_EQ(bits(out), bits({1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f}));
  EXPECT_EQ((*b)[3].dtype, "BF16");
  EXPECT_EQ((*b)[3].rows, 5u);
  dump.read("model.layers.1.mlp.down_proj", (*b)[3], out);
  EXPECT_EQ(bits(out), bits({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, -1}));
  dump.read("model.layers.1.mlp.down_proj", (*b)[4], out);
  EXPECT_EQ(bits(out), bits(noise));
  EXPECT_EQ((*b)[5].dtype, "F16");
  dump.read("model.layers.1.mlp.down_proj", (*b)[5], out);
  EXPECT_EQ(bits(out), bits({1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f}));
  EXPECT_EQ((*b)[6].dtype, "BF16");
  EXPECT_EQ((*b)[6].rows, 3u);
  EXPECT_EQ((*b)[6].cols, 1u);
  dump.read("model.layers.1.mlp.down_proj", (*b)[6], out);
  EXPECT_EQ(bits(out), bits({1.0f, -3.140625f, from_bits(0x00010000u)}));

  // A call of another layer, or a made-up one, is a caller's bug.
  EXPECT_THROW(dump.read(kLayer, (*b)[4], out), Error);
  DumpCall fake = (*a)[0];
  fake.rows = 4;
  EXPECT_THROW(dump.read(kLayer, fake, out), Error);
  EXPECT_THROW(dump.read("absent.layer", (*a)[0], out), Error);
}

TEST_F(calib_dump_hdf5, RawChunksWithSkippedDeflateReadBack) {
  // A chunk HDF5 stores uncompressed (deflate's mask bit set) next to a compressed one.
  const std::vector<float> v = ramp(32, 0.25f, 1.0f);
  const fs::path p = one_layer("masked.h5", [&](hid_t g) {
    const Id plist = chunked({2, 8});
    ok(H5Pset_deflate(plist, 6), "H5Pset_deflate");
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 8}, -1, nullptr, plist);
    write_raw_chunk(d, {0, 0}, f32_bytes({v.begin(), v.begin() + 16}), 1u);
    write_raw_chunk(d, {2, 0}, zlib(f32_bytes({v.begin() + 16, v.end()})), 0u);
  });
  const CalibDump dump = CalibDump::open(p);
  std::vector<float> out;
  dump.read("layer", dump.calls("layer")->front(), out);
  EXPECT_EQ(bits(out), bits(v));
}

TEST_F(calib_dump_hdf5, MovedDumpStillReads) {
  const std::vector<float> v = ramp(6, 1.0f, 0.0f);
  const fs::path p = one_layer("m.h5", [&](hid_t g) { f32_dataset(g, "x_0000", {2, 3}, v); });
  CalibDump first = CalibDump::open(p);
  CalibDump second = std::move(first);
  std::vector<float> out;
  second.read("layer", second.calls("layer")->front(), out);
  EXPECT_EQ(out, v);
}

TEST_F(calib_dump_hdf5, ConcurrentReadsAgree) {
  // HDF5 calls are serialized inside the reader, chunk decoding is not: threads reading at once
  // must each get their call exactly.
  std::vector<std::vector<float>> values;
  const auto p = one_layer("threads.h5", [&](hid_t g) {
    for (int c = 0; c < 8; ++c) {
      values.push_back(ramp(64 * 48, 0.125f, static_cast<float>(c)));
      const Id plist = chunked({16, 16});
      ok(H5Pset_shuffle(plist), "H5Pset_shuffle");
      ok(H5Pset_deflate(plist, 3), "H5Pset_deflate");
      f32_dataset(g, "x_000" + std::to_string(c), {64, 48}, values.back(), plist);
    }
  });
  const CalibDump dump = CalibDump::open(p);
  const auto& calls = *dump.calls("layer");
  ASSERT_EQ(calls.size(), 8u);
  std::vector<int> mismatches(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<float> out;
      for (int round = 0; round < 10; ++round)
        for (std::size_t c = 0; c < calls.size(); ++c) {
          dump.read("layer", calls[(c + static_cast<std::size_t>(t)) % calls.size()], out);
          if (out != values[(c + static_cast<std::size_t>(t)) % calls.size()])
            ++mismatches[static_cast<std::size_t>(t)];
        }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// =============================================================================================
// Non-finite values: read() raises them, open() does not look at data

class calib_dump_values : public DumpTest {};

TEST_F(calib_dump_values, NanNamesLayerCallRowAndColumn) {
  std::vector<float> v = ramp(12, 1, 0);
  v[1 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
  const fs::path p = file("nan.h5");
  {
    const Id f = create_file(p);
    const Id g = group(f, kLayer);
    f32_dataset(g, "x_0007", {3, 4}, v);
  }
  expect_read_error(p, kLayer, ErrorKind::numeric,
                    {std::string("/") + kLayer + "/x_0007: row 1, column 2 is NaN; activations must be finite"});
}

TEST_F(calib_dump_values, InfInChunkedBfloat16) {
  const auto p = one_layer("inf.h5", [](hid_t g) {
    const Id plist = chunked({2, 2});
    ok(H5Pset_deflate(plist, 4), "H5Pset_deflate");
    bf16_dataset(g, "x_0000", {3, 3}, {0x3f80, 0x3f80, 0x3f80, 0x3f80, 0x3f80, 0x3f80, 0x3f80, 0xff80, 0x3f80}, true,
                 plist);
  });
  expect_read_error(p, "layer", ErrorKind::numeric, {"/layer/x_0000: row 2, column 1 is -Inf"});
}

// =============================================================================================
// The safetensors container

class calib_dump_safetensors : public DumpTest {
 protected:
  struct Tensor {
    std::string name;
    DType dtype;
    std::vector<std::uint64_t> shape;
    std::vector<unsigned char> bytes;
  };
  fs::path write(const std::string& name, const std::vector<Tensor>& tensors) {
    const fs::path p = file(name);
    std::vector<TensorSpec> specs;
    for (const Tensor& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
    SafetensorsWriter writer(p, specs, {});
    for (const Tensor& t : tensors)
      writer.write(std::span<const std::byte>(reinterpret_cast<const std::byte*>(t.bytes.data()), t.bytes.size()));
    writer.commit();
    return p;
  }
  static std::vector<unsigned char> u16_bytes(const std::vector<std::uint16_t>& v) {
    std::vector<unsigned char> b(v.size() * 2);
    std::memcpy(b.data(), v.data(), b.size());
    return b;
  }
};

TEST_F(calib_dump_safetensors, ReadsBackLikeHdf5) {
  const std::vector<float> f32 = {1.5f, -2.25f, 1e-30f, 3.0e38f, -0.0f, 7.0f};
  const fs::path p =
      write("dump.safetensors",
            {{std::string(kLayer) + ".x_0000", DType::F32, {2, 3}, f32_bytes(f32)},
             {std::string(kLayer) + ".x_0010", DType::BF16, {1, 2, 2}, u16_bytes({0x3f80, 0xc049, 0x0001, 0x7f7f})},
             {std::string(kLayer) + ".x_0003", DType::F16, {2, 2}, u16_bytes({0x3c00, 0xc000, 0x0001, 0x7bff})},
             {"model.x_proj.x_00002", DType::F32, {1, 1}, f32_bytes({5.0f})}});
  const CalibDump dump = CalibDump::open(p);
  EXPECT_EQ(dump.container(), "safetensors");
  EXPECT_EQ(dump.layers(), (std::vector<std::string>{"model.x_proj", kLayer}));
  EXPECT_EQ(dump.calls("model"), nullptr);
  const auto* a = dump.calls(kLayer);
  ASSERT_NE(a, nullptr);
  ASSERT_EQ(a->size(), 3u);
  EXPECT_EQ((*a)[0].name, "x_0000");
  EXPECT_EQ((*a)[1].name, "x_0003");
  EXPECT_EQ((*a)[1].dtype, "F16");
  EXPECT_EQ((*a)[2].name, "x_0010");
  EXPECT_EQ((*a)[2].index, 10);
  EXPECT_EQ((*a)[2].rows, 2u);
  EXPECT_EQ((*a)[2].cols, 2u);
  EXPECT_EQ((*a)[2].dtype, "BF16");
  std::vector<float> out;
  dump.read(kLayer, (*a)[0], out);
  EXPECT_EQ(bits(out), bits(f32));
  dump.read(kLayer, (*a)[1], out);
  EXPECT_EQ(bits(out), bits({1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f}));
  dump.read(kLayer, (*a)[2], out);
  EXPECT_EQ(bits(out), bits({1.0f, -3.140625f, from_bits(0x00010000u), from_bits(0x7f7f0000u)}));
  const auto* b = dump.calls("model.x_proj");
  ASSERT_NE(b, nullptr);
  ASSERT_EQ(b->size(), 1u);
  EXPECT_EQ(b->front().index, 2);
  EXPECT_EQ(b->front().name, "x_00002");
  dump.read("model.x_proj", b->front(), out);
  EXPECT_EQ(out, std::vector<float>{5.0f});
}

TEST_F(calib_dump_safetensors, BadKeysAreRefused) {
  for (const std::string key : {"layer.weight", "x_0000", ".x_0000", "layer.x_12", "layer.x_000a", "layer.y_0000"}) {
    const fs::path p = write("bad.safetensors", {{"layer.x_0000", DType::F32, {1, 1}, f32_bytes({1})},
                                                 {key, DType::F32, {1, 1}, f32_bytes({2})}});
    expect_open_error(p, ErrorKind::format, {"tensor '" + key + "'", "is not named '<layer>.x_NNNN'"});
  }
}

TEST_F(calib_dump_safetensors, WrongRankIsRefused) {
  const fs::path p = write("rank.safetensors", {{"layer.x_0000", DType::F32, {3}, f32_bytes({1, 2, 3})}});
  expect_open_error(p, ErrorKind::format, {"tensor 'layer.x_0000'", "wrong rank: 1"});
  const fs::path s = write("scalar.safetensors", {{"layer.x_0000", DType::F32, {}, f32_bytes({1})}});
  expect_open_error(s, ErrorKind::format, {"tensor 'layer.x_0000'", "wrong rank: 0 (a scalar)"});
}

TEST_F(calib_dump_safetensors, ZeroDimsAndOtherDtypesAreRefused) {
  const fs::path z = write("zero.safetensors", {{"layer.x_0000", DType::F32, {0, 3}, {}}});
  expect_open_error(z, ErrorKind::format, {"tensor 'layer.x_0000'", "zero-sized dimension 0"});
  std::vector<unsigned char> f64(32, 0);
  const fs::path d = write("f64.safetensors", {{"layer.x_0000", DType::F64, {2, 2}, f64}});
  expect_open_error(d, ErrorKind::format, {"tensor 'layer.x_0000'", "unsupported element type F64"});
}

TEST_F(calib_dump_safetensors, DuplicateIndicesAreRefused) {
  const fs::path p = write("dup.safetensors", {{"layer.x_0001", DType::F32, {1, 1}, f32_bytes({1})},
                                               {"layer.x_00001", DType::F32, {1, 1}, f32_bytes({2})}});
  expect_open_error(p, ErrorKind::format, {"layer 'layer'", "calls 'x_00001' and 'x_0001' both have index 1"});
}

TEST_F(calib_dump_safetensors, InfIsANumericErrorOnRead) {
  std::vector<float> v = {1, 2, 3, std::numeric_limits<float>::infinity()};
  const fs::path p = write("inf.safetensors", {{"layer.x_0000", DType::F32, {2, 2}, f32_bytes(v)}});
  expect_read_error(p, "layer", ErrorKind::numeric, {"tensor 'layer.x_0000': row 1, column 1 is +Inf"});
}

}  // namespace
}  // namespace duquant::calib_dump_test

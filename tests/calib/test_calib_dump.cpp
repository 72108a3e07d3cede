// The calibration dump reader (formats/calib_dump.*, docs/calibration-dumps.md): HDF5 files made
// here with the HDF5 C API (valid ones read back exactly; hostile ones refused with a named,
// specific message), the safetensors container, and NaN/Inf raised by read().
//
// Suites are named calib_dump_* so that `ctest -R calib_dump` selects them.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/resource.h>
#include <unistd.h>
#include <zlib.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "duquant/error.hpp"
#include "formats/calib_dump.hpp"
#include "formats/safetensors_writer.hpp"

namespace {

namespace fs = std::filesystem;
using duquant::Error;
using duquant::ErrorKind;
using duquant::formats::CalibDump;
using duquant::formats::DType;
using duquant::formats::DumpCall;
using duquant::formats::SafetensorsWriter;
using duquant::formats::TensorSpec;

constexpr const char* kLayer = "paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj";

// ---------------------------------------------------------------------------------------------
// Writing HDF5 files

// An HDF5 id closed when it goes out of scope; creation failures end the test.
class Id {
 public:
  Id(hid_t id, herr_t (*close)(hid_t), const char* what) : id_(id), close_(close) {
    if (id < 0) throw std::runtime_error(std::string("HDF5 call failed in the test: ") + what);
  }
  Id(Id&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  Id(const Id&) = delete;
  Id& operator=(const Id&) = delete;
  ~Id() {
    if (id_ >= 0) close_(id_);
  }
  operator hid_t() const { return id_; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

void ok(herr_t status, const char* what) {
  if (status < 0) throw std::runtime_error(std::string("HDF5 call failed in the test: ") + what);
}

Id create_file(const fs::path& path, hid_t fcpl = H5P_DEFAULT) {
  return Id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT), H5Fclose, "H5Fcreate");
}
Id group(hid_t loc, const std::string& name) {
  return Id(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, "H5Gcreate2");
}
Id space(const std::vector<hsize_t>& dims, const std::vector<hsize_t>& maxdims = {}) {
  if (dims.empty()) return Id(H5Screate(H5S_SCALAR), H5Sclose, "H5Screate");
  return Id(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.empty() ? nullptr : maxdims.data()),
            H5Sclose, "H5Screate_simple");
}
Id dcpl() { return Id(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "H5Pcreate"); }
Id chunked(const std::vector<hsize_t>& chunk) {
  Id p = dcpl();
  ok(H5Pset_chunk(p, static_cast<int>(chunk.size()), chunk.data()), "H5Pset_chunk");
  return p;
}

// Creates `name` in `loc`; writes `data` (memory type `mem`) when given.
Id dataset(hid_t loc, const std::string& name, hid_t type, const std::vector<hsize_t>& dims, hid_t mem = -1,
           const void* data = nullptr, hid_t plist = H5P_DEFAULT, const std::vector<hsize_t>& maxdims = {}) {
  const Id s = space(dims, maxdims);
  Id d(H5Dcreate2(loc, name.c_str(), type, s, H5P_DEFAULT, plist, H5P_DEFAULT), H5Dclose, "H5Dcreate2");
  if (data) ok(H5Dwrite(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "H5Dwrite");
  return d;
}

void f32_dataset(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims, const std::vector<float>& v,
                 hid_t plist = H5P_DEFAULT) {
  dataset(loc, name, H5T_IEEE_F32LE, dims, H5T_NATIVE_FLOAT, v.data(), plist);
}

void string_attribute(hid_t obj, const char* name, const std::string& value, bool variable) {
  const Id type(H5Tcopy(H5T_C_S1), H5Tclose, "H5Tcopy");
  ok(H5Tset_size(type, variable ? H5T_VARIABLE : value.size()), "H5Tset_size");
  if (variable) ok(H5Tset_cset(type, H5T_CSET_UTF8), "H5Tset_cset");  // as h5py writes a str
  const Id s = space({});
  const Id a(H5Acreate2(obj, name, type, s, H5P_DEFAULT, H5P_DEFAULT), H5Aclose, "H5Acreate2");
  if (variable) {
    const char* p = value.c_str();
    ok(H5Awrite(a, type, &p), "H5Awrite");
  } else {
    ok(H5Awrite(a, type, value.data()), "H5Awrite");
  }
}

// IEEE binary16, little-endian (HDF5 1.10 has no predefined half type).
Id half_type() {
  Id t(H5Tcopy(H5T_IEEE_F32LE), H5Tclose, "H5Tcopy");
  ok(H5Tset_fields(t, 15, 10, 5, 0, 10), "H5Tset_fields");
  ok(H5Tset_size(t, 2), "H5Tset_size");
  ok(H5Tset_ebias(t, 15), "H5Tset_ebias");
  return t;
}

// uint16 bfloat16 bits with the attribute that marks them.
void bf16_dataset(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                  const std::vector<std::uint16_t>& bits, bool variable_attr = true, hid_t plist = H5P_DEFAULT) {
  const Id d = dataset(loc, name, H5T_STD_U16LE, dims, H5T_NATIVE_UINT16, bits.data(), plist);
  string_attribute(d, "dtype", "bfloat16", variable_attr);
}

void write_raw_chunk(hid_t d, std::vector<hsize_t> offset, const std::vector<unsigned char>& bytes,
                     std::uint32_t mask = 0) {
  ok(H5Dwrite_chunk(d, H5P_DEFAULT, mask, offset.data(), bytes.size(), bytes.data()), "H5Dwrite_chunk");
}

std::vector<unsigned char> zlib(const std::vector<unsigned char>& data) {
  uLongf n = compressBound(data.size());
  std::vector<unsigned char> out(n);
  if (compress2(out.data(), &n, data.data(), data.size(), 6) != Z_OK) throw std::runtime_error("compress2");
  out.resize(n);
  return out;
}

// A zlib stream of `total` zero bytes, made without holding them.
std::vector<unsigned char> zlib_zeros(std::size_t total) {
  z_stream z{};
  if (deflateInit(&z, 9) != Z_OK) throw std::runtime_error("deflateInit");
  std::vector<unsigned char> zeros(1 << 20, 0), out, buf(1 << 16);
  std::size_t left = total;
  int status = Z_OK;
  do {
    if (z.avail_in == 0 && left > 0) {
      const std::size_t n = std::min(left, zeros.size());
      z.next_in = zeros.data();
      z.avail_in = static_cast<uInt>(n);
      left -= n;
    }
    z.next_out = buf.data();
    z.avail_out = static_cast<uInt>(buf.size());
    status = deflate(&z, left == 0 ? Z_FINISH : Z_NO_FLUSH);
    out.insert(out.end(), buf.data(), buf.data() + (buf.size() - z.avail_out));
  } while (status != Z_STREAM_END);
  deflateEnd(&z);
  return out;
}

std::vector<unsigned char> f32_bytes(const std::vector<float>& v) {
  std::vector<unsigned char> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * 4);
  return b;
}

float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<float> ramp(std::size_t n, float scale, float offset) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>(i) * scale + offset;
  return v;
}

long max_rss_mb() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return r.ru_maxrss / 1024;
}

// ---------------------------------------------------------------------------------------------
// Fixture: a per-process, per-test folder, removed afterwards.

class DumpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // failures the tests provoke stay quiet
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / ("duquant-dump-test-" + std::to_string(::getpid())) /
           (std::string(info->test_suite_name()) + "." + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_.parent_path(), ec);
  }
  fs::path file(const std::string& name) const { return dir_ / name; }

  // A file whose one layer group holds one dataset made by `make(layer_group)`.
  template <typename Make>
  fs::path one_layer(const std::string& name, Make&& make) {
    const fs::path p = file(name);
    const Id f = create_file(p);
    const Id g = group(f, "layer");
    make(static_cast<hid_t>(g));
    return p;
  }

  fs::path dir_;
};

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// open() must throw an Error of `kind` whose message names the file and holds every phrase.
void expect_open_error(const fs::path& path, ErrorKind kind, std::initializer_list<std::string> phrases) {
  try {
    const CalibDump dump = CalibDump::open(path);
    ADD_FAILURE() << path << " opened with " << dump.layers().size() << " layer(s)";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(duquant::kind_name(e.kind()), std::string(duquant::kind_name(kind))) << what;
    EXPECT_TRUE(contains(what, path.string())) << "message does not name the file: " << what;
    for (const std::string& phrase : phrases)
      EXPECT_TRUE(contains(what, phrase)) << "message: " << what << "\nexpected to contain: " << phrase;
  }
}

// open() succeeds; read() of the layer's first call throws as described.
void expect_read_error(const fs::path& path, const std::string& layer, ErrorKind kind,
                       std::initializer_list<std::string> phrases) {
  const CalibDump dump = CalibDump::open(path);
  const auto* calls = dump.calls(layer);
  ASSERT_NE(calls, nullptr);
  ASSERT_FALSE(calls->empty());
  std::vector<float> out;
  try {
    dump.read(layer, calls->front(), out);
    ADD_FAILURE() << path << ": read succeeded";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(duquant::kind_name(e.kind()), std::string(duquant::kind_name(kind))) << what;
    EXPECT_TRUE(contains(what, path.string())) << "message does not name the file: " << what;
    for (const std::string& phrase : phrases)
      EXPECT_TRUE(contains(what, phrase)) << "message: " << what << "\nexpected to contain: " << phrase;
  }
}

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
  EXPECT_EQ(dump.layers(),
            (std::vector<std::string>{"empty.layer", "model.layers.1.mlp.down_proj", kLayer}));
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
          if (out != values[(c + static_cast<std::size_t>(t)) % calls.size()]) ++mismatches[static_cast<std::size_t>(t)];
        }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

// =============================================================================================
// Hostile or malformed HDF5 files: open() refuses them, naming the object

class calib_dump_hostile : public DumpTest {};

TEST_F(calib_dump_hostile, RankOne) {
  const auto p = one_layer("r1.h5", [](hid_t g) { f32_dataset(g, "x_0000", {5}, {1, 2, 3, 4, 5}); });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "wrong rank: 1", "dims [5]"});
}

TEST_F(calib_dump_hostile, Scalar) {
  const auto p = one_layer("r0.h5", [](hid_t g) { f32_dataset(g, "x_0000", {}, {1}); });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "wrong rank: 0 (a scalar)"});
}

TEST_F(calib_dump_hostile, NullDataspace) {
  const auto p = one_layer("null.h5", [](hid_t g) {
    const Id s(H5Screate(H5S_NULL), H5Sclose, "H5Screate");
    const Id d(H5Dcreate2(g, "x_0000", H5T_IEEE_F32LE, s, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Dclose, "");
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "null dataspace"});
}

TEST_F(calib_dump_hostile, RankNine) {
  const auto p = one_layer("r9.h5", [](hid_t g) { f32_dataset(g, "x_0000", {1, 1, 1, 1, 1, 1, 1, 1, 2}, {1, 2}); });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "wrong rank: 9"});
}

TEST_F(calib_dump_hostile, OverflowingDims) {
  const auto p = one_layer("overflow.h5", [](hid_t g) {
    const Id plist = chunked({16, 16});
    ok(H5Pset_alloc_time(plist, H5D_ALLOC_TIME_INCR), "H5Pset_alloc_time");
    dataset(g, "x_0000", H5T_IEEE_F32LE, {hsize_t{1} << 40, hsize_t{1} << 40}, -1, nullptr, plist);
  });
  EXPECT_LT(fs::file_size(p), 100000u);
  expect_open_error(p, ErrorKind::format,
                    {"/layer/x_0000", "dims [1099511627776, 1099511627776] overflow 64 bits"});
}

TEST_F(calib_dump_hostile, TooManyElements) {
  const auto p = one_layer("big.h5", [](hid_t g) {
    const Id plist = chunked({256, 256});
    ok(H5Pset_alloc_time(plist, H5D_ALLOC_TIME_INCR), "H5Pset_alloc_time");
    dataset(g, "x_0000", H5T_IEEE_F32LE, {hsize_t{1} << 16, hsize_t{1} << 15}, -1, nullptr, plist);
  });
  expect_open_error(p, ErrorKind::format,
                    {"/layer/x_0000", "hold 2147483648 elements, more than the 1073741824 (2^30) a call may hold"});
}

TEST_F(calib_dump_hostile, ZeroDims) {
  const auto p = one_layer("zero.h5", [](hid_t g) {
    dataset(g, "x_0000", H5T_IEEE_F32LE, {0, 4});
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "zero-sized dimension 0 in dims [0, 4]"});
}

TEST_F(calib_dump_hostile, FixedLengthStrings) {
  const auto p = one_layer("str.h5", [](hid_t g) {
    const Id t(H5Tcopy(H5T_C_S1), H5Tclose, "H5Tcopy");
    ok(H5Tset_size(t, 8), "H5Tset_size");
    const std::string text(2 * 2 * 8, 'a');
    dataset(g, "x_0000", t, {2, 2}, t, text.data());
  });
  expect_open_error(p, ErrorKind::format,
                    {"/layer/x_0000", "unsupported element type: fixed-length string (8 bytes)"});
}

TEST_F(calib_dump_hostile, VariableLengthStrings) {
  const auto p = one_layer("vstr.h5", [](hid_t g) {
    const Id t(H5Tcopy(H5T_C_S1), H5Tclose, "H5Tcopy");
    ok(H5Tset_size(t, H5T_VARIABLE), "H5Tset_size");
    const char* text[4] = {"a", "bb", "ccc", "dddd"};
    dataset(g, "x_0000", t, {2, 2}, t, text);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "unsupported element type: variable-length string"});
}

TEST_F(calib_dump_hostile, Float64) {
  const auto p = one_layer("f64.h5", [](hid_t g) {
    const double v[4] = {1, 2, 3, 4};
    dataset(g, "x_0000", H5T_IEEE_F64LE, {2, 2}, H5T_NATIVE_DOUBLE, v);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "unsupported element type: float64"});
}

TEST_F(calib_dump_hostile, NonIeeeFloat) {
  const auto p = one_layer("odd.h5", [](hid_t g) {
    const Id t(H5Tcopy(H5T_IEEE_F32LE), H5Tclose, "H5Tcopy");
    ok(H5Tset_ebias(t, 100), "H5Tset_ebias");
    const float v[4] = {1, 2, 3, 4};
    dataset(g, "x_0000", t, {2, 2}, H5T_NATIVE_FLOAT, v);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "not IEEE binary32", "bias 100"});
}

TEST_F(calib_dump_hostile, Int32) {
  const auto p = one_layer("i32.h5", [](hid_t g) {
    const std::int32_t v[4] = {1, 2, 3, 4};
    dataset(g, "x_0000", H5T_STD_I32LE, {2, 2}, H5T_NATIVE_INT32, v);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "unsupported element type: signed 32-bit integer"});
}

TEST_F(calib_dump_hostile, Uint16WithoutTheAttribute) {
  const auto p = one_layer("u16.h5", [](hid_t g) {
    const std::uint16_t v[4] = {1, 2, 3, 4};
    dataset(g, "x_0000", H5T_STD_U16LE, {2, 2}, H5T_NATIVE_UINT16, v);
  });
  expect_open_error(p, ErrorKind::format,
                    {"/layer/x_0000", "unsupported element type: uint16 without the attribute dtype=\"bfloat16\""});
}

TEST_F(calib_dump_hostile, Uint16WithAnotherDtypeAttribute) {
  const auto p = one_layer("u16b.h5", [](hid_t g) {
    const std::uint16_t v[4] = {1, 2, 3, 4};
    const Id d = dataset(g, "x_0000", H5T_STD_U16LE, {2, 2}, H5T_NATIVE_UINT16, v);
    string_attribute(d, "dtype", "float16", true);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "uint16 with the attribute dtype=\"float16\""});
}

TEST_F(calib_dump_hostile, BfloatAttributeOnFloat32) {
  const auto p = one_layer("f32bf.h5", [](hid_t g) {
    const float v[4] = {1, 2, 3, 4};
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {2, 2}, H5T_NATIVE_FLOAT, v);
    string_attribute(d, "dtype", "bfloat16", false);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "dtype=\"bfloat16\" is on float32 data"});
}

TEST_F(calib_dump_hostile, ExternalLinkInALayer) {
  const auto p = one_layer("extlink.h5", [](hid_t g) {
    ok(H5Lcreate_external("/etc/other.h5", "/x", g, "x_0000", H5P_DEFAULT, H5P_DEFAULT), "H5Lcreate_external");
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "is an external link"});
}

TEST_F(calib_dump_hostile, ExternalLinkAtTheRoot) {
  const fs::path p = file("extroot.h5");
  {
    const Id f = create_file(p);
    ok(H5Lcreate_external("other.h5", "/layer", f, "layer", H5P_DEFAULT, H5P_DEFAULT), "H5Lcreate_external");
  }
  expect_open_error(p, ErrorKind::format, {": /layer: is an external link"});
}

TEST_F(calib_dump_hostile, SoftLink) {
  const auto p = one_layer("soft.h5", [](hid_t g) {
    f32_dataset(g, "x_0000", {1, 2}, {1, 2});
    ok(H5Lcreate_soft("/layer/x_0000", g, "x_0001", H5P_DEFAULT, H5P_DEFAULT), "H5Lcreate_soft");
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0001", "is a soft link"});
}

TEST_F(calib_dump_hostile, HardLinkGivesASecondName) {
  const auto p = one_layer("hard.h5", [](hid_t g) {
    f32_dataset(g, "x_0000", {1, 2}, {1, 2});
    ok(H5Lcreate_hard(g, "x_0000", g, "x_0001", H5P_DEFAULT, H5P_DEFAULT), "H5Lcreate_hard");
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0001: is a second name for /layer/x_0000"});
}

TEST_F(calib_dump_hostile, ExternalStorage) {
  const fs::path raw = file("outside.bin");
  const auto p = one_layer("external.h5", [&](hid_t g) {
    const Id plist = dcpl();
    ok(H5Pset_external(plist, raw.c_str(), 0, 16), "H5Pset_external");
    const float v[4] = {1, 2, 3, 4};
    dataset(g, "x_0000", H5T_IEEE_F32LE, {2, 2}, H5T_NATIVE_FLOAT, v, plist);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "external storage", raw.string()});
}

TEST_F(calib_dump_hostile, VirtualDataset) {
  const auto p = one_layer("vds.h5", [](hid_t g) {
    const Id s = space({2, 2});
    const Id plist = dcpl();
    ok(H5Pset_virtual(plist, s, "source.h5", "/data", s), "H5Pset_virtual");
    dataset(g, "x_0000", H5T_IEEE_F32LE, {2, 2}, -1, nullptr, plist);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "virtual dataset"});
}

TEST_F(calib_dump_hostile, UnregisteredOptionalFilter) {
  const auto p = one_layer("f32000.h5", [](hid_t g) {
    const Id plist = chunked({2, 2});
    ok(H5Pset_filter(plist, 32000, H5Z_FLAG_OPTIONAL, 0, nullptr), "H5Pset_filter");
    f32_dataset(g, "x_0000", {2, 2}, {1, 2, 3, 4}, plist);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "filter 32000", "is not allowed"});
}

TEST_F(calib_dump_hostile, NbitFilter) {
  const auto p = one_layer("nbit.h5", [](hid_t g) {
    const Id plist = chunked({2, 2});
    ok(H5Pset_nbit(plist), "H5Pset_nbit");
    f32_dataset(g, "x_0000", {2, 2}, {1, 2, 3, 4}, plist);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "filter 5 ('nbit') is not allowed"});
}

TEST_F(calib_dump_hostile, DatasetAtTheRoot) {
  const fs::path p = file("root.h5");
  {
    const Id f = create_file(p);
    f32_dataset(f, "x_0000", {1, 2}, {1, 2});
  }
  expect_open_error(p, ErrorKind::format, {": /x_0000: dataset at the root"});
}

TEST_F(calib_dump_hostile, GroupInsideALayer) {
  const auto p = one_layer("nested.h5", [](hid_t g) {
    const Id sub = group(g, "sub");
    f32_dataset(sub, "x_0000", {1, 2}, {1, 2});
  });
  expect_open_error(p, ErrorKind::format, {"/layer/sub: group inside a layer group"});
}

TEST_F(calib_dump_hostile, LayerNamesMustBePrintableUtf8) {
  const fs::path control = file("control.h5");
  {
    const Id f = create_file(control);
    const Id g = group(f, "bad\x01name");
  }
  expect_open_error(control, ErrorKind::format, {": /bad\\x01name: layer name contains the control byte 0x01"});
  const fs::path latin1 = file("latin1.h5");
  {
    const Id f = create_file(latin1);
    const Id g = group(f, "caf\xe9");
  }
  expect_open_error(latin1, ErrorKind::format, {": /caf\\xe9: layer name is not valid UTF-8 (byte 0xe9 at 3)"});
  const fs::path utf8 = file("utf8.h5");
  {
    const Id f = create_file(utf8);
    const Id g = group(f, "caf\xc3\xa9.x");
    f32_dataset(g, "x_0000", {1, 1}, {1});
  }
  EXPECT_EQ(CalibDump::open(utf8).layers(), std::vector<std::string>{"caf\xc3\xa9.x"});
}

TEST_F(calib_dump_hostile, BadCallNames) {
  for (const std::string name : {"y_0000", "x_12", "x_00a1", "x_0001 ", "X_0001"}) {
    const auto p = one_layer("name.h5", [&](hid_t g) { f32_dataset(g, name, {1, 2}, {1, 2}); });
    expect_open_error(p, ErrorKind::format, {"/layer/" + name, "bad call name '" + name + "'"});
  }
  const auto p = one_layer("long.h5", [&](hid_t g) { f32_dataset(g, "x_1234567890123456789", {1, 2}, {1, 2}); });
  expect_open_error(p, ErrorKind::format, {"/layer/x_1234567890123456789", "more than 18 significant digits"});
}

TEST_F(calib_dump_hostile, DuplicateCallIndices) {
  const auto p = one_layer("dup.h5", [](hid_t g) {
    f32_dataset(g, "x_0001", {1, 2}, {1, 2});
    f32_dataset(g, "x_00001", {1, 2}, {3, 4});
  });
  expect_open_error(p, ErrorKind::format, {": /layer: calls 'x_00001' and 'x_0001' both have index 1"});
}

TEST_F(calib_dump_hostile, TruncatedFile) {
  const auto p = one_layer("trunc.h5", [](hid_t g) { f32_dataset(g, "x_0000", {128, 128}, ramp(128 * 128, 1, 0)); });
  const auto size = fs::file_size(p);
  fs::resize_file(p, size / 2);
  expect_open_error(p, ErrorKind::format, {"cannot open as HDF5", "truncated file"});
}

TEST_F(calib_dump_hostile, RandomBytesAfterTheSignature) {
  std::mt19937 rng(1234);
  for (int trial = 0; trial < 8; ++trial) {
    const fs::path p = file("random.h5");
    std::string bytes = "\x89HDF\r\n\x1a\n";
    for (int i = 0; i < 4096; ++i) bytes += static_cast<char>(rng() & 0xff);
    std::ofstream(p, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    expect_open_error(p, ErrorKind::format, {"cannot open as HDF5"});
  }
}

TEST_F(calib_dump_hostile, CrashInsideHdf5IsContained) {
  // A variable-length string attribute (what h5py writes for attrs["dtype"] = "bfloat16") lives in
  // HDF5's global heap; with its object's size corrupted, HDF5 1.10.8 reads far out of bounds
  // and crashes. The structure is scanned in a child process first, so this is an error here.
  // (Under AddressSanitizer the child prints HDF5's memcpy-param-overlap report before it exits:
  // expected, and it happens in the child only.)
  const auto p = one_layer("heap.h5", [](hid_t g) { bf16_dataset(g, "x_0000", {2, 2}, {1, 2, 3, 4}, true); });
  std::string bytes;
  {
    std::ifstream in(p, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::size_t heap = bytes.find("GCOL");
  ASSERT_NE(heap, std::string::npos);
  // Collection header (16 bytes), then object 1: index (2), references (2), reserved (4), size (8).
  ASSERT_EQ(bytes[heap + 16 + 8], 8) << "object 1 should be the 8 bytes of \"bfloat16\"";
  bytes[heap + 16 + 8 + 2] = static_cast<char>(0xcb);  // size 8 -> 0xcb0008
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  expect_open_error(p, ErrorKind::format, {"checked in a separate process", "corrupt or crafted"});
}

// The test seam that shortens the HDF5 check's hang limit (the fuzz target uses it): a malformed
// value is a usage error, so that a fuzz run cannot silently keep the 60 s limit.
TEST_F(calib_dump_hostile, CheckTimeLimitSeamIsValidated) {
  const auto p = one_layer("seam.h5", [](hid_t g) { f32_dataset(g, "x_0000", {1, 2}, {1, 2}); });
  for (const char* bad : {"0", "-3", "86401", "2s", " 5"}) {
    SCOPED_TRACE(bad);
    ::setenv("DUQUANT_TEST_HDF5_CHECK_SECONDS", bad, 1);
    expect_open_error(p, ErrorKind::usage, {"DUQUANT_TEST_HDF5_CHECK_SECONDS", bad});
  }
  ::setenv("DUQUANT_TEST_HDF5_CHECK_SECONDS", "5", 1);
  EXPECT_EQ(CalibDump::open(p).layers(), std::vector<std::string>{"layer"});
  ::unsetenv("DUQUANT_TEST_HDF5_CHECK_SECONDS");
}

TEST_F(calib_dump_hostile, EmptyFile) {
  const fs::path p = file("empty.h5");
  std::ofstream(p).close();
  expect_open_error(p, ErrorKind::format, {"empty file (0 bytes)"});
}

TEST_F(calib_dump_hostile, MissingFile) {
  expect_open_error(file("absent.h5"), ErrorKind::io, {"no such file"});
}

TEST_F(calib_dump_hostile, NeitherHdf5NorSafetensors) {
  const fs::path p = file("notes.txt");
  std::ofstream(p) << "hello, this is not a dump at all";
  expect_open_error(p, ErrorKind::format, {});
}

TEST_F(calib_dump_hostile, UserBlock) {
  const fs::path p = file("ublock.h5");
  {
    const Id fcpl(H5Pcreate(H5P_FILE_CREATE), H5Pclose, "H5Pcreate");
    ok(H5Pset_userblock(fcpl, 512), "H5Pset_userblock");
    const Id f = create_file(p, fcpl);
    const Id g = group(f, "layer");
    f32_dataset(g, "x_0000", {1, 2}, {1, 2});
  }
  expect_open_error(p, ErrorKind::format, {"512-byte user block"});
}

TEST_F(calib_dump_hostile, NoLayers) {
  const fs::path p = file("nolayers.h5");
  { const Id f = create_file(p); }
  expect_open_error(p, ErrorKind::format, {"holds no layer groups"});
}

TEST_F(calib_dump_hostile, ContiguousNeverWritten) {
  const auto p = one_layer("late.h5", [](hid_t g) { dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 4}); });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "stores 0 bytes of data, expected 64"});
}

// =============================================================================================
// Chunks: HDF5 1.10.8 itself over-reads, over-allocates or crashes on these (see calib_dump.cpp)

class calib_dump_chunks : public DumpTest {};

TEST_F(calib_dump_chunks, MissingChunk) {
  const auto p = one_layer("holes.h5", [](hid_t g) {
    const Id plist = chunked({2, 4});
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 4}, -1, nullptr, plist);
    write_raw_chunk(d, {0, 0}, f32_bytes(ramp(8, 1, 0)));
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "chunk at [2, 0] was never written"});
}

TEST_F(calib_dump_chunks, ShortUnfilteredChunk) {
  const auto p = one_layer("short.h5", [](hid_t g) {
    const Id plist = chunked({4, 4});
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 4}, -1, nullptr, plist);
    write_raw_chunk(d, {0, 0}, std::vector<unsigned char>(10, 0x41));
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "chunk at [0, 0] stores 10 bytes; expected 64"});
}

TEST_F(calib_dump_chunks, TwoChunksAtOneAddress) {
  // A corrupt chunk index pointing two chunks at the same bytes (HDF5 1.10.8 then even writes past
  // its own reported chunk size in H5Dread_chunk, which is why chunks are read with pread).
  haddr_t first = 0, second = 0;
  const auto p = one_layer("overlap.h5", [&](hid_t g) {
    const Id plist = chunked({2, 4});
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 4}, H5T_NATIVE_FLOAT, ramp(16, 1, 0).data(), plist);
    unsigned mask = 0;
    hsize_t size = 0;
    const hsize_t a[2] = {0, 0}, b[2] = {2, 0};
    ok(H5Dget_chunk_info_by_coord(d, a, &mask, &first, &size), "H5Dget_chunk_info_by_coord");
    ok(H5Dget_chunk_info_by_coord(d, b, &mask, &second, &size), "H5Dget_chunk_info_by_coord");
  });
  ASSERT_NE(first, second);
  std::string bytes;
  {
    std::ifstream in(p, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  // In the chunk B-tree node ("TREE"), the child pointer of the second chunk now names the first.
  const std::size_t node = bytes.find("TREE");
  ASSERT_NE(node, std::string::npos);
  std::string from(8, '\0'), to(8, '\0');
  for (int i = 0; i < 8; ++i) {
    from[static_cast<std::size_t>(i)] = static_cast<char>((second >> (8 * i)) & 0xff);
    to[static_cast<std::size_t>(i)] = static_cast<char>((first >> (8 * i)) & 0xff);
  }
  const std::size_t at = bytes.find(from, node);
  ASSERT_NE(at, std::string::npos);
  bytes.replace(at, 8, to);
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "chunks at [0, 0] and [2, 0] overlap in the file"});
}

TEST_F(calib_dump_chunks, ChunkMuchLargerThanTheCall) {
  const auto p = one_layer("hugechunk.h5", [](hid_t g) {
    const Id plist = chunked({4096, 8192});
    ok(H5Pset_alloc_time(plist, H5D_ALLOC_TIME_INCR), "H5Pset_alloc_time");
    dataset(g, "x_0000", H5T_IEEE_F32LE, {2, 2}, -1, nullptr, plist, {H5S_UNLIMITED, H5S_UNLIMITED});
  });
  expect_open_error(p, ErrorKind::format,
                    {"/layer/x_0000", "chunks of 134217728 bytes", "larger than both the call (16 bytes) and 64 MiB"});
}

TEST_F(calib_dump_chunks, TooManyChunks) {
  const auto p = one_layer("tiny-chunks.h5", [](hid_t g) {
    const Id plist = chunked({1, 1});
    ok(H5Pset_alloc_time(plist, H5D_ALLOC_TIME_INCR), "H5Pset_alloc_time");
    dataset(g, "x_0000", H5T_IEEE_F32LE, {(hsize_t{1} << 20) + 1, 1}, -1, nullptr, plist);
  });
  expect_open_error(p, ErrorKind::format, {"/layer/x_0000", "split into 1048577 chunks"});
}

TEST_F(calib_dump_chunks, DecompressionBombIsStoppedAtTheChunkSize) {
  const auto p = one_layer("bomb.h5", [](hid_t g) {
    const Id plist = chunked({256, 1024});  // 1 MiB chunks
    ok(H5Pset_deflate(plist, 6), "H5Pset_deflate");
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {256, 1024}, -1, nullptr, plist);
    write_raw_chunk(d, {0, 0}, zlib_zeros(std::size_t{512} << 20));  // 512 MiB of zeros in ~0.5 MB
  });
  EXPECT_LT(fs::file_size(p), std::uintmax_t{1} << 20);
  const long before = max_rss_mb();
  expect_read_error(p, "layer", ErrorKind::format,
                    {"/layer/x_0000", "chunk at [0, 0]", "inflates to more than 1048576 bytes"});
  // Stock HDF5 would grow its buffer to 512 MiB and more (peak RSS only grows, so this can only
  // catch a regression when the test runs in its own process, as under ctest).
  EXPECT_LT(max_rss_mb() - before, 64) << "peak RSS grew while reading a 1 MiB call";
}

TEST_F(calib_dump_chunks, DeflatedChunkTooShort) {
  const auto p = one_layer("deflate-short.h5", [](hid_t g) {
    const Id plist = chunked({4, 4});
    ok(H5Pset_deflate(plist, 6), "H5Pset_deflate");
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 4}, -1, nullptr, plist);
    write_raw_chunk(d, {0, 0}, zlib(std::vector<unsigned char>(10, 1)));
  });
  expect_read_error(p, "layer", ErrorKind::format, {"/layer/x_0000", "chunk at [0, 0] decodes to 10 bytes; a chunk holds 64"});
}

TEST_F(calib_dump_chunks, CorruptDeflateStream) {
  const auto p = one_layer("deflate-bad.h5", [](hid_t g) {
    const Id plist = chunked({4, 4});
    ok(H5Pset_deflate(plist, 6), "H5Pset_deflate");
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 4}, -1, nullptr, plist);
    write_raw_chunk(d, {0, 0}, std::vector<unsigned char>(40, 0xff));
  });
  expect_read_error(p, "layer", ErrorKind::format, {"/layer/x_0000", "chunk at [0, 0]: corrupt deflate stream"});
}

TEST_F(calib_dump_chunks, ChecksumTooShort) {
  const auto p = one_layer("fletcher-short.h5", [](hid_t g) {
    const Id plist = chunked({4, 4});
    ok(H5Pset_deflate(plist, 6), "H5Pset_deflate");
    ok(H5Pset_fletcher32(plist), "H5Pset_fletcher32");
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 4}, -1, nullptr, plist);
    write_raw_chunk(d, {0, 0}, {1, 2});
  });
  expect_read_error(p, "layer", ErrorKind::format,
                    {"/layer/x_0000", "chunk at [0, 0]: 2 bytes is too short to hold its fletcher32 checksum"});
}

TEST_F(calib_dump_chunks, ChecksumMismatch) {
  const auto p = one_layer("fletcher-bad.h5", [](hid_t g) {
    const Id plist = chunked({4, 4});
    ok(H5Pset_fletcher32(plist), "H5Pset_fletcher32");
    const Id d = dataset(g, "x_0000", H5T_IEEE_F32LE, {4, 4}, -1, nullptr, plist);
    std::vector<unsigned char> bytes = f32_bytes(ramp(16, 1, 0));
    bytes.insert(bytes.end(), {0xde, 0xad, 0xbe, 0xef});
    write_raw_chunk(d, {0, 0}, bytes);
  });
  expect_read_error(p, "layer", ErrorKind::format, {"/layer/x_0000", "fletcher32 checksum mismatch (stored 0xefbeadde"});
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
  const fs::path p = write("dump.safetensors",
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

// Helpers of the calibration dump reader's tests: HDF5 files written with the HDF5 C API, a folder
// per test, and the checks that an open() or read() fails with a named, specific message.
#pragma once

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

#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "formats/calib_dump.hpp"
#include "formats/safetensors_writer.hpp"

namespace duquant::calib_dump_test {

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

inline void ok(herr_t status, const char* what) {
  if (status < 0) throw std::runtime_error(std::string("HDF5 call failed in the test: ") + what);
}

inline Id create_file(const fs::path& path, hid_t fcpl = H5P_DEFAULT) {
  return Id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, fcpl, H5P_DEFAULT), H5Fclose, "H5Fcreate");
}
inline Id group(hid_t loc, const std::string& name) {
  return Id(H5Gcreate2(loc, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose, "H5Gcreate2");
}
inline Id space(const std::vector<hsize_t>& dims, const std::vector<hsize_t>& maxdims = {}) {
  if (dims.empty()) return Id(H5Screate(H5S_SCALAR), H5Sclose, "H5Screate");
  return Id(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), maxdims.empty() ? nullptr : maxdims.data()),
            H5Sclose, "H5Screate_simple");
}
inline Id dcpl() { return Id(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "H5Pcreate"); }
inline Id chunked(const std::vector<hsize_t>& chunk) {
  Id p = dcpl();
  ok(H5Pset_chunk(p, static_cast<int>(chunk.size()), chunk.data()), "H5Pset_chunk");
  return p;
}

// Creates `name` in `loc`; writes `data` (memory type `mem`) when given.
inline Id dataset(hid_t loc, const std::string& name, hid_t type, const std::vector<hsize_t>& dims, hid_t mem = -1,
                  const void* data = nullptr, hid_t plist = H5P_DEFAULT, const std::vector<hsize_t>& maxdims = {}) {
  const Id s = space(dims, maxdims);
  Id d(H5Dcreate2(loc, name.c_str(), type, s, H5P_DEFAULT, plist, H5P_DEFAULT), H5Dclose, "H5Dcreate2");
  if (data) ok(H5Dwrite(d, mem, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), "H5Dwrite");
  return d;
}

inline void f32_dataset(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                        const std::vector<float>& v, hid_t plist = H5P_DEFAULT) {
  dataset(loc, name, H5T_IEEE_F32LE, dims, H5T_NATIVE_FLOAT, v.data(), plist);
}

inline void string_attribute(hid_t obj, const char* name, const std::string& value, bool variable) {
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
inline Id half_type() {
  Id t(H5Tcopy(H5T_IEEE_F32LE), H5Tclose, "H5Tcopy");
  ok(H5Tset_fields(t, 15, 10, 5, 0, 10), "H5Tset_fields");
  ok(H5Tset_size(t, 2), "H5Tset_size");
  ok(H5Tset_ebias(t, 15), "H5Tset_ebias");
  return t;
}

// uint16 bfloat16 bits with the attribute that marks them.
inline void bf16_dataset(hid_t loc, const std::string& name, const std::vector<hsize_t>& dims,
                         const std::vector<std::uint16_t>& bits, bool variable_attr = true, hid_t plist = H5P_DEFAULT) {
  const Id d = dataset(loc, name, H5T_STD_U16LE, dims, H5T_NATIVE_UINT16, bits.data(), plist);
  string_attribute(d, "dtype", "bfloat16", variable_attr);
}

inline void write_raw_chunk(hid_t d, std::vector<hsize_t> offset, const std::vector<unsigned char>& bytes,
                            std::uint32_t mask = 0) {
  ok(H5Dwrite_chunk(d, H5P_DEFAULT, mask, offset.data(), bytes.size(), bytes.data()), "H5Dwrite_chunk");
}

inline std::vector<unsigned char> zlib(const std::vector<unsigned char>& data) {
  uLongf n = compressBound(data.size());
  std::vector<unsigned char> out(n);
  if (compress2(out.data(), &n, data.data(), data.size(), 6) != Z_OK) throw std::runtime_error("compress2");
  out.resize(n);
  return out;
}

// A zlib stream of `total` zero bytes, made without holding them.
inline std::vector<unsigned char> zlib_zeros(std::size_t total) {
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

inline std::vector<unsigned char> f32_bytes(const std::vector<float>& v) {
  std::vector<unsigned char> b(v.size() * 4);
  std::memcpy(b.data(), v.data(), b.size());
  return b;
}

inline std::vector<std::uint32_t> bits(const std::vector<float>& v) {
  std::vector<std::uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * 4);
  return b;
}

inline float from_bits(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::vector<float> ramp(std::size_t n, float scale, float offset) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = static_cast<float>(i) * scale + offset;
  return v;
}

inline long max_rss_mb() {
  rusage r{};
  getrusage(RUSAGE_SELF, &r);
  return r.ru_maxrss / 1024;
}

// ---------------------------------------------------------------------------------------------
// Fixture: the test's own folder (common/test_paths.hpp).

class DumpTest : public ::testing::Test {
 protected:
  void SetUp() override {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // failures the tests provoke stay quiet
    dir_ = duquant::test::temp_dir();
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

inline bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// `e` is of `kind`, and its message names the file and holds every phrase.
inline void expect_error_message(const Error& e, const fs::path& path, ErrorKind kind,
                                 std::initializer_list<std::string> phrases) {
  const std::string what = e.what();
  EXPECT_EQ(duquant::kind_name(e.kind()), std::string(duquant::kind_name(kind))) << what;
  EXPECT_TRUE(contains(what, path.string())) << "message does not name the file: " << what;
  for (const std::string& phrase : phrases)
    EXPECT_TRUE(contains(what, phrase)) << "message: " << what << "\nexpected to contain: " << phrase;
}

// open() must throw an Error of `kind` whose message names the file and holds every phrase.
inline void expect_open_error(const fs::path& path, ErrorKind kind, std::initializer_list<std::string> phrases) {
  try {
    const CalibDump dump = CalibDump::open(path);
    ADD_FAILURE() << path << " opened with " << dump.layers().size() << " layer(s)";
  } catch (const Error& e) {
    expect_error_message(e, path, kind, phrases);
  }
}

// open() succeeds; read() of the layer's first call throws as described.
inline void expect_read_error(const fs::path& path, const std::string& layer, ErrorKind kind,
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
    expect_error_message(e, path, kind, phrases);
  }
}

}  // namespace duquant::calib_dump_test

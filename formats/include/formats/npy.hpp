// NumPy .npy arrays: writing (format 1.0, as numpy.save) and strict reading.
//
// Layout: "\x93NUMPY" | major 1 | minor 0 | u16 LE header length | header | data, where the header
// is a Python dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (16, 16), } padded with
// spaces and a final '\n' so that data starts at a multiple of 64. Only simple little-endian dtypes
// are accepted when reading (no object arrays, no structured or big-endian dtypes); C and Fortran
// order are both read (the typed accessors return C order); versions 1.0, 2.0 and 3.0 are read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace duquant::formats {

// A dtype duquant reads or writes in .npy form.
enum class NpyType { f4, f8, i8, i4, i1, u1, b1, unicode };

struct NpyArray {
  NpyType type{};
  std::string descr;                 // as written: "<f4", "|u1", "<U127", ...
  std::uint64_t itemsize = 0;        // bytes per element (4 * n for <U{n})
  std::vector<std::uint64_t> shape;  // () for a scalar
  std::uint64_t numel = 1;
  bool fortran_order = false;       // data stored column-major (numpy writes transposed views so)
  std::span<const std::byte> data;  // numel * itemsize bytes, inside the caller's buffer
};

// The complete .npy bytes of an array (header + data).
std::string npy_bytes(std::string_view descr, const std::vector<std::uint64_t>& shape, std::span<const std::byte> data);
std::string npy_f32(const std::vector<std::uint64_t>& shape, std::span<const float> values);
std::string npy_i64(const std::vector<std::uint64_t>& shape, std::span<const std::int64_t> values);
// A 0-d unicode scalar ('<U{n}', n = code points), as numpy.savez stores a Python str.
std::string npy_unicode_scalar(std::string_view utf8);
// The size of what npy_bytes() returns for `data_bytes` bytes of data: its padded header + the data.
std::uint64_t npy_size(std::string_view descr, const std::vector<std::uint64_t>& shape, std::uint64_t data_bytes);

// Parses one .npy file held in `bytes`. Throws duquant::Error (format) naming `label`.
NpyArray parse_npy(std::span<const std::byte> bytes, const std::string& label);

// Element access for parsed arrays, in C (row-major) order whatever the stored order (memcpy: npy
// data may sit at any alignment inside a zip).
std::vector<float> npy_to_f32(const NpyArray& a, const std::string& label);         // <f4 only
std::vector<std::int64_t> npy_to_i64(const NpyArray& a, const std::string& label);  // <i8 only
std::string npy_unicode_to_utf8(const NpyArray& a, const std::string& label);       // 0-d <U{n}

}  // namespace duquant::formats

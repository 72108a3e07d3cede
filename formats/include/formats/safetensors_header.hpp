// Parsing and validation of one safetensors file's header, from its bytes.
//
// File layout: u64 little-endian N | N bytes of UTF-8 JSON | data region. The JSON object maps
// tensor names to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to the data
// region) plus an optional "__metadata__" string map. Validation is always on and follows the
// reference implementation's rules; see docs/checkpoint-reader.md for the full list.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "formats/dtype.hpp"

namespace duquant::formats {

// Largest header accepted, as the reference implementation (checked before any allocation).
inline constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;
// Longest tensor name, in bytes and in dot-separated parts, accepted in a header: far above any
// real model's (under 200 bytes and 12 parts), low enough that no name can exhaust the stack or
// the time of the code that splits, orders and matches names (docs/checkpoint-reader.md).
inline constexpr std::uint64_t kMaxTensorNameBytes = 4096;
inline constexpr std::uint64_t kMaxTensorNameParts = 256;
// The start of `name` for a message: at most its first 64 bytes, then "...".
std::string name_for_message(const std::string& name);

struct TensorEntry {
  std::string name;
  DType dtype{};
  std::vector<std::uint64_t> shape;
  std::uint64_t numel = 0;  // product of shape (1 for a scalar)
  std::uint64_t begin = 0;  // byte offsets inside the data region, end exclusive
  std::uint64_t end = 0;
};

struct SafetensorsHeader {
  std::uint64_t header_bytes = 0;    // N
  std::uint64_t data_start = 0;      // 8 + N: where the data region begins in the file
  std::vector<TensorEntry> tensors;  // sorted by data offset: the order the data is stored in
  std::map<std::string, std::string> metadata;
};

// Parses and validates the header of a whole file held in `file` (mapped, or a buffer).
// Never reads tensor data. Throws duquant::Error (format) naming `label`, the tensor and numbers.
SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, const std::string& label);

}  // namespace duquant::formats

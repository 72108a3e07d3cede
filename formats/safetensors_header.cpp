#include "formats/safetensors_header.hpp"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "duquant/error.hpp"
#include "formats/strict_json.hpp"

#include <fmt/ranges.h>

namespace duquant::formats {
namespace {

using nlohmann::json;

std::string shape_text(const std::vector<std::uint64_t>& shape) {
  return fmt::format("[{}]", fmt::join(shape, ", "));
}

std::uint64_t as_count(const json& v, const std::string& label, const std::string& tensor,
                       const char* field) {
  DQ_CHECK(v.is_number_unsigned(), format,
           "{}: tensor '{}': {} must hold non-negative integers, found {} ({})", label, tensor, field,
           json_kind(v), dump_json(v));
  return v.get<std::uint64_t>();
}

TensorEntry parse_entry(const std::string& name, const json& v, const std::string& label) {
  DQ_CHECK(name.size() <= kMaxTensorNameBytes, format,
           "{}: tensor '{}': a name of {} bytes; at most {} are accepted", label, name_for_message(name), name.size(),
           kMaxTensorNameBytes);
  const auto parts = static_cast<std::uint64_t>(std::count(name.begin(), name.end(), '.')) + 1;
  DQ_CHECK(parts <= kMaxTensorNameParts, format,
           "{}: tensor '{}': a name of {} dot-separated parts; at most {} are accepted", label,
           name_for_message(name), parts, kMaxTensorNameParts);
  DQ_CHECK(v.is_object(), format, "{}: tensor '{}': entry must be an object, found {}", label, name,
           json_kind(v));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    DQ_CHECK(v.contains(field), format, "{}: tensor '{}': missing \"{}\"", label, name, field);

  TensorEntry t;
  t.name = name;
  const json& dtype = v["dtype"];
  DQ_CHECK(dtype.is_string(), format, "{}: tensor '{}': dtype must be a string, found {}", label, name,
           json_kind(dtype));
  const auto parsed = parse_dtype(dtype.get<std::string>());
  DQ_CHECK(parsed.has_value(), format, "{}: tensor '{}': unknown dtype '{}'", label, name,
           dtype.get<std::string>());
  t.dtype = *parsed;

  const json& shape = v["shape"];
  DQ_CHECK(shape.is_array(), format, "{}: tensor '{}': shape must be an array, found {}", label, name,
           json_kind(shape));
  t.numel = 1;
  bool overflow = false;
  for (const json& d : shape) {
    const std::uint64_t dim = as_count(d, label, name, "shape");
    t.shape.push_back(dim);
    if (!overflow && __builtin_mul_overflow(t.numel, dim, &t.numel)) overflow = true;
  }
  DQ_CHECK(!overflow, format, "{}: tensor '{}': shape {} has 2^64 or more elements", label, name,
           shape_text(t.shape));

  const json& offsets = v["data_offsets"];
  DQ_CHECK(offsets.is_array() && offsets.size() == 2, format,
           "{}: tensor '{}': data_offsets must be an array of two integers, found {}", label, name,
           dump_json(offsets));
  t.begin = as_count(offsets[0], label, name, "data_offsets");
  t.end = as_count(offsets[1], label, name, "data_offsets");
  DQ_CHECK(t.begin <= t.end, format, "{}: tensor '{}': data_offsets [{}, {}] end before they begin",
           label, name, t.begin, t.end);

  std::uint64_t bits = 0;
  DQ_CHECK(!__builtin_mul_overflow(t.numel, std::uint64_t{dtype_bits(t.dtype)}, &bits), format,
           "{}: tensor '{}': {} elements of {} ({} bits each) overflow a 64-bit bit count", label, name,
           t.numel, dtype_name(t.dtype), dtype_bits(t.dtype));
  DQ_CHECK(bits % 8 == 0, format, "{}: tensor '{}': {} elements of {} ({} bits each) are not a whole number of bytes",
           label, name, t.numel, dtype_name(t.dtype), dtype_bits(t.dtype));
  DQ_CHECK(bits / 8 == t.end - t.begin, format,
           "{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] span {} bytes",
           label, name, shape_text(t.shape), dtype_name(t.dtype), bits / 8, t.begin, t.end,
           t.end - t.begin);
  return t;
}

}  // namespace

std::string name_for_message(const std::string& name) {
  if (name.size() <= 64) return name;
  std::size_t n = 64;
  while (n > 0 && (static_cast<unsigned char>(name[n]) & 0xc0) == 0x80) --n;  // not inside a UTF-8 sequence
  return name.substr(0, n) + "...";
}

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, const std::string& label) {
  DQ_CHECK(file.size() >= 8, format, "{}: {} bytes is too short for a safetensors file (8-byte header length)",
           label, file.size());
  std::uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);  // little-endian on every supported host
  DQ_CHECK(n <= kMaxHeaderBytes, format, "{}: header length {} exceeds the {}-byte limit", label, n,
           kMaxHeaderBytes);
  DQ_CHECK(n <= file.size() - 8, format, "{}: header length {} runs past the end of the {}-byte file", label,
           n, file.size());

  SafetensorsHeader h;
  h.header_bytes = n;
  h.data_start = 8 + n;
  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), n);
  DQ_CHECK(!text.empty() && text.front() == '{', format, "{}: header does not start with '{{' (first byte {})",
           label, text.empty() ? std::string("none: empty header") : fmt::format("0x{:02x}", static_cast<unsigned char>(text.front())));
  const json root = parse_strict_json(text, label + ": header", 3);
  DQ_CHECK(root.is_object(), format, "{}: header must be a JSON object", label);

  for (const auto& [key, value] : root.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      DQ_CHECK(value.is_object(), format, "{}: __metadata__ must be an object of strings, found {}", label,
               json_kind(value));
      for (const auto& [mk, mv] : value.items()) {
        DQ_CHECK(mv.is_string(), format, "{}: __metadata__['{}'] must be a string, found {}", label, mk,
                 json_kind(mv));
        h.metadata.emplace(mk, mv.get<std::string>());
      }
      continue;
    }
    h.tensors.push_back(parse_entry(key, value, label));
  }

  // Data must be laid out back to back from offset 0, in offset order, and fill the region exactly.
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    if (a.end != b.end) return a.end < b.end;
    return a.name < b.name;
  });
  const std::uint64_t data_bytes = file.size() - h.data_start;
  std::uint64_t expected = 0;
  const TensorEntry* previous = nullptr;
  for (const TensorEntry& t : h.tensors) {
    if (t.begin < expected)
      fail(ErrorKind::format, "{}: tensor '{}' at data_offsets [{}, {}] overlaps tensor '{}' which ends at {}",
           label, t.name, t.begin, t.end, previous->name, expected);
    if (t.begin > expected)
      fail(ErrorKind::format, "{}: gap of {} bytes before tensor '{}' (data_offsets [{}, {}], previous data ends at {})",
           label, t.begin - expected, t.name, t.begin, t.end, expected);
    expected = t.end;
    previous = &t;
  }
  if (expected < data_bytes)
    fail(ErrorKind::format, "{}: {} trailing bytes after the last tensor (tensors cover {} of the {}-byte data region)",
         label, data_bytes - expected, expected, data_bytes);
  if (expected > data_bytes)
    fail(ErrorKind::format, "{}: tensors need {} bytes of data but the file holds only {} ({} short)",
         label, expected, data_bytes, expected - data_bytes == 1 ? std::string("1 byte") : fmt::format("{} bytes", expected - data_bytes));
  return h;
}

}  // namespace duquant::formats

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

std::string shape_text(const std::vector<std::uint64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

std::uint64_t as_count(const json& v, const std::string& label, const std::string& tensor, const char* field) {
  DQ_CHECK(v.is_number_unsigned(), format, "{}: tensor '{}': {} must hold non-negative integers, found {} ({})", label,
           tensor, field, json_kind(v), dump_json(v));
  return v.get<std::uint64_t>();
}

TensorEntry parse_entry(const std::string& name, const json& v, const std::string& label) {
  DQ_CHECK(name.size() <= kMaxTensorNameBytes, format, "{}: tensor '{}': a name of {} bytes; at most {} are accepted",
           label, name_for_message(name), name.size(), kMaxTensorNameBytes);
  const auto parts = static_cast<std::uint64_t>(std::count(name.begin(), name.end(), '.')) + 1;
  DQ_CHECK(parts <= kMaxTensorNameParts, format,
           "{}: tensor '{}': a name of {} dot-separated parts; at most {} are accepted", label, name_for_message(name),
           parts, kMaxTensorNameParts);
  DQ_CHECK(v.is_object(), format, "{}: tensor '{}': entry must be an object, found {}", label, name, json_kind(v));
  for (const char* field : {"dtype", "shape", "data_offsets"})
    DQ_CHECK(v.contains(field), format, "{}: tensor '{}': missing \"{}\"", label, name, field);

  TensorEntry t;
  t.name = name;
  const json& dtype = v["dtype"];
  DQ_CHECK(dtype.is_string(), format, "{}: tensor '{}': dtype must be a string, found {}", label, name,
           json_kind(dtype));
  const auto parsed = parse_dtype(dtype.get<std::string>());
  DQ_CHECK(parsed.has_value(), format, "{}: tensor '{}': unknown dtype '{}'", label, name, dtype.get<std::string>());
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
  DQ_CHECK(!overflow, format, "{}: tensor '{}': shape {} has 2^64 or more elements", label, name, shape_text(t.shape));

  const json& offsets = v["data_offsets"];
  DQ_CHECK(offsets.is_array() && offsets.size() == 2, format,
           "{}: tensor '{}': data_offsets must be an array of two integers, found {}", label, name, dump_json(offsets));
  t.begin = as_count(offsets[0], label, name, "data_offsets");
  t.end = as_count(offsets[1], label, name, "data_offsets");
  DQ_CHECK(t.begin <= t.end, format, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", label, name,
           t.begin, t.end);

  std::uint64_t bits = 0;
  DQ_CHECK(!__builtin_mul_overflow(t.numel, std::uint64_t{dtype_bits(t.dtype)}, &bits), format,
           "{}: tensor '{}': {} elements of {} ({} bits each) overflow a 64-bit bit count", label, name, t.numel,
           dtype_name(t.dtype), dtype_bits(t.dtype));
  DQ_CHECK(bits % 8 == 0, format, "{}: tensor '{}': {} elements of {} ({} bits each) are not a whole number of bytes",
           label, name, t.numel, dtype_name(t.dtype), dtype_bits(t.dtype));
  DQ_CHECK(bits / 8 == t.end - t.begin, format,
           "{}: tensor '{}': shape {} of {} needs {} bytes but data_offsets [{}, {}] span {} bytes", label, name,
           shape_text(t.shape), dtype_name(t.dtype), bits / 8, t.begin, t.end, t.end - t.begin);
  return t;
}

// The common case without a DOM: one SAX pass reads a header of well-formed entries straight into
// TensorEntry values (building, then freeing, a DOM of 100,000 entries was half of list-linears'
// time). It accepts only what parse_entry() accepts: every entry an object of exactly "dtype" (a
// known dtype), "shape" and "data_offsets" (non-negative integers), an optional "__metadata__"
// object of strings (or null), no key twice, nothing nested deeper, every check of parse_entry()
// passed. On anything else it gives up (returns false) and the header is read again through the
// DOM, which gives the exact message; so the result, and every message, is the DOM path's (the
// entries are sorted by offset afterwards, whatever the order they were read in).
class FastHeader {
 public:
  explicit FastHeader(SafetensorsHeader& h) : h_(h) {}

  bool null() {
    if (depth_ == 1 && metadata_key_) return end_metadata_value();  // "__metadata__": null
    return false;
  }
  bool boolean(bool /*v*/) { return false; }
  bool number_integer(json::number_integer_t /*v*/) { return false; }
  bool number_unsigned(json::number_unsigned_t v) {
    if (depth_ != 3) return false;
    if (field_ == Field::shape) {
      entry_.shape.push_back(v);
      return true;
    }
    if (field_ == Field::data_offsets && offsets_ < 2) {
      (offsets_ == 0 ? entry_.begin : entry_.end) = v;
      ++offsets_;
      return true;
    }
    return false;
  }
  bool number_float(json::number_float_t /*v*/, const json::string_t& /*text*/) { return false; }
  bool string(json::string_t& v) {
    if (depth_ == 2 && in_metadata_) return h_.metadata.emplace(std::move(key_), std::move(v)).second;
    if (depth_ == 2 && field_ == Field::dtype) {
      const auto parsed = parse_dtype(v);
      if (!parsed) return false;
      entry_.dtype = *parsed;
      field_ = Field::none;
      return true;
    }
    return false;
  }
  bool binary(json::binary_t& /*v*/) { return false; }
  bool start_object(std::size_t /*elements*/) {
    if (depth_ == 0) {
      depth_ = 1;
      return true;
    }
    if (depth_ != 1) return false;
    depth_ = 2;
    if (metadata_key_) {
      in_metadata_ = true;
      return true;
    }
    entry_ = TensorEntry{};
    entry_.name = std::move(key_);
    seen_ = 0;
    return true;
  }
  bool key(json::string_t& k) {
    if (depth_ == 1) {
      metadata_key_ = k == "__metadata__";
      if (metadata_key_ && metadata_seen_) return false;  // twice
      key_ = std::move(k);
      return true;
    }
    if (depth_ != 2) return false;
    if (in_metadata_) {
      key_ = std::move(k);
      return true;
    }
    const unsigned bit = k == "dtype" ? 1U : k == "shape" ? 2U : k == "data_offsets" ? 4U : 0U;
    if (bit == 0 || (seen_ & bit) != 0) return false;  // another field, or one twice
    seen_ |= bit;
    field_ = bit == 1 ? Field::dtype : bit == 2 ? Field::shape : Field::data_offsets;
    return true;
  }
  bool end_object() {
    if (depth_ == 1) {  // the root
      depth_ = 0;
      done_ = true;
      return true;
    }
    depth_ = 1;
    if (in_metadata_) {
      in_metadata_ = false;
      return end_metadata_value();
    }
    return seen_ == 7 && finish_entry();
  }
  bool start_array(std::size_t /*elements*/) {
    if (depth_ != 2 || in_metadata_ || (field_ != Field::shape && field_ != Field::data_offsets)) return false;
    depth_ = 3;
    offsets_ = 0;
    return true;
  }
  bool end_array() {
    if (depth_ != 3) return false;
    depth_ = 2;
    const bool ok = field_ != Field::data_offsets || offsets_ == 2;
    field_ = Field::none;
    return ok;
  }
  template <class Exception>
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const Exception& /*ex*/) {
    return false;
  }

  bool done() const { return done_; }

 private:
  enum class Field { none, dtype, shape, data_offsets };

  bool end_metadata_value() {
    metadata_seen_ = true;
    metadata_key_ = false;
    return true;
  }
  // parse_entry()'s checks, in its terms; any failure gives up.
  bool finish_entry() {
    TensorEntry& t = entry_;
    if (t.name.size() > kMaxTensorNameBytes) return false;
    if (static_cast<std::uint64_t>(std::count(t.name.begin(), t.name.end(), '.')) + 1 > kMaxTensorNameParts)
      return false;
    t.numel = 1;
    for (const std::uint64_t dim : t.shape)
      if (__builtin_mul_overflow(t.numel, dim, &t.numel)) return false;
    if (t.begin > t.end) return false;
    std::uint64_t bits = 0;
    if (__builtin_mul_overflow(t.numel, std::uint64_t{dtype_bits(t.dtype)}, &bits)) return false;
    if (bits % 8 != 0 || bits / 8 != t.end - t.begin) return false;
    h_.tensors.push_back(std::move(t));
    return true;
  }

  SafetensorsHeader& h_;
  int depth_ = 0;  // containers open: 1 in the root, 2 in an entry or the metadata, 3 in an array
  bool done_ = false;
  bool metadata_key_ = false, metadata_seen_ = false, in_metadata_ = false;
  std::string key_;
  TensorEntry entry_;
  unsigned seen_ = 0;  // fields of the entry seen: 1 dtype, 2 shape, 4 data_offsets
  Field field_ = Field::none;
  int offsets_ = 0;
};

// The fast path above; false when the DOM path must read the header.
bool parse_entries_fast(std::string_view text, SafetensorsHeader& h) {
  if (text.find('\0') != std::string_view::npos) return false;  // parse_strict_json's message
  FastHeader handler(h);
  bool ok = false;
  try {
    ok = json::sax_parse(text.begin(), text.end(), &handler, json::input_format_t::json, /*strict=*/true) &&
         handler.done();
  } catch (const json::exception&) {
    ok = false;
  }
  if (ok) {  // a name twice is the DOM path's "duplicate key"
    std::vector<std::string_view> names;
    names.reserve(h.tensors.size());
    for (const TensorEntry& t : h.tensors) names.emplace_back(t.name);
    std::sort(names.begin(), names.end());
    ok = std::adjacent_find(names.begin(), names.end()) == names.end();
  }
  if (!ok) {
    h.tensors.clear();
    h.metadata.clear();
  }
  return ok;
}

}  // namespace

std::string name_for_message(const std::string& name) {
  if (name.size() <= 64) return name;
  std::size_t n = 64;
  while (n > 0 && (static_cast<unsigned char>(name[n]) & 0xc0) == 0x80) --n;  // not inside a UTF-8 sequence
  return name.substr(0, n) + "...";
}

SafetensorsHeader parse_safetensors_header(std::span<const std::byte> file, const std::string& label) {
  DQ_CHECK(file.size() >= 8, format, "{}: {} bytes is too short for a safetensors file (8-byte header length)", label,
           file.size());
  std::uint64_t n = 0;
  std::memcpy(&n, file.data(), 8);  // little-endian on every supported host
  DQ_CHECK(n <= kMaxHeaderBytes, format, "{}: header length {} exceeds the {}-byte limit", label, n, kMaxHeaderBytes);
  DQ_CHECK(n <= file.size() - 8, format, "{}: header length {} runs past the end of the {}-byte file", label, n,
           file.size());

  SafetensorsHeader h;
  h.header_bytes = n;
  h.data_start = 8 + n;
  const std::string_view text(reinterpret_cast<const char*>(file.data() + 8), n);
  DQ_CHECK(!text.empty() && text.front() == '{', format, "{}: header does not start with '{{' (first byte {})", label,
           text.empty() ? std::string("none: empty header")
                        : fmt::format("0x{:02x}", static_cast<unsigned char>(text.front())));
  const json root = parse_entries_fast(text, h) ? json::object() : parse_strict_json(text, label + ": header", 3);
  DQ_CHECK(root.is_object(), format, "{}: header must be a JSON object", label);

  for (const auto& [key, value] : root.items()) {  // the DOM path: what the fast one gave up on
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      DQ_CHECK(value.is_object(), format, "{}: __metadata__ must be an object of strings, found {}", label,
               json_kind(value));
      for (const auto& [mk, mv] : value.items()) {
        DQ_CHECK(mv.is_string(), format, "{}: __metadata__['{}'] must be a string, found {}", label, mk, json_kind(mv));
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
      fail(ErrorKind::format, "{}: tensor '{}' at data_offsets [{}, {}] overlaps tensor '{}' which ends at {}", label,
           t.name, t.begin, t.end, previous->name, expected);
    if (t.begin > expected)
      fail(ErrorKind::format,
           "{}: gap of {} bytes before tensor '{}' (data_offsets [{}, {}], previous data ends at {})", label,
           t.begin - expected, t.name, t.begin, t.end, expected);
    expected = t.end;
    previous = &t;
  }
  if (expected < data_bytes)
    fail(ErrorKind::format, "{}: {} trailing bytes after the last tensor (tensors cover {} of the {}-byte data region)",
         label, data_bytes - expected, expected, data_bytes);
  if (expected > data_bytes)
    fail(ErrorKind::format, "{}: tensors need {} bytes of data but the file holds only {} ({} short)", label, expected,
         data_bytes,
         expected - data_bytes == 1 ? std::string("1 byte") : fmt::format("{} bytes", expected - data_bytes));
  return h;
}

}  // namespace duquant::formats

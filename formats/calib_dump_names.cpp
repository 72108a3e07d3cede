// Calibration dumps: messages from untrusted names, call shapes and names (calib_dump.cpp).
#include "calib_dump_internal.hpp"

namespace duquant::formats::calib_internal {

// ---------------------------------------------------------------------------------------------
// Messages

// Length of the valid UTF-8 sequence starting at s[i] (RFC 3629: no overlong forms, no
// surrogates, at most U+10FFFF), or 0.
std::size_t utf8_length(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) return 1;
  std::size_t n = 0;
  unsigned char lo = 0x80, hi = 0xbf;  // allowed range of the second byte
  if (c >= 0xc2 && c <= 0xdf) {
    n = 2;
  } else if (c >= 0xe0 && c <= 0xef) {
    n = 3;
    if (c == 0xe0) lo = 0xa0;
    if (c == 0xed) hi = 0x9f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    n = 4;
    if (c == 0xf0) lo = 0x90;
    if (c == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (i + n > s.size() || b(1) < lo || b(1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (b(k) < 0x80 || b(k) > 0xbf) return 0;
  return n;
}

// Names and HDF5's texts come from untrusted files: control bytes and bytes that are not valid
// UTF-8 are escaped (\xNN), and very long texts are cut.
std::string printable(std::string_view s) {
  std::string out;
  const std::size_t limit = 256;
  std::size_t i = 0;
  while (i < s.size() && i < limit) {
    const auto c = static_cast<unsigned char>(s[i]);
    const std::size_t n = utf8_length(s, i);
    if (n == 0 || c < 0x20 || c == 0x7f) {
      out += fmt::format("\\x{:02x}", c);
      ++i;
    } else {
      out.append(s.substr(i, n));
      i += n;
    }
  }
  if (s.size() > limit) out += fmt::format("... ({} bytes)", s.size());
  return out;
}

// ---------------------------------------------------------------------------------------------
// Shapes, names

Shape check_dims(std::span<const std::uint64_t> dims, const std::string& where) {
  const std::size_t rank = dims.size();
  if (rank == 0) bad(where, "wrong rank: 0 (a scalar); {}", kCallShape);
  if (rank < static_cast<std::size_t>(kMinRank) || rank > static_cast<std::size_t>(kMaxRank))
    bad(where, "wrong rank: {} (dims {}); {}", rank, dims_text(dims), kCallShape);
  for (std::size_t i = 0; i < rank; ++i)
    if (dims[i] == 0)
      bad(where, "zero-sized dimension {} in dims {}; a call holds at least one token and one feature", i,
          dims_text(dims));
  std::uint64_t n = 1;
  for (const std::uint64_t d : dims) {
    if (n > std::numeric_limits<std::uint64_t>::max() / d)
      bad(where, "dims {} overflow 64 bits (their element count); a call holds at most {} elements", dims_text(dims),
          kMaxCallElements);
    n *= d;
  }
  if (n > kMaxCallElements)
    bad(where, "dims {} hold {} elements, more than the {} (2^30) a call may hold", dims_text(dims), n,
        kMaxCallElements);
  Shape s;
  s.cols = dims[rank - 1];
  s.rows = n / s.cols;
  s.numel = n;
  return s;
}

bool all_digits(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// "x_" and at least 4 decimal digits; the number is the call index.
std::optional<std::int64_t> call_index(std::string_view name) {
  if (name.size() < 6 || name.substr(0, 2) != "x_" || !all_digits(name.substr(2))) return std::nullopt;
  std::string_view digits = name.substr(2);
  while (digits.size() > 1 && digits.front() == '0') digits.remove_prefix(1);
  if (digits.size() > kMaxIndexDigits) return std::nullopt;
  std::int64_t v = 0;
  for (const char c : digits) v = v * 10 + (c - '0');
  return v;
}

std::int64_t checked_call_index(std::string_view name, const std::string& where) {
  const auto index = call_index(name);
  if (!index) {
    if (name.size() >= 6 && name.substr(0, 2) == "x_" && all_digits(name.substr(2)))
      bad(where, "call index of '{}' has more than {} significant digits", printable(name), kMaxIndexDigits);
    bad(where, "bad call name '{}': expected 'x_' followed by at least 4 decimal digits (x_0000, x_0001, ...)",
        printable(name));
  }
  return *index;
}

// Layer names are matched against checkpoint tensor names (UTF-8 JSON): valid UTF-8 without
// control characters.
void check_layer_name(std::string_view name, const std::string& where) {
  if (name.empty()) bad(where, "empty layer name");
  for (std::size_t i = 0; i < name.size();) {
    const auto c = static_cast<unsigned char>(name[i]);
    const std::size_t n = utf8_length(name, i);
    if (n == 0) bad(where, "layer name is not valid UTF-8 (byte 0x{:02x} at {})", c, i);
    if (c < 0x20 || c == 0x7f) bad(where, "layer name contains the control byte 0x{:02x}", c);
    i += n;
  }
}

// Sorts a layer's calls by index and refuses two names for one index (x_0001 and x_00001).
void sort_calls(Layer& layer, const std::string& where) {
  std::vector<std::size_t> order(layer.calls.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    const DumpCall& x = layer.calls[a];
    const DumpCall& y = layer.calls[b];
    return x.index != y.index ? x.index < y.index : x.name < y.name;
  });
  Layer sorted;
  for (const std::size_t i : order) {
    if (!sorted.calls.empty() && sorted.calls.back().index == layer.calls[i].index)
      bad(where, "calls '{}' and '{}' both have index {}; every call index must be distinct",
          printable(sorted.calls.back().name), printable(layer.calls[i].name), layer.calls[i].index);
    sorted.calls.push_back(std::move(layer.calls[i]));
    sorted.refs.push_back(layer.refs[i]);
  }
  layer = std::move(sorted);
}

}  // namespace duquant::formats::calib_internal

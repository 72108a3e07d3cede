#include "formats/npy.hpp"

#include <cctype>
#include <cstring>
#include <optional>

#include "duquant/error.hpp"

namespace duquant::formats {
namespace {

constexpr char kMagic[] = "\x93NUMPY";

std::string shape_repr(const std::vector<std::uint64_t>& shape) {
  if (shape.empty()) return "()";
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

// A tokenizer for the Python literal of an npy header: a dict of str keys whose values are str,
// True/False, or a tuple of non-negative ints. Nothing else NumPy writes appears there.
class HeaderParser {
 public:
  HeaderParser(std::string_view text, const std::string& label) : t_(text), label_(label) {}

  void skip() {
    while (i_ < t_.size() && (t_[i_] == ' ' || t_[i_] == '\t' || t_[i_] == '\n' || t_[i_] == '\r')) ++i_;
  }
  bool accept(char c) {
    skip();
    if (i_ < t_.size() && t_[i_] == c) {
      ++i_;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!accept(c)) error(fmt::format("expected '{}'", c));
  }
  [[noreturn]] void error(const std::string& what) const {
    fail(ErrorKind::format, "{}: npy header: {} at character {} of \"{}\"", label_, what, i_, std::string(t_));
  }
  std::string string() {
    skip();
    if (i_ >= t_.size() || (t_[i_] != '\'' && t_[i_] != '"')) error("expected a string");
    const char quote = t_[i_++];
    const std::size_t start = i_;
    while (i_ < t_.size() && t_[i_] != quote) {
      if (t_[i_] == '\\') error("escape sequences are not accepted");
      ++i_;
    }
    if (i_ >= t_.size()) error("unterminated string");
    return std::string(t_.substr(start, i_++ - start));
  }
  bool boolean() {
    skip();
    if (t_.substr(i_, 4) == "True") return i_ += 4, true;
    if (t_.substr(i_, 5) == "False") return i_ += 5, false;
    error("expected True or False");
  }
  std::uint64_t integer() {
    skip();
    const std::size_t start = i_;
    std::uint64_t v = 0;
    while (i_ < t_.size() && std::isdigit(static_cast<unsigned char>(t_[i_]))) {
      const std::uint64_t digit = static_cast<std::uint64_t>(t_[i_] - '0');
      if (__builtin_mul_overflow(v, 10u, &v) || __builtin_add_overflow(v, digit, &v))
        error("dimension overflows 64 bits");
      ++i_;
    }
    if (i_ == start) error("expected a non-negative integer dimension");
    if (i_ < t_.size() && (t_[i_] == 'L' || t_[i_] == '.' || t_[i_] == 'e')) error("dimension is not a plain integer");
    return v;
  }
  std::vector<std::uint64_t> tuple() {
    expect('(');
    std::vector<std::uint64_t> dims;
    if (accept(')')) return dims;
    while (true) {
      dims.push_back(integer());
      if (accept(')')) {
        if (dims.size() == 1) error("a one-element tuple needs a trailing comma");
        return dims;
      }
      expect(',');
      if (accept(')')) return dims;
    }
  }
  bool at_end() {
    skip();
    return i_ == t_.size();
  }

 private:
  std::string_view t_;
  const std::string& label_;
  std::size_t i_ = 0;
};

struct Descr {
  NpyType type;
  std::uint64_t itemsize;
};

std::optional<Descr> parse_descr(const std::string& d) {
  if (d == "<f4") return Descr{NpyType::f4, 4};
  if (d == "<f8") return Descr{NpyType::f8, 8};
  if (d == "<i8") return Descr{NpyType::i8, 8};
  if (d == "<i4") return Descr{NpyType::i4, 4};
  if (d == "|i1") return Descr{NpyType::i1, 1};
  if (d == "|u1") return Descr{NpyType::u1, 1};
  if (d == "|b1") return Descr{NpyType::b1, 1};
  if (d.size() > 2 && d.compare(0, 2, "<U") == 0 && d.size() <= 12) {
    std::uint64_t n = 0;
    for (std::size_t i = 2; i < d.size(); ++i) {
      if (!std::isdigit(static_cast<unsigned char>(d[i]))) return std::nullopt;
      n = n * 10 + static_cast<std::uint64_t>(d[i] - '0');
    }
    if (n == 0 || d[2] == '0') return std::nullopt;
    return Descr{NpyType::unicode, 4 * n};
  }
  return std::nullopt;
}

void append_utf8(std::string& out, std::uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xe0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    out += static_cast<char>(0xf0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3f));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
}

std::vector<std::uint32_t> utf8_to_code_points(std::string_view s) {
  std::vector<std::uint32_t> cps;
  for (std::size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    const int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    DQ_CHECK(len > 0 && i + static_cast<std::size_t>(len) <= s.size(), internal, "invalid UTF-8 in npy text");
    std::uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (int k = 1; k < len; ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3f);
    cps.push_back(cp);
    i += static_cast<std::size_t>(len);
  }
  return cps;
}

}  // namespace

namespace {

// The header's dict, padded with spaces and ended by '\n': magic(6) + version(2) + length(2) + dict
// + padding + '\n' is a multiple of 64, as numpy writes.
std::string padded_header_dict(std::string_view descr, const std::vector<std::uint64_t>& shape) {
  std::string dict = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': {}, }}", descr, shape_repr(shape));
  const std::size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict += '\n';
  return dict;
}

}  // namespace

std::uint64_t npy_size(std::string_view descr, const std::vector<std::uint64_t>& shape, std::uint64_t data_bytes) {
  return 10 + padded_header_dict(descr, shape).size() + data_bytes;
}

std::string npy_bytes(std::string_view descr, const std::vector<std::uint64_t>& shape,
                      std::span<const std::byte> data) {
  const std::string dict = padded_header_dict(descr, shape);
  std::string out(kMagic, 6);
  out += '\x01';
  out += '\x00';
  const auto len = static_cast<std::uint16_t>(dict.size());
  out += static_cast<char>(len & 0xff);
  out += static_cast<char>(len >> 8);
  out += dict;
  out.append(reinterpret_cast<const char*>(data.data()), data.size());
  return out;
}

std::string npy_f32(const std::vector<std::uint64_t>& shape, std::span<const float> values) {
  return npy_bytes("<f4", shape, std::as_bytes(values));
}

std::string npy_i64(const std::vector<std::uint64_t>& shape, std::span<const std::int64_t> values) {
  return npy_bytes("<i8", shape, std::as_bytes(values));
}

std::string npy_unicode_scalar(std::string_view utf8) {
  const std::vector<std::uint32_t> cps = utf8_to_code_points(utf8);
  const std::size_t n = cps.empty() ? 1 : cps.size();
  std::vector<std::uint32_t> data(n, 0);
  std::copy(cps.begin(), cps.end(), data.begin());
  return npy_bytes(fmt::format("<U{}", n), {}, std::as_bytes(std::span(data)));
}

NpyArray parse_npy(std::span<const std::byte> bytes, const std::string& label) {
  DQ_CHECK(bytes.size() >= 10 && std::memcmp(bytes.data(), kMagic, 6) == 0, format,
           "{}: not an npy array (no \\x93NUMPY magic; {} bytes)", label, bytes.size());
  const auto major = static_cast<unsigned>(bytes[6]), minor = static_cast<unsigned>(bytes[7]);
  DQ_CHECK((major == 1 || major == 2 || major == 3) && minor == 0, format, "{}: unsupported npy version {}.{}", label,
           major, minor);
  std::uint64_t header_len = 0, prefix = 0;
  if (major == 1) {
    header_len = static_cast<std::uint64_t>(bytes[8]) | (static_cast<std::uint64_t>(bytes[9]) << 8);
    prefix = 10;
  } else {
    DQ_CHECK(bytes.size() >= 12, format, "{}: npy {}.0 header truncated", label, major);
    std::uint32_t l = 0;
    std::memcpy(&l, bytes.data() + 8, 4);
    header_len = l;
    prefix = 12;
  }
  DQ_CHECK(header_len <= bytes.size() - prefix, format, "{}: npy header of {} bytes runs past the {}-byte array", label,
           header_len, bytes.size());
  std::string_view text(reinterpret_cast<const char*>(bytes.data() + prefix), header_len);
  for (char c : text)
    DQ_CHECK(static_cast<unsigned char>(c) >= 0x20 || c == '\n' || c == '\t' || c == '\r', format,
             "{}: npy header holds a control byte 0x{:02x}", label, static_cast<unsigned char>(c));

  HeaderParser p(text, label);
  std::optional<std::string> descr;
  std::optional<bool> fortran;
  std::optional<std::vector<std::uint64_t>> shape;
  p.expect('{');
  while (!p.accept('}')) {
    const std::string key = p.string();
    p.expect(':');
    if (key == "descr") {
      if (descr) p.error("duplicate key 'descr'");
      p.skip();
      descr = p.string();
    } else if (key == "fortran_order") {
      if (fortran) p.error("duplicate key 'fortran_order'");
      fortran = p.boolean();
    } else if (key == "shape") {
      if (shape) p.error("duplicate key 'shape'");
      shape = p.tuple();
    } else {
      p.error(fmt::format("unexpected key '{}' (a structured or object array?)", key));
    }
    if (!p.accept(',')) {
      p.expect('}');
      break;
    }
  }
  if (!p.at_end()) p.error("text after the header dict");
  DQ_CHECK(descr && fortran && shape, format, "{}: npy header lacks {}", label,
           !descr     ? "'descr'"
           : !fortran ? "'fortran_order'"
                      : "'shape'");
  const auto d = parse_descr(*descr);
  DQ_CHECK(d.has_value(), format,
           "{}: npy dtype '{}' is not accepted (only little-endian <f4 <f8 <i8 <i4 |i1 |u1 |b1 <U<n>; no object, "
           "structured or big-endian arrays)",
           label, *descr);

  NpyArray a;
  a.type = d->type;
  a.descr = *descr;
  a.itemsize = d->itemsize;
  a.shape = *shape;
  a.fortran_order = *fortran;
  a.numel = 1;
  for (std::uint64_t dim : a.shape)
    DQ_CHECK(!__builtin_mul_overflow(a.numel, dim, &a.numel), format, "{}: npy shape {} overflows 64 bits", label,
             shape_repr(a.shape));
  std::uint64_t nbytes = 0;
  DQ_CHECK(!__builtin_mul_overflow(a.numel, a.itemsize, &nbytes), format, "{}: npy byte count overflows 64 bits",
           label);
  const std::uint64_t available = bytes.size() - prefix - header_len;
  DQ_CHECK(nbytes == available, format, "{}: npy shape {} of {} needs {} bytes of data but {} are present", label,
           shape_repr(a.shape), a.descr, nbytes, available);
  a.data = bytes.subspan(prefix + header_len, nbytes);
  return a;
}

namespace {

// Copies the elements out in C order: element (i0, ..., ik) sits at sum i_d * stride_d, with
// strides growing from the last axis (C order) or from the first (Fortran order).
template <typename T>
std::vector<T> to_c_order(const NpyArray& a) {
  std::vector<T> v(a.numel);
  if (!a.fortran_order || a.shape.size() < 2) {
    if (!a.data.empty()) std::memcpy(v.data(), a.data.data(), a.data.size());  // never memcpy from null
    return v;
  }
  const std::size_t rank = a.shape.size();
  std::vector<std::uint64_t> stride(rank), index(rank, 0);
  std::uint64_t s = 1;
  for (std::size_t d = 0; d < rank; ++d) {
    stride[d] = s;
    s *= a.shape[d];
  }
  for (std::uint64_t k = 0; k < a.numel; ++k) {
    std::uint64_t src = 0;
    for (std::size_t d = 0; d < rank; ++d) src += index[d] * stride[d];
    std::memcpy(&v[k], a.data.data() + src * sizeof(T), sizeof(T));
    for (std::size_t d = rank; d-- > 0;) {  // next C-order index
      if (++index[d] < a.shape[d]) break;
      index[d] = 0;
    }
  }
  return v;
}

}  // namespace

std::vector<float> npy_to_f32(const NpyArray& a, const std::string& label) {
  DQ_CHECK(a.type == NpyType::f4, format, "{}: expected float32 (<f4), found {}", label, a.descr);
  return to_c_order<float>(a);
}

std::vector<std::int64_t> npy_to_i64(const NpyArray& a, const std::string& label) {
  DQ_CHECK(a.type == NpyType::i8, format, "{}: expected int64 (<i8), found {}", label, a.descr);
  return to_c_order<std::int64_t>(a);
}

std::string npy_unicode_to_utf8(const NpyArray& a, const std::string& label) {
  DQ_CHECK(a.type == NpyType::unicode && a.shape.empty(), format, "{}: expected a 0-d unicode string, found {} {}",
           label, a.descr, shape_repr(a.shape));
  // numpy strips the trailing NULs of a fixed-width string, and only those: "{...}\0garbage"
  // reads back whole, NUL included (and json.loads then rejects it), so the reader must keep it too.
  std::uint64_t n = a.itemsize / 4;
  auto code_point = [&](std::uint64_t i) {
    std::uint32_t cp = 0;
    std::memcpy(&cp, a.data.data() + 4 * i, 4);
    return cp;
  };
  while (n > 0 && code_point(n - 1) == 0) --n;
  std::string out;
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint32_t cp = code_point(i);
    DQ_CHECK(cp <= 0x10ffff && (cp < 0xd800 || cp > 0xdfff), format, "{}: invalid code point U+{:X} in string", label,
             cp);
    append_utf8(out, cp);
  }
  return out;
}

}  // namespace duquant::formats

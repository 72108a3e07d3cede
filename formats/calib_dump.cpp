// Calibration activation dumps: the strict HDF5 reader and the safetensors container
// (docs/calibration-dumps.md).
//
// HDF5 1.10 is not safe on hostile files by itself; measured on 1.10.8:
//  - its deflate filter doubles its output buffer until the stream ends, so a 0.5 MB file made
//    a 1 MiB call allocate 1.1 GB;
//  - its fletcher32 filter reads far out of bounds on a stored chunk shorter than 4 bytes;
//  - a chunk whose stored (or decoded) size is smaller than the chunk is over-read on the heap,
//    filtered or not.
//  - on a corrupt chunk index, H5Dread_chunk may write more bytes than the chunk size
//    H5Dget_chunk_info_by_coord reported for the same chunk;
//  - corrupt metadata can crash or hang it (fuzzing: inside its global-heap reader).
// Built-in filters cannot be replaced (H5Zregister refuses "predefined filters"), so HDF5 reads
// only metadata here: every chunk's index entry is checked (present, inside the file, a plausible
// size, no two chunks overlapping) and its bytes are read with pread and decoded by the code below
// with buffers bounded by the validated chunk size; contiguous data is read with pread at its
// checked offset; only compact data (inside the object header, size checked) goes through
// H5Dread. The structure is scanned in a forked child first (see probe_hdf5).
#include "formats/calib_dump.hpp"

#include <fcntl.h>
#include <hdf5.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "duquant/elementwise.hpp"
#include "duquant/error.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace duquant::formats {
namespace fs = std::filesystem;

namespace {

constexpr int kMinRank = 2;
constexpr int kMaxRank = 8;
// A chunk may be larger than its call only up to this size (extendable datasets may be created
// with chunks larger than what was finally written); reading holds at most a few chunks.
constexpr std::uint64_t kChunkSlackBytes = std::uint64_t{64} << 20;
constexpr std::uint64_t kMaxChunksPerCall = std::uint64_t{1} << 20;
constexpr std::size_t kMaxDtypeAttrBytes = 64;
constexpr std::size_t kMaxIndexDigits = 18;  // call indices fit an int64 with room to spare
constexpr unsigned char kHdf5Signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

enum class Elem { f32, f16, bf16 };

const char* elem_name(Elem e) {
  switch (e) {
    case Elem::f32: return "F32";
    case Elem::f16: return "F16";
    case Elem::bf16: return "BF16";
  }
  return "?";
}

std::size_t elem_size(Elem e) { return e == Elem::f32 ? 4 : 2; }

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

template <typename T>
std::string dims_text(std::span<const T> dims) {
  std::string s = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", dims[i]);
  return s + "]";
}

template <typename... Args>
[[noreturn]] void bad(const std::string& where, fmt::format_string<Args...> format, Args&&... args) {
  throw Error(ErrorKind::format, where + ": " + fmt::format(format, std::forward<Args>(args)...));
}

// ---------------------------------------------------------------------------------------------
// HDF5 plumbing: one lock for every HDF5 call of this file, RAII for every id, and errors that
// carry HDF5's own description.

// Recursive: an Impl destroyed while an exception unwinds out of open() closes its file again.
std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex m;
  return m;
}

template <herr_t (*Close)(hid_t)>
class Handle {
 public:
  Handle() = default;
  explicit Handle(hid_t id) : id_(id) {}
  Handle(Handle&& other) noexcept : id_(std::exchange(other.id_, -1)) {}
  Handle& operator=(Handle&& other) noexcept {
    if (this != &other) {
      reset();
      id_ = std::exchange(other.id_, -1);
    }
    return *this;
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() { reset(); }
  void reset() noexcept {
    if (id_ >= 0) Close(id_);
    id_ = -1;
  }
  hid_t get() const noexcept { return id_; }
  hid_t release() noexcept { return std::exchange(id_, -1); }

 private:
  hid_t id_ = -1;
};

using H5Group = Handle<H5Gclose>;
using H5Dataset = Handle<H5Dclose>;
using H5Object = Handle<H5Oclose>;
using H5Space = Handle<H5Sclose>;
using H5Type = Handle<H5Tclose>;
using H5Plist = Handle<H5Pclose>;
using H5Attr = Handle<H5Aclose>;

struct StackText {
  std::string text;
  bool io = false;  // the system refused (open, lock or read), not the file's content
  int count = 0;
};

herr_t walk_entry(unsigned, const H5E_error2_t* e, void* data) noexcept {
  try {
    auto* s = static_cast<StackText*>(data);
    const std::string func = e->func_name ? e->func_name : "?";
    if (func.find("sec2") != std::string::npos || e->min_num == H5E_CANTLOCKFILE) s->io = true;
    if (s->count++ < 4) {
      s->text += fmt::format("{}{} ({})", s->text.empty() ? "" : "; ", printable(e->desc ? e->desc : "?"), func);
    }
  } catch (...) {
  }
  return 0;
}

// HDF5's error stack of the calling thread, innermost error first.
StackText hdf5_stack() {
  StackText s;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_entry, &s);
  if (s.text.empty()) s.text = "no HDF5 error description";
  return s;
}

[[noreturn]] void h5_fail(const std::string& where, std::string_view call) {
  const StackText s = hdf5_stack();
  fail(s.io ? ErrorKind::io : ErrorKind::format, "{}: {} failed: {}", where, call, s.text);
}

hid_t h5_id(hid_t id, const std::string& where, std::string_view call) {
  if (id < 0) h5_fail(where, call);
  return id;
}

void h5_ok(herr_t status, const std::string& where, std::string_view call) {
  if (status < 0) h5_fail(where, call);
}

// Per call (the setting is per thread in thread-safe builds): no printing of HDF5 errors to
// stderr, and never a filter plugin loaded from HDF5_PLUGIN_PATH.
void quiet_hdf5(const std::string& where) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  if (H5PLset_loading_state(0) < 0) fail(ErrorKind::internal, "{}: cannot disable HDF5 filter plugins", where);
}

// ---------------------------------------------------------------------------------------------
// Shapes, names

struct Shape {
  std::uint64_t rows = 0;
  std::uint64_t cols = 0;
  std::uint64_t numel = 0;
};

constexpr const char* kCallShape = "a call is [tokens, in_features], rank 2 to 8 (leading dims are flattened into tokens)";

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

struct Layer {
  std::vector<DumpCall> calls;
  std::vector<std::uint64_t> refs;  // HDF5: object address; safetensors: index into tensors()
};

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

// ---------------------------------------------------------------------------------------------
// Element conversion and checks

std::uint16_t load_u16(const unsigned char* p, bool big_endian) {
  return big_endian ? static_cast<std::uint16_t>((p[0] << 8) | p[1]) : static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}

std::uint32_t load_u32(const unsigned char* p, bool big_endian) {
  if (big_endian)
    return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
  return (std::uint32_t{p[3]} << 24) | (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[1]} << 8) | p[0];
}

// Converts `n` stored elements at `src` to float32.
void convert_run(const unsigned char* src, std::size_t n, Elem elem, bool big_endian, float* dst) {
  switch (elem) {
    case Elem::f32:
      if (!big_endian && std::endian::native == std::endian::little) {
        std::memcpy(dst, src, n * 4);
      } else {
        for (std::size_t i = 0; i < n; ++i) dst[i] = elementwise::f32_from_bits(load_u32(src + 4 * i, big_endian));
      }
      break;
    case Elem::f16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = elementwise::f16_to_f32(load_u16(src + 2 * i, big_endian));
      break;
    case Elem::bf16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = elementwise::bf16_to_f32(load_u16(src + 2 * i, big_endian));
      break;
  }
}

// `out` holds its n elements as stored (4 or 2 bytes each, in the file's byte order) in its first
// n * esize bytes: converts them to float32 in place. 16-bit values are widened from the back
// (float i overwrites the bytes of 16-bit values 2i and 2i+1, both already converted).
void decode_in_place(std::vector<float>& out, Elem elem, bool big_endian) {
  auto* base = reinterpret_cast<unsigned char*>(out.data());
  if (elem == Elem::f32) {
    if (!big_endian && std::endian::native == std::endian::little) return;
    for (std::size_t i = 0; i < out.size(); ++i) {
      const float f = elementwise::f32_from_bits(load_u32(base + 4 * i, big_endian));
      std::memcpy(base + 4 * i, &f, sizeof f);
    }
    return;
  }
  for (std::size_t i = out.size(); i-- > 0;) {
    const std::uint16_t h = load_u16(base + 2 * i, big_endian);
    const float f = elem == Elem::f16 ? elementwise::f16_to_f32(h) : elementwise::bf16_to_f32(h);
    std::memcpy(base + 4 * i, &f, sizeof f);
  }
}

// Reads `size` bytes at `offset` of the dump (bounds checked by the caller).
void pread_exact(int fd, unsigned char* dst, std::uint64_t size, std::uint64_t offset, const std::string& where,
                 std::string_view what) {
  while (size > 0) {
    const std::size_t step = static_cast<std::size_t>(std::min<std::uint64_t>(size, std::uint64_t{1} << 30));
    const ssize_t n = ::pread(fd, dst, step, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      fail(ErrorKind::io, "{}: cannot read {} ({} bytes at offset {}): {}", where, what, size, offset,
           std::strerror(errno));
    if (n == 0) bad(where, "{}: the file ends before offset {} (was it truncated meanwhile?)", what, offset);
    dst += n;
    size -= static_cast<std::uint64_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
}

void check_finite(std::span<const float> values, std::uint64_t cols, const std::string& where) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float v = values[i];
    if (!std::isfinite(v)) {
      const char* what = std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf");
      fail(ErrorKind::numeric, "{}: row {}, column {} is {}; activations must be finite", where, i / cols, i % cols,
           what);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// HDF5 datasets

struct DatasetInfo {
  std::vector<std::uint64_t> dims;
  Shape shape;
  Elem elem = Elem::f32;
  bool big_endian = false;
  std::size_t esize = 4;
  H5D_layout_t layout = H5D_CONTIGUOUS;
  std::vector<std::uint64_t> chunk;    // chunked only
  std::uint64_t chunk_bytes = 0;
  std::vector<H5Z_filter_t> filters;   // in write order (pipeline index)
  int deflate_at = -1;
  int fletcher_at = -1;
};

std::optional<std::string> dtype_attribute(hid_t dset, const std::string& where) {
  const htri_t exists = H5Aexists(dset, "dtype");
  if (exists < 0) h5_fail(where, "looking for the attribute 'dtype' (H5Aexists)");
  if (exists == 0) return std::nullopt;
  const H5Attr attr(h5_id(H5Aopen(dset, "dtype", H5P_DEFAULT), where, "opening the attribute 'dtype' (H5Aopen)"));
  const H5Type type(h5_id(H5Aget_type(attr.get()), where, "H5Aget_type"));
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_STRING) bad(where, "the attribute 'dtype' is not a string (HDF5 type class {})", static_cast<int>(cls));
  const H5Space space(h5_id(H5Aget_space(attr.get()), where, "H5Aget_space"));
  const hssize_t points = H5Sget_simple_extent_npoints(space.get());
  if (points != 1) bad(where, "the attribute 'dtype' holds {} values; expected one string", points);
  const htri_t variable = H5Tis_variable_str(type.get());
  if (variable < 0) h5_fail(where, "H5Tis_variable_str");
  std::string value;
  if (variable > 0) {
    const H5Type mem(h5_id(H5Tcopy(H5T_C_S1), where, "H5Tcopy"));
    h5_ok(H5Tset_size(mem.get(), H5T_VARIABLE), where, "H5Tset_size");
    h5_ok(H5Tset_cset(mem.get(), H5Tget_cset(type.get())), where, "H5Tset_cset");
    char* text = nullptr;
    h5_ok(H5Aread(attr.get(), mem.get(), &text), where, "reading the attribute 'dtype' (H5Aread)");
    if (text) {
      value.assign(text, strnlen(text, kMaxDtypeAttrBytes + 1));
      H5free_memory(text);
    }
    if (value.size() > kMaxDtypeAttrBytes)
      bad(where, "the attribute 'dtype' is longer than {} bytes", kMaxDtypeAttrBytes);
  } else {
    const std::size_t size = H5Tget_size(type.get());
    if (size == 0 || size > kMaxDtypeAttrBytes)
      bad(where, "the attribute 'dtype' is a {}-byte string; at most {} bytes are read", size, kMaxDtypeAttrBytes);
    const H5Type mem(h5_id(H5Tcopy(type.get()), where, "H5Tcopy"));
    value.assign(size, '\0');
    h5_ok(H5Aread(attr.get(), mem.get(), value.data()), where, "reading the attribute 'dtype' (H5Aread)");
    while (!value.empty() && (value.back() == '\0' || value.back() == ' ')) value.pop_back();
    value.resize(strnlen(value.c_str(), value.size()));
  }
  return value;
}

constexpr const char* kDtypeRule =
    "a call is float32, float16, or bfloat16 stored as uint16 with the attribute dtype=\"bfloat16\"";

bool is_ieee(hid_t type, std::size_t size) {
  std::size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) return false;
  const H5T_order_t order = H5Tget_order(type);
  if (order != H5T_ORDER_LE && order != H5T_ORDER_BE) return false;
  if (H5Tget_precision(type) != size * 8 || H5Tget_offset(type) != 0) return false;
  if (H5Tget_norm(type) != H5T_NORM_IMPLIED) return false;
  if (size == 4) return spos == 31 && epos == 23 && esize == 8 && mpos == 0 && msize == 23 && H5Tget_ebias(type) == 127;
  return spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && H5Tget_ebias(type) == 15;
}

void classify_type(hid_t dset, hid_t type, const std::string& where, DatasetInfo& info) {
  const H5T_class_t cls = H5Tget_class(type);
  if (cls < 0) h5_fail(where, "H5Tget_class");
  const std::size_t size = H5Tget_size(type);
  switch (cls) {
    case H5T_FLOAT: {
      if (size == 8)
        bad(where, "unsupported element type: float64 (refused: it would be narrowed to float32 silently and "
                   "doubles the dump; store float32); {}", kDtypeRule);
      if (size != 4 && size != 2) bad(where, "unsupported element type: {}-byte float; {}", size, kDtypeRule);
      if (!is_ieee(type, size)) {
        std::size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
        H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
        bad(where,
            "unsupported element type: a {}-byte float that is not IEEE binary{} (precision {}, sign bit {}, exponent "
            "{} bits at {}, mantissa {} bits at {}, bias {}); {}",
            size, size * 8, H5Tget_precision(type), spos, esize, epos, msize, mpos, H5Tget_ebias(type), kDtypeRule);
      }
      info.elem = size == 4 ? Elem::f32 : Elem::f16;
      info.big_endian = H5Tget_order(type) == H5T_ORDER_BE;
      const auto attr = dtype_attribute(dset, where);
      if (attr && *attr == "bfloat16")
        bad(where, "the attribute dtype=\"bfloat16\" is on {} data; bfloat16 is stored as uint16",
            size == 4 ? "float32" : "float16");
      break;
    }
    case H5T_INTEGER: {
      const H5T_sign_t sign = H5Tget_sign(type);
      const H5T_order_t order = H5Tget_order(type);
      if (sign == H5T_SGN_NONE && size == 2 && H5Tget_precision(type) == 16 && H5Tget_offset(type) == 0 &&
          (order == H5T_ORDER_LE || order == H5T_ORDER_BE)) {
        const auto attr = dtype_attribute(dset, where);
        if (!attr) bad(where, "unsupported element type: uint16 without the attribute dtype=\"bfloat16\"; {}", kDtypeRule);
        if (*attr != "bfloat16")
          bad(where, "unsupported element type: uint16 with the attribute dtype=\"{}\"; {}", printable(*attr),
              kDtypeRule);
        info.elem = Elem::bf16;
        info.big_endian = order == H5T_ORDER_BE;
        break;
      }
      bad(where, "unsupported element type: {} {}-bit integer; {}", sign == H5T_SGN_NONE ? "unsigned" : "signed",
          size * 8, kDtypeRule);
    }
    case H5T_STRING: {
      const htri_t variable = H5Tis_variable_str(type);
      if (variable > 0) bad(where, "unsupported element type: variable-length string; {}", kDtypeRule);
      bad(where, "unsupported element type: fixed-length string ({} bytes); {}", size, kDtypeRule);
    }
    case H5T_COMPOUND: bad(where, "unsupported element type: compound (struct); {}", kDtypeRule);
    case H5T_ENUM: bad(where, "unsupported element type: enum; {}", kDtypeRule);
    case H5T_VLEN: bad(where, "unsupported element type: variable-length sequence; {}", kDtypeRule);
    case H5T_ARRAY: bad(where, "unsupported element type: array; {}", kDtypeRule);
    case H5T_REFERENCE: bad(where, "unsupported element type: reference; {}", kDtypeRule);
    case H5T_OPAQUE: bad(where, "unsupported element type: opaque; {}", kDtypeRule);
    case H5T_BITFIELD: bad(where, "unsupported element type: bitfield; {}", kDtypeRule);
    case H5T_TIME: bad(where, "unsupported element type: time; {}", kDtypeRule);
    default:
      bad(where, "unsupported element type: HDF5 type class {}; {}", static_cast<int>(cls), kDtypeRule);
  }
  info.esize = elem_size(info.elem);
}

struct ChunkEntry {
  unsigned mask = 0;
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
};

bool applied(int at, unsigned mask) { return at >= 0 && (mask & (1u << at)) == 0; }

// Largest stored size of a deflated chunk: what deflate can emit for the chunk (and a checksum).
std::uint64_t max_deflated_bytes(const DatasetInfo& info) {
  return std::uint64_t{compressBound(static_cast<uLong>(info.chunk_bytes + 4))} + 4;
}

// Checks one chunk's index entry before any of its bytes are read.
void check_chunk(const DatasetInfo& info, const ChunkEntry& c, std::span<const hsize_t> offset,
                 std::uint64_t file_size, const std::string& where) {
  if (c.addr == HADDR_UNDEF || c.size == 0)
    bad(where, "chunk at {} was never written (the dataset is incomplete)", dims_text(offset));
  if (c.addr > file_size || c.size > file_size - c.addr)
    bad(where, "chunk at {} ({} bytes at offset {}) lies past the end of the file ({} bytes)", dims_text(offset),
        c.size, c.addr, file_size);
  const bool checksum = applied(info.fletcher_at, c.mask);
  if (applied(info.deflate_at, c.mask)) {
    if (c.size > max_deflated_bytes(info))
      bad(where, "deflated chunk at {} stores {} bytes, more than deflate emits for a {}-byte chunk ({})",
          dims_text(offset), c.size, info.chunk_bytes, max_deflated_bytes(info));
  } else {
    const std::uint64_t expected = info.chunk_bytes + (checksum ? 4 : 0);
    if (c.size != expected)
      bad(where, "chunk at {} stores {} bytes; expected {} ({} bytes of data{})", dims_text(offset), c.size, expected,
          info.chunk_bytes, checksum ? " and a 4-byte checksum" : "");
  }
}

ChunkEntry chunk_entry(hid_t dset, std::span<const hsize_t> offset, const std::string& where) {
  ChunkEntry c;
  h5_ok(H5Dget_chunk_info_by_coord(dset, offset.data(), &c.mask, &c.addr, &c.size), where,
        "reading the chunk index (H5Dget_chunk_info_by_coord)");
  return c;
}

// Calls fn(offset) for the element offset of every chunk, last dimension fastest.
template <typename Fn>
void for_each_chunk(const DatasetInfo& info, Fn&& fn) {
  const std::size_t rank = info.dims.size();
  std::vector<hsize_t> offset(rank, 0);
  while (true) {
    fn(std::span<const hsize_t>(offset));
    std::size_t k = rank;
    while (k > 0) {
      --k;
      offset[k] += info.chunk[k];
      if (offset[k] < info.dims[k]) break;
      offset[k] = 0;
      if (k == 0) return;
    }
  }
}

// Everything about a dataset that decides whether and how it is read; refuses the rest.
// With check_chunks, also checks every chunk's index entry (open); read() checks them as it goes.
DatasetInfo inspect(hid_t dset, const std::string& where, std::uint64_t file_size, bool check_chunks) {
  DatasetInfo info;
  {
    const H5Space space(h5_id(H5Dget_space(dset), where, "H5Dget_space"));
    const H5S_class_t cls = H5Sget_simple_extent_type(space.get());
    if (cls == H5S_NULL) bad(where, "null dataspace (no data); {}", kCallShape);
    if (cls == H5S_SCALAR) bad(where, "wrong rank: 0 (a scalar); {}", kCallShape);
    if (cls != H5S_SIMPLE) h5_fail(where, "H5Sget_simple_extent_type");
    const int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 0 || rank > H5S_MAX_RANK) h5_fail(where, "H5Sget_simple_extent_ndims");
    hsize_t dims[H5S_MAX_RANK] = {};
    h5_ok(H5Sget_simple_extent_dims(space.get(), dims, nullptr), where, "H5Sget_simple_extent_dims");
    info.dims.assign(dims, dims + rank);
    info.shape = check_dims(info.dims, where);
  }
  {
    const H5Type type(h5_id(H5Dget_type(dset), where, "H5Dget_type"));
    classify_type(dset, type.get(), where, info);
  }
  const H5Plist dcpl(h5_id(H5Dget_create_plist(dset), where, "H5Dget_create_plist"));
  info.layout = H5Pget_layout(dcpl.get());
  if (info.layout == H5D_VIRTUAL)
    bad(where, "virtual dataset: its data lives in other datasets or files, which a dump may not reference");
  if (info.layout != H5D_COMPACT && info.layout != H5D_CONTIGUOUS && info.layout != H5D_CHUNKED) {
    if (info.layout < 0) h5_fail(where, "H5Pget_layout");
    bad(where, "unknown storage layout {}", static_cast<int>(info.layout));
  }
  const int external = H5Pget_external_count(dcpl.get());
  if (external < 0) h5_fail(where, "H5Pget_external_count");
  if (external > 0) {
    char name[256] = {};
    off_t offset = 0;
    hsize_t size = 0;
    H5Pget_external(dcpl.get(), 0, sizeof name - 1, name, &offset, &size);
    bad(where, "external storage: its data lives in {} other file(s) (first '{}'); a dump keeps its data inside the "
               "HDF5 file", external, printable(name));
  }
  const int nfilters = H5Pget_nfilters(dcpl.get());
  if (nfilters < 0) h5_fail(where, "H5Pget_nfilters");
  for (int i = 0; i < nfilters; ++i) {
    unsigned flags = 0;
    std::size_t ncd = 8;
    unsigned cd[8] = {};
    char name[128] = {};
    const H5Z_filter_t id =
        H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &ncd, cd, sizeof name - 1, name, nullptr);
    if (id < 0) h5_fail(where, "H5Pget_filter2");
    if (id != H5Z_FILTER_DEFLATE && id != H5Z_FILTER_SHUFFLE && id != H5Z_FILTER_FLETCHER32)
      bad(where, "filter {} ('{}') is not allowed; a dump may use only deflate (1), shuffle (2) and fletcher32 (3)",
          id, printable(name));
    if (std::find(info.filters.begin(), info.filters.end(), id) != info.filters.end())
      bad(where, "filter {} ('{}') appears twice in the filter pipeline", id, printable(name));
    if (id == H5Z_FILTER_DEFLATE) {
      if (ncd != 1 || cd[0] > 9) bad(where, "the deflate filter has bad parameters ({} values, level {})", ncd, cd[0]);
      info.deflate_at = i;
    } else if (id == H5Z_FILTER_SHUFFLE) {
      if (ncd != 1 || cd[0] != info.esize)
        bad(where, "the shuffle filter's element size ({} values, first {}) is not the element size {}", ncd,
            ncd ? cd[0] : 0u, info.esize);
    } else {
      info.fletcher_at = i;
    }
    info.filters.push_back(id);
  }
  if (nfilters > 0 && info.layout != H5D_CHUNKED) bad(where, "has filters but is not chunked");

  const std::uint64_t call_bytes = info.shape.numel * info.esize;
  if (info.layout == H5D_CHUNKED) {
    hsize_t chunk[H5S_MAX_RANK] = {};
    const int crank = H5Pget_chunk(dcpl.get(), H5S_MAX_RANK, chunk);
    if (crank < 0) h5_fail(where, "H5Pget_chunk");
    if (static_cast<std::size_t>(crank) != info.dims.size())
      bad(where, "chunk rank {} differs from the dataset's rank {}", crank, info.dims.size());
    info.chunk.assign(chunk, chunk + crank);
    std::uint64_t bytes = info.esize;
    std::uint64_t count = 1;
    for (std::size_t k = 0; k < info.chunk.size(); ++k) {
      const std::uint64_t c = info.chunk[k];
      if (c == 0 || c > kMaxCallElements || bytes > (std::uint64_t{1} << 40) / c)
        bad(where, "chunk dims {} are invalid or too large", dims_text(std::span<const std::uint64_t>(info.chunk)));
      bytes *= c;
      count *= (info.dims[k] + c - 1) / c;  // dims <= 2^30 in total: no overflow
    }
    info.chunk_bytes = bytes;
    if (bytes > std::max(call_bytes, kChunkSlackBytes))
      bad(where, "chunks of {} bytes (chunk dims {}) are larger than both the call ({} bytes) and {} MiB", bytes,
          dims_text(std::span<const std::uint64_t>(info.chunk)), call_bytes, kChunkSlackBytes >> 20);
    if (count > kMaxChunksPerCall)
      bad(where, "split into {} chunks; at most {} are read (use larger chunks)", count, kMaxChunksPerCall);
    unsigned opts = 0;
    h5_ok(H5Pget_chunk_opts(dcpl.get(), &opts), where, "H5Pget_chunk_opts");
    if ((opts & H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS) && nfilters > 0)
      bad(where, "uses the chunk option 'do not filter partial edge chunks', which is not supported");
    if (check_chunks) {
      // Each chunk where the index says, and no two chunks sharing bytes (a corrupt index can
      // point several chunks at one place).
      struct Extent {
        haddr_t addr;
        hsize_t size;
        std::vector<hsize_t> offset;
      };
      std::vector<Extent> extents;
      extents.reserve(static_cast<std::size_t>(count));
      for_each_chunk(info, [&](std::span<const hsize_t> offset) {
        const ChunkEntry c = chunk_entry(dset, offset, where);
        check_chunk(info, c, offset, file_size, where);
        extents.push_back({c.addr, c.size, {offset.begin(), offset.end()}});
      });
      std::sort(extents.begin(), extents.end(), [](const Extent& x, const Extent& y) { return x.addr < y.addr; });
      for (std::size_t i = 1; i < extents.size(); ++i)
        if (extents[i].addr < extents[i - 1].addr + extents[i - 1].size)
          bad(where, "chunks at {} and {} overlap in the file (offsets {} and {}): a corrupt chunk index",
              dims_text(std::span<const hsize_t>(extents[i - 1].offset)),
              dims_text(std::span<const hsize_t>(extents[i].offset)), extents[i - 1].addr, extents[i].addr);
    }
  } else {
    const hsize_t stored = H5Dget_storage_size(dset);
    if (stored != call_bytes)
      bad(where, "stores {} bytes of data, expected {} ({} elements of {} bytes){}", stored, call_bytes,
          info.shape.numel, info.esize, stored == 0 ? "; it was never written" : "");
    if (info.layout == H5D_CONTIGUOUS) {
      const haddr_t offset = H5Dget_offset(dset);
      if (offset == HADDR_UNDEF) bad(where, "contiguous data has no address in the file (never written)");
      if (offset > file_size || call_bytes > file_size - offset)
        bad(where, "data ({} bytes at offset {}) lies past the end of the file ({} bytes)", call_bytes, offset,
            file_size);
    }
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// Chunk decoding (HDF5's filters, redone with bounds)

std::uint32_t fletcher32(const unsigned char* data, std::size_t length) {
  std::size_t words = length / 2;
  std::uint32_t sum1 = 0, sum2 = 0;
  while (words) {
    std::size_t block = words > 360 ? 360 : words;  // the most sums without overflow
    words -= block;
    do {
      sum1 += (std::uint32_t{data[0]} << 8) | data[1];
      data += 2;
      sum2 += sum1;
    } while (--block);
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  if (length % 2) {
    sum1 += std::uint32_t{*data} << 8;
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  return (sum2 << 16) | sum1;
}

struct Inflater {
  z_stream z{};
  bool live = false;
  ~Inflater() {
    if (live) inflateEnd(&z);
  }
};

// Inflates `in` into `out` (resized to limit + 1): more than `limit` bytes is refused, so a
// decompression bomb costs at most the chunk's size. Returns the decoded size.
std::size_t inflate_bounded(std::span<const unsigned char> in, std::vector<unsigned char>& out, std::size_t limit,
                            const std::string& where, const std::string& chunk) {
  out.resize(limit + 1);
  Inflater inf;
  if (inflateInit(&inf.z) != Z_OK) fail(ErrorKind::internal, "{}: zlib cannot start (inflateInit)", where);
  inf.live = true;
  constexpr std::size_t kStep = std::size_t{1} << 30;  // zlib counts in 32-bit units
  std::size_t in_left = in.size();
  std::size_t out_left = out.size();
  inf.z.next_in = const_cast<Bytef*>(in.data());
  inf.z.next_out = out.data();
  while (true) {
    if (inf.z.avail_in == 0 && in_left > 0) {
      const std::size_t step = std::min(in_left, kStep);
      inf.z.avail_in = static_cast<uInt>(step);
      in_left -= step;
    }
    if (inf.z.avail_out == 0 && out_left > 0) {
      const std::size_t step = std::min(out_left, kStep);
      inf.z.avail_out = static_cast<uInt>(step);
      out_left -= step;
    }
    const int status = inflate(&inf.z, Z_NO_FLUSH);
    const std::size_t produced = out.size() - out_left - inf.z.avail_out;
    if (produced > limit)
      bad(where, "{}: the deflate stream inflates to more than {} bytes, the most the chunk can hold (a "
                 "decompression bomb or corrupt data)", chunk, limit);
    if (status == Z_STREAM_END) return produced;
    if (status == Z_OK) continue;
    if (status == Z_BUF_ERROR && inf.z.avail_in == 0 && in_left == 0)
      bad(where, "{}: the deflate stream ends early, after {} bytes of output", chunk, produced);
    if (status == Z_MEM_ERROR) throw std::bad_alloc();
    bad(where, "{}: corrupt deflate stream ({})", chunk, inf.z.msg ? printable(inf.z.msg) : std::to_string(status));
  }
}

void unshuffle(std::span<const unsigned char> in, std::vector<unsigned char>& out, std::size_t esize) {
  const std::size_t n = in.size() / esize;
  out.resize(in.size());
  for (std::size_t j = 0; j < esize; ++j) {
    const unsigned char* src = in.data() + j * n;
    for (std::size_t i = 0; i < n; ++i) out[i * esize + j] = src[i];
  }
  std::memcpy(out.data() + n * esize, in.data() + n * esize, in.size() - n * esize);
}

// Runs the filter pipeline backwards on one stored chunk; returns the chunk's bytes.
std::span<const unsigned char> decode_chunk(const DatasetInfo& info, unsigned mask, std::span<const unsigned char> stored,
                                            std::vector<unsigned char>& a, std::vector<unsigned char>& b,
                                            const std::string& where, const std::string& chunk) {
  std::span<const unsigned char> cur = stored;
  auto other = [&]() -> std::vector<unsigned char>& { return (!a.empty() && cur.data() == a.data()) ? b : a; };
  for (int i = static_cast<int>(info.filters.size()) - 1; i >= 0; --i) {
    if (mask & (1u << i)) continue;
    switch (info.filters[static_cast<std::size_t>(i)]) {
      case H5Z_FILTER_FLETCHER32: {
        if (cur.size() < 4)
          bad(where, "{}: {} bytes is too short to hold its fletcher32 checksum", chunk, cur.size());
        const std::size_t n = cur.size() - 4;
        const std::uint32_t stored_sum = load_u32(cur.data() + n, false);
        const std::uint32_t sum = fletcher32(cur.data(), n);
        // HDF5 before 1.6.3 stored the sum with the bytes of each half swapped; it accepts both.
        const std::uint32_t swapped = ((sum & 0x00ff00ffu) << 8) | ((sum >> 8) & 0x00ff00ffu);
        if (stored_sum != sum && stored_sum != swapped)
          bad(where, "{}: fletcher32 checksum mismatch (stored 0x{:08x}, computed 0x{:08x}): corrupt data", chunk,
              stored_sum, sum);
        cur = cur.first(n);
        break;
      }
      case H5Z_FILTER_DEFLATE: {
        std::vector<unsigned char>& out = other();
        const std::size_t limit = info.chunk_bytes + (info.fletcher_at >= 0 ? 4 : 0);
        const std::size_t n = inflate_bounded(cur, out, limit, where, chunk);
        cur = std::span<const unsigned char>(out.data(), n);
        break;
      }
      case H5Z_FILTER_SHUFFLE: {
        if (info.esize > 1 && cur.size() / info.esize > 1) {
          std::vector<unsigned char>& out = other();
          unshuffle(cur, out, info.esize);
          cur = std::span<const unsigned char>(out.data(), cur.size());
        }
        break;
      }
      default:
        fail(ErrorKind::internal, "{}: filter {} passed validation", where, info.filters[static_cast<std::size_t>(i)]);
    }
  }
  if (cur.size() != info.chunk_bytes)
    bad(where, "{} decodes to {} bytes; a chunk holds {}", chunk, cur.size(), info.chunk_bytes);
  return cur;
}

// Copies the part of a decoded chunk (at element offset `offset`) that lies inside the dataset.
void scatter_chunk(const DatasetInfo& info, std::span<const hsize_t> offset, const unsigned char* chunk, float* out) {
  const std::size_t rank = info.dims.size();
  std::vector<std::uint64_t> extent(rank), cstride(rank), dstride(rank);
  for (std::size_t k = 0; k < rank; ++k) extent[k] = std::min<std::uint64_t>(info.chunk[k], info.dims[k] - offset[k]);
  cstride[rank - 1] = 1;
  dstride[rank - 1] = 1;
  for (std::size_t k = rank - 1; k-- > 0;) {
    cstride[k] = cstride[k + 1] * info.chunk[k + 1];
    dstride[k] = dstride[k + 1] * info.dims[k + 1];
  }
  std::vector<std::uint64_t> pos(rank, 0);  // position inside the chunk, last dim stays 0
  while (true) {
    std::uint64_t src = 0, dst = offset[rank - 1];
    for (std::size_t k = 0; k + 1 < rank; ++k) {
      src += pos[k] * cstride[k];
      dst += (offset[k] + pos[k]) * dstride[k];
    }
    convert_run(chunk + src * info.esize, extent[rank - 1], info.elem, info.big_endian, out + dst);
    std::size_t k = rank - 1;
    while (true) {
      if (k == 0) return;
      --k;
      if (++pos[k] < extent[k]) break;
      pos[k] = 0;
    }
  }
}

// Releases the HDF5 lock (held exactly once by the caller) while chunks are decoded, which needs
// no HDF5, so that other threads' reads proceed; takes it back on every exit, exceptions included.
class Unlocked {
 public:
  Unlocked() { hdf5_mutex().unlock(); }
  Unlocked(const Unlocked&) = delete;
  Unlocked& operator=(const Unlocked&) = delete;
  ~Unlocked() { hdf5_mutex().lock(); }
};

// Called with the HDF5 lock held once.
// The chunk's stored bytes are read with pread at the address and size the index gave (checked
// against the file), never with H5Dread_chunk: on a corrupt index HDF5 1.10.8 looks the chunk up
// again and may write more bytes than the size it reported for it.
void read_chunked(hid_t dset, const DatasetInfo& info, int fd, std::uint64_t file_size, const std::string& where,
                  std::vector<float>& out) {
  std::vector<unsigned char> stored, a, b;
  for_each_chunk(info, [&](std::span<const hsize_t> offset) {
    const ChunkEntry c = chunk_entry(dset, offset, where);
    check_chunk(info, c, offset, file_size, where);
    const Unlocked unlocked;
    const std::string chunk = fmt::format("chunk at {}", dims_text(offset));
    stored.resize(c.size);
    pread_exact(fd, stored.data(), c.size, c.addr, where, chunk);
    const auto data = decode_chunk(info, c.mask, stored, a, b, where, chunk);
    scatter_chunk(info, offset, data.data(), out.data());
  });
}

// Compact data (inside the object header; its size was checked by inspect): read by HDF5, as
// stored, then converted. open() reads it once too, so the check process goes through this.
void read_compact(hid_t dset, const DatasetInfo& info, const std::string& where, std::vector<float>& out) {
  const H5Type file_type(h5_id(H5Dget_type(dset), where, "H5Dget_type"));
  const H5Type mem(h5_id(H5Tcopy(file_type.get()), where, "H5Tcopy"));
  h5_ok(H5Dread(dset, mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), where, "reading data (H5Dread)");
  decode_in_place(out, info.elem, info.big_endian);
}

// Contiguous data: its offset and size inside the file were checked by inspect; read directly.
void read_contiguous(hid_t dset, const DatasetInfo& info, int fd, const std::string& where, std::vector<float>& out) {
  const haddr_t offset = H5Dget_offset(dset);
  if (offset == HADDR_UNDEF) bad(where, "contiguous data has no address in the file (never written)");
  pread_exact(fd, reinterpret_cast<unsigned char*>(out.data()), info.shape.numel * info.esize, offset, where,
              "the data");
  decode_in_place(out, info.elem, info.big_endian);
}

// ---------------------------------------------------------------------------------------------
// Enumeration

struct Link {
  std::string name;
  H5L_type_t type = H5L_TYPE_ERROR;
};

struct LinkList {
  std::vector<Link> links;
  bool failed = false;
};

herr_t collect_link(hid_t, const char* name, const H5L_info_t* info, void* data) noexcept {
  auto* list = static_cast<LinkList*>(data);
  try {
    list->links.push_back({name ? name : "", info->type});
    return 0;
  } catch (...) {
    list->failed = true;
    return -1;
  }
}

std::vector<Link> list_links(hid_t group, const std::string& where) {
  LinkList list;
  hsize_t idx = 0;
  const herr_t status = H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_link, &list);
  if (list.failed) throw std::bad_alloc();
  if (status < 0) h5_fail(where, "listing the group's links (H5Literate)");
  return std::move(list.links);
}

// A link that may be followed: a hard link with a plain name.
void check_link(const Link& link, const std::string& where) {
  if (link.name.empty() || link.name == "." || link.name == ".." || link.name.find('/') != std::string::npos)
    bad(where, "invalid link name");
  switch (link.type) {
    case H5L_TYPE_HARD: return;
    case H5L_TYPE_SOFT:
      bad(where, "is a soft link; a dump holds only real groups and datasets (no links)");
    case H5L_TYPE_EXTERNAL:
      bad(where, "is an external link (to an object in another file); a dump holds only real groups and datasets");
    default:
      bad(where, "is a user-defined link (type {}); a dump holds only real groups and datasets",
          static_cast<int>(link.type));
  }
}

// The open dump. The HDF5 file stays open for the object's lifetime.
struct State {
  fs::path path;
  std::string label;  // path.string(), for messages
  std::string_view container;
  std::uint64_t file_size = 0;
  std::map<std::string, Layer, std::less<>> layers;
  hid_t h5file = -1;
  int fd = -1;  // the HDF5 file, for raw data reads
  std::optional<Checkpoint> checkpoint;

  State() = default;
  State(const State&) = delete;
  State& operator=(const State&) = delete;
  ~State() {
    if (h5file >= 0) {
      const std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
      H5Fclose(h5file);
    }
    if (fd >= 0) ::close(fd);
  }
};

// Opens the file and checks its whole structure into `impl`. Called with the HDF5 lock held (or in
// the check process, which must not touch the lock: see probe_hdf5).
void scan_hdf5(State& impl) {
  const std::string& file = impl.label;
  quiet_hdf5(file);
  {
    const H5Plist fapl(h5_id(H5Pcreate(H5P_FILE_ACCESS), file, "H5Pcreate"));
    h5_ok(H5Pset_fapl_sec2(fapl.get()), file, "H5Pset_fapl_sec2");
    // Lock when the file system can, read anyway where locks are disabled (NFS, Lustre).
    h5_ok(H5Pset_file_locking(fapl.get(), 1, 1), file, "H5Pset_file_locking");
    impl.h5file = H5Fopen(impl.path.c_str(), H5F_ACC_RDONLY, fapl.get());
    if (impl.h5file < 0) {  // before closing fapl: any HDF5 call clears the error stack
      const StackText s = hdf5_stack();
      fail(s.io ? ErrorKind::io : ErrorKind::format, "{}: cannot open as HDF5: {}", file, s.text);
    }
  }
  hsize_t h5size = 0;
  h5_ok(H5Fget_filesize(impl.h5file, &h5size), file, "H5Fget_filesize");
  if (h5size > impl.file_size)
    bad(file, "truncated file: HDF5 expects {} bytes, the file holds {}", h5size, impl.file_size);
  {  // raw data is read at HDF5's addresses: they must be file offsets (base address 0)
    const H5Plist fcpl(h5_id(H5Fget_create_plist(impl.h5file), file, "H5Fget_create_plist"));
    hsize_t userblock = 0;
    h5_ok(H5Pget_userblock(fcpl.get(), &userblock), file, "H5Pget_userblock");
    if (userblock != 0)
      bad(file, "HDF5 file with a {}-byte user block (base address); write the dump without a user block", userblock);
  }

  const H5Group root(h5_id(H5Gopen2(impl.h5file, "/", H5P_DEFAULT), file, "opening the root group"));
  std::unordered_map<haddr_t, std::string> seen;  // object address -> its first path: one name per object
  auto note = [&](haddr_t addr, const std::string& path, const std::string& where) {
    const auto [it, fresh] = seen.emplace(addr, path);
    if (!fresh) bad(where, "is a second name for {} (hard links to one object); each call is stored once", it->second);
  };

  for (const Link& link : list_links(root.get(), file + ": /")) {
    const std::string object = "/" + printable(link.name);
    const std::string where = file + ": " + object;
    check_link(link, where);
    H5O_info_t oi{};
    h5_ok(H5Oget_info_by_name2(root.get(), link.name.c_str(), &oi, H5O_INFO_BASIC, H5P_DEFAULT), where,
          "H5Oget_info_by_name");
    if (oi.type == H5O_TYPE_DATASET)
      bad(where, "dataset at the root; each call belongs inside its layer's group (/<layer>/x_NNNN)");
    if (oi.type == H5O_TYPE_NAMED_DATATYPE) bad(where, "named datatype at the root; the root holds only layer groups");
    if (oi.type != H5O_TYPE_GROUP) bad(where, "object of unknown type {} at the root", static_cast<int>(oi.type));
    check_layer_name(link.name, where);
    note(oi.addr, object, where);

    const H5Group group(h5_id(H5Gopen2(root.get(), link.name.c_str(), H5P_DEFAULT), where, "H5Gopen2"));
    Layer layer;
    for (const Link& entry : list_links(group.get(), where)) {
      const std::string path = object + "/" + printable(entry.name);
      const std::string at = file + ": " + path;
      check_link(entry, at);
      H5O_info_t ei{};
      h5_ok(H5Oget_info_by_name2(group.get(), entry.name.c_str(), &ei, H5O_INFO_BASIC, H5P_DEFAULT), at,
            "H5Oget_info_by_name");
      if (ei.type == H5O_TYPE_GROUP)
        bad(at, "group inside a layer group; a layer group holds only datasets named x_NNNN");
      if (ei.type == H5O_TYPE_NAMED_DATATYPE)
        bad(at, "named datatype inside a layer group; a layer group holds only datasets named x_NNNN");
      if (ei.type != H5O_TYPE_DATASET) bad(at, "object of unknown type {}", static_cast<int>(ei.type));
      const std::int64_t index = checked_call_index(entry.name, at);
      note(ei.addr, path, at);
      const H5Dataset dset(h5_id(H5Dopen2(group.get(), entry.name.c_str(), H5P_DEFAULT), at, "H5Dopen2"));
      const DatasetInfo info = inspect(dset.get(), at, impl.file_size, true);
      if (info.layout == H5D_COMPACT) {  // small (inside the object header): read once, so the check process does
        std::vector<float> scratch(info.shape.numel);
        read_compact(dset.get(), info, at, scratch);
      }
      layer.calls.push_back({index, entry.name, info.shape.rows, info.shape.cols, elem_name(info.elem)});
      layer.refs.push_back(ei.addr);
    }
    sort_calls(layer, where);
    impl.layers.emplace(link.name, std::move(layer));
  }
  if (impl.layers.empty())
    bad(file, "holds no layer groups; a dump has one group per layer, named as the module, holding x_0000, ...");
}

// ---------------------------------------------------------------------------------------------
// The structure is first scanned in a forked child process. HDF5 1.10.8 does not survive every
// corrupt file: fuzzing single-byte mutations of h5py dumps crashed it (11 of 6,000) or hung it
// (4 of 6,000) inside its global-heap reader, reached through the variable-length string that
// h5py writes for attrs["dtype"] = "bfloat16". A crash or hang of the child becomes a format
// error; only when the child reports success does this process scan the file itself (the same
// deterministic code, so it succeeds too). Reading data afterwards touches only metadata the scan
// already went through.

// The check process may take 60 s plus 30 s per GiB of file (a real scan takes about 1 s per
// 30,000 calls); longer is taken for a hang. Test seam: DUQUANT_TEST_HDF5_CHECK_SECONDS=N (1 to
// 86400) replaces the limit, so that the fuzz target meets HDF5's hangs in seconds, not minutes.
std::int64_t probe_seconds(const std::string& file, std::uint64_t file_size) {
  if (const char* seam = std::getenv("DUQUANT_TEST_HDF5_CHECK_SECONDS"); seam != nullptr && *seam != '\0') {
    const std::string_view text(seam);
    std::int64_t n = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    DQ_CHECK(ec == std::errc() && end == text.data() + text.size() && n >= 1 && n <= 86400, usage,
             "{}: DUQUANT_TEST_HDF5_CHECK_SECONDS={}: expected whole seconds from 1 to 86400", file, text);
    return n;
  }
  return 60 + 30 * static_cast<std::int64_t>((file_size + (std::uint64_t{1} << 30) - 1) >> 30);
}

void write_all(int fd, const std::string& text) noexcept {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

// The child: scans, reports "ok" or "error KIND\nMESSAGE" on `fd`, and leaves without running any
// destructor or exit handler. It never takes the HDF5 lock: the parent's thread holds it, and a
// mutex copied by fork() stays owned by a thread that does not exist in the child.
[[noreturn]] void probe_child(const State& parent, int fd) noexcept {
  for (const int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) std::signal(sig, SIG_DFL);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // A crafted header can make HDF5 allocate and fill gigabytes here (fuzzing found 4 GiB from a
  // 6 KiB file): if memory runs out, the kernel is to kill this process first, not its parent.
  if (const int adj = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC); adj >= 0) {
    write_all(adj, "1000");
    ::close(adj);
  }
  std::string report = "ok";
  try {
    auto* probe = new State();  // never destroyed (its destructor would take the lock)
    probe->path = parent.path;
    probe->label = parent.label;
    probe->file_size = parent.file_size;
    scan_hdf5(*probe);
  } catch (const Error& e) {
    report = std::string("error ") + kind_name(e.kind()) + "\n" + e.what();
  } catch (const std::exception& e) {
    report = std::string("error internal\n") + parent.label + ": " + e.what();
  } catch (...) {
    report = std::string("error internal\n") + parent.label + ": unknown exception while checking the HDF5 file";
  }
  write_all(fd, report);
  _exit(0);
}

// Runs probe_child and turns its outcome into nothing (success) or a duquant::Error.
void probe_hdf5(const State& impl) {
  const std::string& file = impl.label;
  const std::int64_t seconds = probe_seconds(file, impl.file_size);
  int fds[2] = {-1, -1};
  DQ_CHECK(::pipe2(fds, O_CLOEXEC) == 0, io, "{}: cannot create a pipe for the HDF5 check: {}", file,
           std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    fail(ErrorKind::io, "{}: cannot start the HDF5 check process: {}", file, std::strerror(err));
  }
  if (pid == 0) {
    ::close(fds[0]);
    probe_child(impl, fds[1]);
  }
  ::close(fds[1]);
  std::string report;
  bool timed_out = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  char buf[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 1 << 30)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      timed_out = true;
      break;
    }
    if (ready < 0) break;
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (report.size() < (std::size_t{1} << 20)) report.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  pid_t waited = -1;
  do {
    waited = ::waitpid(pid, &status, 0);
  } while (waited < 0 && errno == EINTR);
  if (timed_out)
    bad(file, "HDF5 did not finish reading the file's structure within {} s (checked in a separate process); the "
              "file is corrupt or crafted", seconds);
  if (waited == pid && WIFSIGNALED(status))
    bad(file, "HDF5 crashed (signal {}) reading the file's structure (checked in a separate process); the file is "
              "corrupt or crafted, and HDF5 1.10 does not survive every such file", WTERMSIG(status));
  if (report == "ok") return;
  if (report.rfind("error ", 0) == 0) {
    const std::size_t eol = report.find('\n');
    const std::string kind = report.substr(6, eol == std::string::npos ? std::string::npos : eol - 6);
    const std::string message = eol == std::string::npos ? file : report.substr(eol + 1);
    for (const ErrorKind k : {ErrorKind::usage, ErrorKind::format, ErrorKind::io, ErrorKind::no_match,
                              ErrorKind::numeric, ErrorKind::internal})
      if (kind == kind_name(k)) throw Error(k, message);
  }
  bad(file, "HDF5's check process ended without a result (wait status {}; checked in a separate process); the file "
            "is corrupt or crafted", status);
}

void open_hdf5(State& impl) {
  const std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
  quiet_hdf5(impl.label);
  probe_hdf5(impl);
  scan_hdf5(impl);
}

void open_safetensors(State& impl) {
  impl.checkpoint.emplace(Checkpoint::open(impl.path));
  const Checkpoint& ckpt = *impl.checkpoint;
  const auto& tensors = ckpt.tensors();
  std::map<std::string, Layer, std::less<>> layers;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorRef& t = tensors[i];
    const std::string where = ckpt.files().at(t.file).path.string() + ": tensor '" + printable(t.name) + "'";
    const std::size_t dot = t.name.rfind(".x_");
    if (dot == std::string::npos || dot == 0 || !call_index(std::string_view(t.name).substr(dot + 1)))
      bad(where, "is not named '<layer>.x_NNNN' (a layer name, '.x_' and at least 4 decimal digits); a safetensors "
                 "dump holds nothing else");
    const std::string layer = t.name.substr(0, dot);
    const std::string call = t.name.substr(dot + 1);
    check_layer_name(layer, where);
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      bad(where, "unsupported element type {}; a call is F32, F16 or BF16", dtype_name(t.dtype));
    const Shape shape = check_dims(t.shape, where);
    Layer& l = layers[layer];
    l.calls.push_back({*call_index(call), call, shape.rows, shape.cols, std::string(dtype_name(t.dtype))});
    l.refs.push_back(i);
  }
  for (auto& [name, layer] : layers) sort_calls(layer, impl.label + ": layer '" + printable(name) + "'");
  if (layers.empty()) bad(impl.label, "holds no calls (tensors named '<layer>.x_NNNN')");
  impl.layers = std::move(layers);
}

// Where the HDF5 signature sits (offset 0, or a user block of 512, 1024, ... bytes), if anywhere.
std::optional<std::uint64_t> hdf5_signature_at(int fd, std::uint64_t size, const std::string& file) {
  for (std::uint64_t offset = 0; offset + 8 <= size; offset = offset ? offset * 2 : 512) {
    unsigned char head[8] = {};
    pread_exact(fd, head, 8, offset, file, "the first bytes");
    if (std::memcmp(head, kHdf5Signature, 8) == 0) return offset;
    if (offset >= (std::uint64_t{1} << 40)) break;
  }
  return std::nullopt;
}

}  // namespace

struct CalibDump::Impl {
  State s;
};

CalibDump::CalibDump(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CalibDump::CalibDump(CalibDump&&) noexcept = default;
CalibDump& CalibDump::operator=(CalibDump&&) noexcept = default;
CalibDump::~CalibDump() = default;

CalibDump CalibDump::open(const fs::path& path) {
  auto impl = std::make_unique<Impl>();
  State& st = impl->s;
  st.path = path;
  st.label = path.string();
  const std::string& file = st.label;

  std::error_code ec;
  const auto status = fs::status(path, ec);
  DQ_CHECK(!ec || ec == std::errc::no_such_file_or_directory, io, "{}: cannot access: {}", file, ec.message());
  DQ_CHECK(fs::exists(status), io, "{}: no such file", file);
  if (fs::is_directory(status)) {  // a sharded safetensors dump: the checkpoint reader's rules
    st.container = "safetensors";
    open_safetensors(st);
    return CalibDump(std::move(impl));
  }
  DQ_CHECK(fs::is_regular_file(status), io, "{}: not a regular file", file);
  st.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // never blocks, even if swapped for a FIFO
  DQ_CHECK(st.fd >= 0, io, "{}: cannot open for reading: {}", file, std::strerror(errno));
  struct stat info {};
  DQ_CHECK(::fstat(st.fd, &info) == 0, io, "{}: cannot read the size: {}", file, std::strerror(errno));
  DQ_CHECK(S_ISREG(info.st_mode), io, "{}: not a regular file", file);
  st.file_size = static_cast<std::uint64_t>(info.st_size);
  if (st.file_size == 0) bad(file, "empty file (0 bytes); a calibration dump is an HDF5 or safetensors file");

  const auto signature = hdf5_signature_at(st.fd, st.file_size, file);
  if (signature && *signature > 0)
    bad(file, "HDF5 file with a {}-byte user block; write the dump without a user block", *signature);
  if (signature) {
    st.container = "hdf5";
    open_hdf5(st);
  } else {
    ::close(std::exchange(st.fd, -1));  // the safetensors reader maps the file itself
    st.container = "safetensors";
    open_safetensors(st);
  }
  return CalibDump(std::move(impl));
}

const fs::path& CalibDump::path() const { return impl_->s.path; }
std::string_view CalibDump::container() const { return impl_->s.container; }

std::vector<std::string> CalibDump::layers() const {
  std::vector<std::string> names;
  names.reserve(impl_->s.layers.size());
  for (const auto& entry : impl_->s.layers) names.push_back(entry.first);
  return names;
}

const std::vector<DumpCall>* CalibDump::calls(std::string_view layer) const {
  const auto it = impl_->s.layers.find(layer);
  return it == impl_->s.layers.end() ? nullptr : &it->second.calls;
}

void CalibDump::read(std::string_view layer, const DumpCall& call, std::vector<float>& out) const {
  const State& impl = impl_->s;
  const auto it = impl.layers.find(layer);
  DQ_CHECK(it != impl.layers.end(), internal, "{}: read: the dump has no layer '{}'", impl.label, printable(layer));
  const Layer& l = it->second;
  const auto pos = std::lower_bound(l.calls.begin(), l.calls.end(), call.index,
                                    [](const DumpCall& c, std::int64_t index) { return c.index < index; });
  DQ_CHECK(pos != l.calls.end() && pos->index == call.index && pos->name == call.name && pos->rows == call.rows &&
               pos->cols == call.cols && pos->dtype == call.dtype,
           internal, "{}: read: call '{}' is not a call of layer '{}' in this dump", impl.label, printable(call.name),
           printable(layer));
  const std::uint64_t ref = l.refs[static_cast<std::size_t>(pos - l.calls.begin())];

  if (impl.container == "safetensors") {
    const TensorRef& t = impl.checkpoint->tensors().at(ref);
    out.resize(t.numel);
    impl.checkpoint->read_f32(t, out);
    impl.checkpoint->release(t);
    check_finite(out, call.cols,
                 impl.checkpoint->files().at(t.file).path.string() + ": tensor '" + printable(t.name) + "'");
    return;
  }

  const std::string where = impl.label + ": /" + printable(layer) + "/" + printable(call.name);
  {
    const std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
    quiet_hdf5(where);
    const H5Object dset(h5_id(H5Oopen_by_addr(impl.h5file, static_cast<haddr_t>(ref)), where, "H5Oopen_by_addr"));
    if (H5Iget_type(dset.get()) != H5I_DATASET) bad(where, "is no longer a dataset (was the file changed?)");
    const DatasetInfo info = inspect(dset.get(), where, impl.file_size, false);
    if (info.shape.rows != call.rows || info.shape.cols != call.cols || elem_name(info.elem) != call.dtype)
      bad(where, "changed since the dump was opened");
    out.resize(info.shape.numel);
    if (info.layout == H5D_CHUNKED) {
      read_chunked(dset.get(), info, impl.fd, impl.file_size, where, out);
    } else if (info.layout == H5D_CONTIGUOUS) {
      read_contiguous(dset.get(), info, impl.fd, where, out);
    } else {
      read_compact(dset.get(), info, where, out);
    }
  }
  check_finite(out, call.cols, where);
}

}  // namespace duquant::formats

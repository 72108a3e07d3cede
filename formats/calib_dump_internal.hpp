// Internal to the calibration dump reader (formats/calib_dump*.cpp): what its parts share. The
// reader's design and the HDF5 weaknesses it works around are described in calib_dump.cpp.
#pragma once

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
#include <cmath>
#include <csignal>
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

#include "base/elementwise.hpp"
#include "duquant/error.hpp"
#include "formats/safetensors_checkpoint.hpp"

#include "duquant/error.hpp"
#include "formats/calib_dump.hpp"
#include "formats/dtype.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace duquant::formats::calib_internal {
namespace fs = std::filesystem;

inline constexpr int kMinRank = 2;
inline constexpr int kMaxRank = 8;
// A chunk may be larger than its call only up to this size (extendable datasets may be created
// with chunks larger than what was finally written); reading holds at most a few chunks.
inline constexpr std::uint64_t kChunkSlackBytes = std::uint64_t{64} << 20;
inline constexpr std::uint64_t kMaxChunksPerCall = std::uint64_t{1} << 20;
inline constexpr std::size_t kMaxDtypeAttrBytes = 64;
inline constexpr std::size_t kMaxIndexDigits = 18;  // call indices fit an int64 with room to spare
inline constexpr unsigned char kHdf5Signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};

// Messages (calib_dump_names.cpp): names and HDF5's texts come from untrusted files.
std::size_t utf8_length(std::string_view s, std::size_t i);
std::string printable(std::string_view s);

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

// HDF5 plumbing (calib_dump_hdf5.cpp): one lock for every HDF5 call, RAII for every id, errors that
// carry HDF5's own description.
std::recursive_mutex& hdf5_mutex();

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

[[noreturn]] void h5_fail(const std::string& where, std::string_view call);
hid_t h5_id(hid_t id, const std::string& where, std::string_view call);
void h5_ok(herr_t status, const std::string& where, std::string_view call);
void quiet_hdf5(const std::string& where);

// Shapes and names (calib_dump_names.cpp).
struct Shape {
  std::uint64_t rows = 0;
  std::uint64_t cols = 0;
  std::uint64_t numel = 0;
};

inline constexpr const char* kCallShape =
    "a call is [tokens, in_features], rank 2 to 8 (leading dims are flattened into tokens)";

Shape check_dims(std::span<const std::uint64_t> dims, const std::string& where);
bool all_digits(std::string_view s);
std::optional<std::int64_t> call_index(std::string_view name);
std::int64_t checked_call_index(std::string_view name, const std::string& where);
void check_layer_name(std::string_view name, const std::string& where);

struct Layer {
  std::vector<DumpCall> calls;
  std::vector<std::uint64_t> refs;  // HDF5: object address; safetensors: index into tensors()
};

void sort_calls(Layer& layer, const std::string& where);

// Element conversion and reads (calib_dump_chunks.cpp).
// A call's elements are F32, F16 or BF16 (formats' DType), in the file's byte order.
void decode_in_place(std::vector<float>& out, DType dtype, bool big_endian);
void pread_exact(int fd, unsigned char* dst, std::uint64_t size, std::uint64_t offset, const std::string& where,
                 std::string_view what);
void check_finite(std::span<const float> values, std::uint64_t cols, const std::string& where);

// HDF5 datasets (calib_dump_hdf5.cpp).
struct DatasetInfo {
  std::vector<std::uint64_t> dims;
  Shape shape;
  DType dtype = DType::F32;  // F32, F16 or BF16
  bool big_endian = false;
  std::size_t esize = 4;  // bytes per element
  H5D_layout_t layout = H5D_CONTIGUOUS;
  std::vector<std::uint64_t> chunk;  // chunked only
  std::uint64_t chunk_bytes = 0;
  std::vector<H5Z_filter_t> filters;  // in write order (pipeline index)
  int deflate_at = -1;
  int fletcher_at = -1;
};

struct ChunkEntry {
  unsigned mask = 0;
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
};

inline bool applied(int at, unsigned mask) { return at >= 0 && (mask & (1u << at)) == 0; }

std::uint64_t max_deflated_bytes(const DatasetInfo& info);
void check_chunk(const DatasetInfo& info, const ChunkEntry& c, std::span<const hsize_t> offset, std::uint64_t file_size,
                 const std::string& where);
ChunkEntry chunk_entry(hid_t dset, std::span<const hsize_t> offset, const std::string& where);

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

DatasetInfo inspect(hid_t dset, const std::string& where, std::uint64_t file_size, bool check_chunks);

// Reading a dataset's data (calib_dump_chunks.cpp), with the HDF5 lock held once.
void read_chunked(hid_t dset, const DatasetInfo& info, int fd, std::uint64_t file_size, const std::string& where,
                  std::vector<float>& out);
void read_compact(hid_t dset, const DatasetInfo& info, const std::string& where, std::vector<float>& out);
void read_contiguous(hid_t dset, const DatasetInfo& info, int fd, const std::string& where, std::vector<float>& out);

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

// Opens the file and checks its whole structure into `impl` (calib_dump_hdf5.cpp). Called with
// the HDF5 lock held (or in the check process, which must not touch the lock: see probe_hdf5).
void scan_hdf5(State& impl);
// Scans the file in a forked child first (calib_dump_probe.cpp); a crash or hang there is a
// format error naming the file.
void probe_hdf5(const State& impl);

}  // namespace duquant::formats::calib_internal

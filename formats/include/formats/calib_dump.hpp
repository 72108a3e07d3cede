// Calibration activation dumps (docs/calibration-dumps.md): the inputs some linear layers saw
// during real forward calls, one [tokens, in_features] matrix per call.
//
// Two containers, told apart by the first bytes (the HDF5 signature at offset 0; anything else,
// or a folder, goes to the safetensors reader):
//  - HDF5: one group per layer, named exactly as the module; inside it one dataset per recorded
//    call, `x_0000`, `x_0001`, … (`x_` and at least 4 decimal digits), float32 or float16, or
//    bfloat16 stored as uint16 with the string attribute `dtype = "bfloat16"`. Rank 2 to 8;
//    leading dims are flattened into tokens. An empty layer group is allowed (no calls); a file
//    with no layer group at all is not.
//  - safetensors: keys `<layer>.x_0000`, … (F32, F16 or BF16), read with the strict reader;
//    any other key is refused.
//
// Dumps are untrusted and large. `open` validates the whole structure before any data is read:
// only hard links to groups and datasets (no external, soft or user-defined links, no second name
// for one object), rank, dims (overflow-checked, at most kMaxCallElements per call), dtype class
// and size, compact, contiguous or chunked layout only (no external storage, no virtual
// datasets), only deflate/shuffle/fletcher32 filters (plugins are never loaded), for contiguous
// and compact data storage that holds exactly the declared bytes inside the file, and for chunked
// data every chunk present, inside the file, of a plausible stored size and overlapping no other.
// Violations are duquant::Error (format) naming the file, the object and the numbers; a missing
// file is io.
//
// Reading: one call at a time, so memory does not grow with the dump. HDF5 is used for metadata
// only: contiguous data and chunks are read with pread at checked offsets, and chunks are decoded
// by duquant (HDF5 1.10's own filters over-allocate and over-read on crafted chunks), so a read
// holds the call plus at most three chunk-sized buffers; a chunk is at most max(call, 64 MiB).
// Every HDF5 call goes through one process-wide lock: read() may be called from several threads
// (safetensors reads run in parallel, HDF5 reads one after the other). The HDF5 file stays open
// for the object's lifetime and must not change meanwhile.
//
// HDF5 1.10 itself can crash on corrupt metadata (fuzzing found crashes in its global-heap reader,
// reached through h5py's variable-length string attributes), so `open` first scans an HDF5 file in
// a forked child process: a crash or a hang (60 s + 30 s per GiB) there is a format error. The
// scan then runs again in this process, so `open` costs twice the scan: measured 1.6 s for 30,000
// contiguous calls, 0.7 s for 10,000 chunked ones (plus one chunk-index lookup per chunk).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace duquant::formats {

// Largest call accepted: 2^30 elements (4 GiB as float32).
inline constexpr std::uint64_t kMaxCallElements = std::uint64_t{1} << 30;

struct DumpCall {
  std::int64_t index = 0;  // the number in x_NNNN
  std::string name;        // "x_0003" (HDF5 dataset name, or the key's suffix)
  std::uint64_t rows = 0;  // tokens (leading dims flattened)
  std::uint64_t cols = 0;  // in_features (last dim)
  std::string dtype;       // "F32", "F16" or "BF16" as stored
};

class CalibDump {
 public:
  // Opens and validates the whole file (HDF5 or safetensors, told apart by their first bytes).
  static CalibDump open(const std::filesystem::path& path);

  CalibDump(CalibDump&&) noexcept;
  CalibDump& operator=(CalibDump&&) noexcept;
  ~CalibDump();

  const std::filesystem::path& path() const;
  std::string_view container() const;  // "hdf5" or "safetensors"
  // Layer names, sorted.
  std::vector<std::string> layers() const;
  // A layer's calls in ascending index order, or nullptr when the dump has no such layer.
  // Indices are distinct (x_0001 and x_00001 together are a format error).
  const std::vector<DumpCall>* calls(std::string_view layer) const;
  // Reads one call as float32, row-major [rows, cols], into `out` (resized). A NaN or Inf value is
  // duquant::Error (numeric) naming the file, layer, call, row and column.
  void read(std::string_view layer, const DumpCall& call, std::vector<float>& out) const;

 private:
  struct Impl;
  explicit CalibDump(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace duquant::formats

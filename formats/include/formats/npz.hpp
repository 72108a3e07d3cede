// NumPy .npz archives: uncompressed ZIP files whose members are .npy arrays (numpy.savez).
//
// The writer stores members in the order added, with a fixed timestamp (1980-01-01) so that the
// same arrays give the same bytes. The reader accepts what numpy.savez writes (including its
// ZIP64 extra fields), checks every offset and size against the file, verifies each member's
// CRC-32, and rejects compressed or encrypted members, duplicate names and overlapping data
// (members may be listed in any order, as numpy reads them).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "formats/atomic_file.hpp"
#include "formats/npy.hpp"

namespace duquant::formats {

// Most members an archive written by NpzWriter may hold: a plain (non-ZIP64) end record counts
// them in 16 bits. The reader accepts exactly this many without ZIP64 records, as numpy does.
inline constexpr std::uint64_t kMaxNpzMembers = 65535;

class NpzWriter {
 public:
  explicit NpzWriter(std::filesystem::path path);
  // Adds member `key` + ".npy" holding the complete .npy bytes `npy`.
  void add(const std::string& key, const std::string& npy);
  // Writes the central directory and publishes the file atomically.
  void commit();

 private:
  struct Entry {
    std::string name;
    std::uint32_t crc = 0;
    std::uint32_t size = 0;
    std::uint32_t offset = 0;
  };
  AtomicFile file_;
  std::vector<Entry> entries_;
};

// The size of the archive NpzWriter writes for members of these keys (without ".npy") and .npy
// sizes, in order: a local header and a central entry per member, then the end record.
std::uint64_t npz_size(const std::vector<std::pair<std::string, std::uint64_t>>& members);

struct ZipMember {
  std::string name;
  std::span<const std::byte> data;
};

// Members of a stored (uncompressed) ZIP held in `bytes`, in central-directory order.
std::vector<ZipMember> parse_zip(std::span<const std::byte> bytes, const std::string& label);

// An .npz opened from a file: arrays by key (member name without ".npy"), in archive order.
class NpzFile {
 public:
  static NpzFile open(const std::filesystem::path& path);
  static NpzFile parse(std::vector<std::byte> bytes, const std::string& label);
  NpzFile(NpzFile&&) noexcept = default;  // the arrays point into bytes_, whose buffer moves along
  NpzFile& operator=(NpzFile&&) noexcept = default;
  NpzFile(const NpzFile&) = delete;
  NpzFile& operator=(const NpzFile&) = delete;

  const std::vector<std::string>& keys() const noexcept { return keys_; }
  bool contains(const std::string& key) const { return arrays_.count(key) != 0; }
  // The array `key`; a missing key throws duquant::Error (format) naming the file.
  const NpyArray& at(const std::string& key) const;
  const std::string& label() const noexcept { return label_; }

 private:
  NpzFile() = default;
  std::string label_;
  std::vector<std::byte> bytes_;
  std::vector<std::string> keys_;
  std::map<std::string, NpyArray> arrays_;
};

}  // namespace duquant::formats

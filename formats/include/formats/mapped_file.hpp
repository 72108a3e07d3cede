// A read-only memory map of a whole file. Mapping costs nothing until pages are touched, so
// opening a multi-GB checkpoint and reading its header reads only the header's pages.
//
// A mapped file that another process truncates makes the next read of a vanished page raise
// SIGBUS. Every mapping is registered with a SIGBUS handler (installed with the first mapping)
// that turns such a fault into duquant's I/O error: it prints the file, the offset and the mapped
// size and ends the process with exit code 4, without running destructors -- nothing half-written
// is ever under a final name, and --resume continues from the last finished layer. A fault outside
// every mapping is passed on to the handler that was there before (or the default: a crash).
// check_unchanged() detects the other way a file can change under a reader: rewritten in place or
// replaced by another file of the same name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>

namespace duquant::formats {

class MappedFile {
 public:
  // Maps `path` read-only. Throws duquant::Error (io) naming the file and the system's reason.
  static MappedFile open(const std::filesystem::path& path);

  MappedFile() = default;
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const noexcept { return {data_, size_}; }
  // Tells the kernel the pages wholly inside [offset, offset + length) are not needed any more,
  // so streaming through a large file keeps resident memory bounded. The data stays readable
  // (it is paged in again from the file if touched).
  void release(std::uint64_t offset, std::uint64_t length) const noexcept;
  std::uint64_t size() const noexcept { return size_; }
  // Throws duquant::Error (io) when the file at path() is no longer the one mapped: removed,
  // replaced by another file, or modified (size or modification time changed) since open().
  void check_unchanged(const char* stage) const;
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  int guard_slot_ = -1;  // the SIGBUS registry entry of this mapping, -1 when unregistered
  // The file's identity at open(): device, inode, size, modification time (ns).
  std::uint64_t dev_ = 0, ino_ = 0, mtime_ns_ = 0;
};

}  // namespace duquant::formats

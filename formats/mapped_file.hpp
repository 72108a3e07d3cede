// A read-only memory map of a whole file. Mapping costs nothing until pages are touched, so
// opening a multi-GB checkpoint and reading its header reads only the header's pages.
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
  const std::filesystem::path& path() const noexcept { return path_; }

 private:
  std::filesystem::path path_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
};

}  // namespace duquant::formats

// Opening inputs without ever blocking, and refusing what is not a regular file.
//
// A path given by a user (or named inside a file) can be a FIFO, a device such as /dev/zero, a
// socket, a folder, a symbolic link loop or a name too long for the file system. Every input is
// opened here: O_NONBLOCK (opening a FIFO for reading would otherwise wait for a writer forever),
// then fstat on the descriptor, so the check cannot be raced by a rename between a stat and the
// open. Anything but a regular file is an io error (exit 4) naming the path and what it is.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace duquant::formats {

// What a file system object is, in words: "a FIFO", "a character device", "a block device",
// "a socket", "a folder", "a symbolic link", "a regular file", "an unknown kind of file".
const char* file_kind_text(mode_t mode) noexcept;
// The same words for a std::filesystem file type.
const char* file_type_text(std::filesystem::file_type t) noexcept;

// A regular file open for reading; the descriptor is closed on destruction.
class RegularFile {
 public:
  // Opens `path` for reading without blocking; refuses (io) anything but a regular file. `label`
  // names the file in messages (default: the path), e.g. "--config cfg.json".
  static RegularFile open(const std::filesystem::path& path, std::string_view label = {});
  RegularFile(RegularFile&& other) noexcept;
  RegularFile& operator=(RegularFile&& other) noexcept;
  RegularFile(const RegularFile&) = delete;
  RegularFile& operator=(const RegularFile&) = delete;
  ~RegularFile();

  int fd() const noexcept { return fd_; }
  std::uint64_t size() const noexcept { return size_; }
  const std::string& label() const noexcept { return label_; }
  // Reads the whole file; more than `limit` bytes is a format error naming the limit.
  std::string read_all(std::uint64_t limit) const;
  std::vector<std::byte> read_all_bytes(std::uint64_t limit) const;

 private:
  RegularFile() = default;
  int fd_ = -1;
  std::uint64_t size_ = 0;
  std::string label_;
};

// The whole of the regular file `path` (at most `limit` bytes, else a format error).
std::string read_regular_file(const std::filesystem::path& path, std::uint64_t limit, std::string_view label = {});

// Checks without opening that `path` is (after following symbolic links) a regular file, for
// readers that open by name (HDF5); io error otherwise. Missing: io "no such file".
void require_regular_file(const std::filesystem::path& path, std::string_view label = {});

// What `path` is, following symbolic links, without throwing on a loop or an over-long name:
// the status, or an io error naming the path when the file system cannot tell (ELOOP,
// ENAMETOOLONG, EACCES, ...). A missing path is file_type::not_found, never an error.
std::filesystem::file_status status_of(const std::filesystem::path& path, std::string_view label = {});
// The same without following a final symbolic link.
std::filesystem::file_status symlink_status_of(const std::filesystem::path& path, std::string_view label = {});

// A pack-internal name (from a manifest) as a path inside `folder`: refused (format) when it is
// absolute, climbs out with "..", or, once its symbolic links are followed, lies outside the folder.
std::filesystem::path confined_path(const std::filesystem::path& folder, const std::string& name,
                                    std::string_view label);

}  // namespace duquant::formats

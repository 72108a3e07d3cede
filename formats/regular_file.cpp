#include "formats/regular_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "duquant/error.hpp"

namespace duquant::formats {
namespace fs = std::filesystem;

namespace {

std::string label_of(const fs::path& path, std::string_view label) {
  return label.empty() ? path.string() : std::string(label);
}

fs::file_status status_from(const fs::path& path, std::string_view label, bool follow) {
  struct stat st {};
  const int rc = follow ? ::stat(path.c_str(), &st) : ::lstat(path.c_str(), &st);
  if (rc != 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) return fs::file_status(fs::file_type::not_found);
    fail(ErrorKind::io, "{}: cannot access: {}", label_of(path, label),
         err == ELOOP ? std::string("too many levels of symbolic links (a symbolic link loop?)") : std::strerror(err));
  }
  const auto perms = static_cast<fs::perms>(st.st_mode & 07777);
  if (S_ISREG(st.st_mode)) return fs::file_status(fs::file_type::regular, perms);
  if (S_ISDIR(st.st_mode)) return fs::file_status(fs::file_type::directory, perms);
  if (S_ISLNK(st.st_mode)) return fs::file_status(fs::file_type::symlink, perms);
  if (S_ISFIFO(st.st_mode)) return fs::file_status(fs::file_type::fifo, perms);
  if (S_ISCHR(st.st_mode)) return fs::file_status(fs::file_type::character, perms);
  if (S_ISBLK(st.st_mode)) return fs::file_status(fs::file_type::block, perms);
  if (S_ISSOCK(st.st_mode)) return fs::file_status(fs::file_type::socket, perms);
  return fs::file_status(fs::file_type::unknown, perms);
}

}  // namespace

const char* file_type_text(fs::file_type t) noexcept {
  switch (t) {
    case fs::file_type::regular: return "a regular file";
    case fs::file_type::directory: return "a folder";
    case fs::file_type::symlink: return "a symbolic link";
    case fs::file_type::fifo: return "a FIFO";
    case fs::file_type::character: return "a character device";
    case fs::file_type::block: return "a block device";
    case fs::file_type::socket: return "a socket";
    default: return "an unknown kind of file";
  }
}

const char* file_kind_text(mode_t mode) noexcept {
  if (S_ISREG(mode)) return "a regular file";
  if (S_ISDIR(mode)) return "a folder";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "an unknown kind of file";
}

RegularFile RegularFile::open(const fs::path& path, std::string_view label) {
  RegularFile f;
  f.label_ = label_of(path, label);
  // O_NONBLOCK: opening a FIFO for reading returns at once instead of waiting for a writer.
  f.fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (f.fd_ < 0) {
    const int err = errno;
    if (err == ENOENT) fail(ErrorKind::io, "{}: no such file", f.label_);
    fail(ErrorKind::io, "{}: cannot open for reading: {}", f.label_,
         err == ELOOP ? std::string("too many levels of symbolic links (a symbolic link loop?)") : std::strerror(err));
  }
  struct stat st {};
  if (::fstat(f.fd_, &st) != 0) fail(ErrorKind::io, "{}: cannot stat: {}", f.label_, std::strerror(errno));
  DQ_CHECK(S_ISREG(st.st_mode), io, "{}: not a regular file ({}); expected a file", f.label_,
           file_kind_text(st.st_mode));
  // Reads of a regular file never block; clear the flag anyway so that a read is a plain read.
  if (const int flags = ::fcntl(f.fd_, F_GETFL); flags >= 0) ::fcntl(f.fd_, F_SETFL, flags & ~O_NONBLOCK);
  f.size_ = static_cast<std::uint64_t>(st.st_size);
  return f;
}

RegularFile::RegularFile(RegularFile&& other) noexcept
    : fd_(other.fd_), size_(other.size_), label_(std::move(other.label_)) {
  other.fd_ = -1;
}

RegularFile& RegularFile::operator=(RegularFile&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    size_ = other.size_;
    label_ = std::move(other.label_);
    other.fd_ = -1;
  }
  return *this;
}

RegularFile::~RegularFile() {
  if (fd_ >= 0) ::close(fd_);
}

std::vector<std::byte> RegularFile::read_all_bytes(std::uint64_t limit) const {
  DQ_CHECK(size_ <= limit, format, "{}: {} bytes is larger than the {}-byte limit", label_, size_, limit);
  std::vector<std::byte> bytes(static_cast<std::size_t>(size_));
  std::uint64_t done = 0;
  while (done < size_) {
    const ssize_t n =
        ::pread(fd_, bytes.data() + done, static_cast<std::size_t>(size_ - done), static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    DQ_CHECK(n >= 0, io, "{}: read failed after {} bytes: {}", label_, done, std::strerror(errno));
    DQ_CHECK(n > 0, io, "{}: short read ({} of {} bytes): the file shrank while it was read", label_, done, size_);
    done += static_cast<std::uint64_t>(n);
  }
  return bytes;
}

std::string RegularFile::read_all(std::uint64_t limit) const {
  const std::vector<std::byte> bytes = read_all_bytes(limit);
  return std::string(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

std::string read_regular_file(const fs::path& path, std::uint64_t limit, std::string_view label) {
  return RegularFile::open(path, label).read_all(limit);
}

void require_regular_file(const fs::path& path, std::string_view label) {
  const fs::file_status s = status_from(path, label, /*follow=*/true);
  DQ_CHECK(s.type() != fs::file_type::not_found, io, "{}: no such file", label_of(path, label));
  DQ_CHECK(s.type() == fs::file_type::regular, io, "{}: not a regular file ({}); expected a file",
           label_of(path, label), file_type_text(s.type()));
}

fs::file_status status_of(const fs::path& path, std::string_view label) { return status_from(path, label, true); }
fs::file_status symlink_status_of(const fs::path& path, std::string_view label) {
  return status_from(path, label, false);
}

fs::path confined_path(const fs::path& folder, const std::string& name, std::string_view label) {
  const fs::path rel(name);
  DQ_CHECK(!name.empty() && name.find('\0') == std::string::npos, format, "{}: an empty file name", label);
  DQ_CHECK(!rel.is_absolute() && !rel.has_root_name() && !rel.has_root_directory(), format,
           "{}: '{}' is an absolute path; a pack names its files inside its folder", label, name);
  for (const fs::path& part : rel)
    DQ_CHECK(part != "..", format, "{}: '{}' climbs out of the pack folder with '..'", label, name);
  const fs::path full = folder / rel;
  std::error_code ec;
  const fs::path real_folder = fs::canonical(folder, ec);
  if (ec) return full;  // the folder itself is checked by its reader
  const fs::path real = fs::weakly_canonical(full, ec);
  if (ec) return full;  // a loop or an over-long name: the open reports it
  auto f = real_folder.begin();
  auto r = real.begin();
  for (; f != real_folder.end(); ++f, ++r)
    DQ_CHECK(r != real.end() && *r == *f, format, "{}: '{}' is a symbolic link to {}, outside the pack folder {}",
             label, name, real.string(), real_folder.string());
  return full;
}

}  // namespace duquant::formats

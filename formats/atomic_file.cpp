#include "formats/atomic_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "duquant/error.hpp"

namespace duquant::formats {
namespace fs = std::filesystem;

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  const fs::path folder = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
  temp_ = folder / fmt::format(".{}.tmp-{}", target_.filename().string(), ::getpid());
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(ErrorKind::io, "{}: cannot create: {}", temp_.string(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(temp_.c_str());
}

void AtomicFile::write(std::span<const std::byte> data) {
  const std::byte* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      fail(ErrorKind::io, "{}: write failed after {} bytes: {}", target_.string(), written_,
           n < 0 ? std::strerror(errno) : "no progress");
    p += n;
    left -= static_cast<std::size_t>(n);
    written_ += static_cast<std::uint64_t>(n);
  }
}

void AtomicFile::write(std::string_view text) { write(std::as_bytes(std::span(text.data(), text.size()))); }

void AtomicFile::commit() {
  DQ_CHECK(!committed_, internal, "{}: committed twice", target_.string());
  if (::fsync(fd_) != 0) fail(ErrorKind::io, "{}: fsync failed: {}", target_.string(), std::strerror(errno));
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail(ErrorKind::io, "{}: close failed: {}", target_.string(), std::strerror(errno));
  }
  fd_ = -1;
  if (::rename(temp_.c_str(), target_.c_str()) != 0)
    fail(ErrorKind::io, "{}: cannot rename the finished file into place: {}", target_.string(), std::strerror(errno));
  committed_ = true;
  const fs::path folder = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
  const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {  // make the rename itself durable; a folder that cannot be opened is not an error
    ::fsync(dir);
    ::close(dir);
  }
}

}  // namespace duquant::formats

#include "formats/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "duquant/error.hpp"
#include "formats/fault_injection.hpp"
#include "formats/regular_file.hpp"

namespace duquant::formats {
namespace fs = std::filesystem;

namespace {
int checked_fsync(int fd) {
  const int injected = injected_fault(FaultOp::fsync);
  if (injected != 0) {
    errno = injected;
    return -1;
  }
  return ::fsync(fd);
}
}  // namespace

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  // The rename at commit replaces whatever has the final name. Only a regular file is replaced: a
  // FIFO, a device (/dev/null), a socket, a folder or a symbolic link there is the user's, and a
  // process run as root would otherwise swap a device node for a file.
  struct stat st {};
  if (::lstat(target_.c_str(), &st) == 0) {
    DQ_CHECK(S_ISREG(st.st_mode), io, "{}: exists and is {}; duquant replaces only regular files: remove it or choose "
             "another path", target_.string(), file_kind_text(st.st_mode));
  } else if (errno != ENOENT) {
    fail(ErrorKind::io, "{}: cannot access: {}", target_.string(),
         errno == ELOOP ? std::string("too many levels of symbolic links") : std::strerror(errno));
  }
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
    const int injected = injected_fault(FaultOp::write);
    if (injected != 0) errno = injected;
    const ssize_t n = injected != 0 ? -1 : ::write(fd_, p, left);
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
  if (checked_fsync(fd_) != 0)
    fail(ErrorKind::io, "{}: fsync failed after {} bytes: {}", target_.string(), written_, std::strerror(errno));
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail(ErrorKind::io, "{}: close failed: {}", target_.string(), std::strerror(errno));
  }
  fd_ = -1;
  const int injected = injected_fault(FaultOp::rename);
  if (injected != 0) errno = injected;
  if (injected != 0 || ::rename(temp_.c_str(), target_.c_str()) != 0)
    fail(ErrorKind::io, "{}: cannot rename the finished file into place: {}", target_.string(), std::strerror(errno));
  committed_ = true;
  const fs::path folder = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
  const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {  // make the rename itself durable; a folder that cannot be opened is not an error
    const int rc = checked_fsync(dir);
    const int err = errno;
    ::close(dir);
    // The file is complete under its name, but whether the name survives a power loss is unknown.
    if (rc != 0)
      fail(ErrorKind::io, "{}: fsync of the folder after publishing the file failed: {}", target_.string(),
           std::strerror(err));
  }
}

}  // namespace duquant::formats

#include "formats/folder_lock.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>

#include "duquant/error.hpp"
#include "formats/fault_injection.hpp"
#include "formats/regular_file.hpp"

namespace duquant::formats {
namespace fs = std::filesystem;

namespace {

std::string host_name() {
  std::array<char, 256> buf{};
  if (::gethostname(buf.data(), buf.size() - 1) != 0) return "unknown";
  return std::string(buf.data());
}

// What the lock file says about its holder ("pid 123 on host h"), read without blocking.
std::string holder_text(int fd) {
  std::array<char, 512> buf{};
  const ssize_t n = ::pread(fd, buf.data(), buf.size() - 1, 0);
  std::string text = n > 0 ? std::string(buf.data(), static_cast<std::size_t>(n)) : std::string();
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.pop_back();
  for (char& c : text)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) c = '?';
  return text.empty() ? std::string("a process that has not written its name yet") : text;
}

int open_lock_file(const fs::path& path, int flags) {
  int fd;
  do fd = ::open(path.c_str(), flags | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, 0644);
  while (fd < 0 && errno == EINTR);
  return fd;
}

bool cannot_lock(int err) { return err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS; }

}  // namespace

FolderLock FolderLock::acquire(const fs::path& folder, std::string_view label, bool allow_unlocked) {
  const fs::path path = folder / kLockFileName;
  FolderLock lock;
  lock.fd_ = open_lock_file(path, O_RDWR | O_CREAT);
  if (lock.fd_ < 0) {
    const int err = errno;
    const fs::file_type t = symlink_status_of(path, std::string(label)).type();
    DQ_CHECK(t == fs::file_type::regular || t == fs::file_type::not_found, usage,
             "{}: {} is {}, not duquant's lock file; remove or rename it", label, path.string(), file_type_text(t));
    fail(ErrorKind::io, "{}: cannot open the lock file {}: {}", label, path.string(), std::strerror(err));
  }
  struct stat st {};
  if (::fstat(lock.fd_, &st) != 0 || !S_ISREG(st.st_mode))
    fail(ErrorKind::usage, "{}: {} is {}, not duquant's lock file; remove or rename it", label, path.string(),
         file_kind_text(st.st_mode));
  int rc;
  if (const int injected = injected_fault(FaultOp::flock)) {
    rc = -1;
    errno = injected;
  } else {
    do rc = ::flock(lock.fd_, LOCK_EX | LOCK_NB);
    while (rc != 0 && errno == EINTR);
  }
  if (rc != 0) {
    const int err = errno;
    if (err == EWOULDBLOCK)
      fail(ErrorKind::io,
           "{}: another duquant is writing this folder ({}, holding {}); wait for it to end or choose "
           "another folder (nothing was changed)",
           label, holder_text(lock.fd_), path.string());
    if (cannot_lock(err) && allow_unlocked) return lock;
    fail(ErrorKind::io, "{}: cannot lock {}: {}{}", label, path.string(), std::strerror(err),
         cannot_lock(err) ? "; this file system does not support locks (some NFS and FUSE mounts): --no-lock writes "
                            "without one, if you are sure no other duquant writes this folder"
                          : "");
  }
  lock.locked_ = true;
  const std::string text = fmt::format("pid {} on host {}\n", ::getpid(), host_name());
  // Best effort: the lock is the flock, not the text (a full disk must not stop a pack here).
  if (::ftruncate(lock.fd_, 0) == 0) {
    const ssize_t n = ::pwrite(lock.fd_, text.data(), text.size(), 0);
    (void)n;
  }
  return lock;
}

FolderLock::FolderLock(FolderLock&& other) noexcept : fd_(other.fd_), locked_(other.locked_) {
  other.fd_ = -1;
  other.locked_ = false;
}

FolderLock::~FolderLock() {
  if (fd_ < 0) return;
  // The holder's name is for a second writer while this one runs: a writer that ends (done or
  // failed) leaves the file empty, so that a finished pack folder is the same bytes whoever wrote it.
  // A writer killed outright leaves its name; the lock itself is gone with it (flock, not the text).
  if (locked_ && ::ftruncate(fd_, 0) != 0) {
    // best effort: a stale name is harmless, the lock is what counts
  }
  ::close(fd_);  // closing the last descriptor releases the flock
}

std::optional<std::string> folder_lock_holder(const fs::path& folder) {
  const int fd = open_lock_file(folder / kLockFileName, O_RDONLY);
  if (fd < 0) return std::nullopt;
  std::optional<std::string> holder;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    int rc;
    do rc = ::flock(fd, LOCK_SH | LOCK_NB);
    while (rc != 0 && errno == EINTR);
    if (rc != 0 && errno == EWOULDBLOCK) holder = holder_text(fd);
  }
  ::close(fd);  // releases the shared lock, if taken
  return holder;
}

bool process_is_gone(pid_t pid) noexcept { return pid > 0 && ::kill(pid, 0) != 0 && errno == ESRCH; }

}  // namespace duquant::formats

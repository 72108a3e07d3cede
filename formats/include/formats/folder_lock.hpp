// One writer per output folder: an advisory lock (flock) on a persistent file in the folder.
//
// The lock file (kLockFileName) is created once and never removed: removing it would let a second
// writer lock a new file of the same name while the first still holds the old one. It holds the
// writer's pid and host while it runs, for the message a second writer prints; a writer that ends
// (with or without an error) empties it, so a finished folder's bytes do not depend on who wrote it. The kernel
// releases the lock when its holder ends, however it ends (exit, crash, SIGKILL). docs/pack-format.md names it.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace duquant::formats {

inline constexpr const char* kLockFileName = ".duquant-lock";

class FolderLock {
 public:
  // Takes the folder's write lock without waiting. Another holder: io error (exit 4) naming it
  // (pid, host) and the folder. A file system that cannot lock (ENOLCK, EOPNOTSUPP: some NFS and
  // FUSE mounts): io error saying so, unless `allow_unlocked`: then an unlocked FolderLock
  // (locked() false) is returned. The lock file as a symbolic link, a folder or a FIFO: usage error.
  static FolderLock acquire(const std::filesystem::path& folder, std::string_view label, bool allow_unlocked);
  FolderLock(FolderLock&& other) noexcept;
  FolderLock& operator=(FolderLock&&) = delete;
  FolderLock(const FolderLock&) = delete;
  ~FolderLock();

  bool locked() const noexcept { return fd_ >= 0 && locked_; }

 private:
  FolderLock() = default;
  int fd_ = -1;
  bool locked_ = false;
};

// Who holds the write lock of `folder` now, without waiting and without taking it: "pid 123 on
// host h" (what its lock file says), or nullopt when nobody holds it (no lock file, or unlocked).
// Never throws: a lock file that cannot be read or locked counts as not held.
std::optional<std::string> folder_lock_holder(const std::filesystem::path& folder);

// True when the process `pid` is gone (kill(pid, 0) answers ESRCH): the temporary files it left
// belong to nobody.
bool process_is_gone(pid_t pid) noexcept;

}  // namespace duquant::formats

#include "formats/atomic_file.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

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

// The registry of temporary files: a fixed table, no allocation, readable from a signal handler.
constexpr int kTempSlots = 256;
struct TempSlot {
  std::atomic<int> state{0};  // 0 free, 1 claimed (path being written), 2 holds a path
  char path[PATH_MAX]{};
};
TempSlot g_temp_slots[kTempSlots];
std::atomic<bool> g_exiting{false};

// Every error of this file goes through here: once an interruption handler is removing the
// temporary files (a rename or a write may then fail because its file was just unlinked), the
// thread waits for the handler to end the process instead of reporting an error of its own.
template <typename... Args>
[[noreturn]] void fail_file(ErrorKind kind, fmt::format_string<Args...> format, Args&&... args) {
  if (g_exiting.load())
    for (;;) ::pause();
  ::duquant::fail(kind, format, std::forward<Args>(args)...);
}

int register_temp(const std::string& path) noexcept {
  if (path.size() >= PATH_MAX) return -1;  // cannot be recorded; removed by its destructor only
  for (int i = 0; i < kTempSlots; ++i) {
    int expected = 0;
    if (!g_temp_slots[i].state.compare_exchange_strong(expected, 1)) continue;
    std::memcpy(g_temp_slots[i].path, path.c_str(), path.size() + 1);
    g_temp_slots[i].state.store(2);
    return i;
  }
  return -1;  // more than kTempSlots at once: not recorded
}

// Test seam for the interruption tests: DUQUANT_TEST_STOP_IN_TEMP=N sends SIGSTOP to this process
// right after its N-th temporary file is created, so that a test can interrupt it while the file
// exists. Never set in normal use; a malformed value is a usage error.
long temp_stop_target() {
  static const long stop_at = [] {
    const char* v = std::getenv("DUQUANT_TEST_STOP_IN_TEMP");
    if (v == nullptr || *v == '\0') return 0L;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    DQ_CHECK(*end == '\0' && n >= 1 && n <= 1000000, usage,
             "DUQUANT_TEST_STOP_IN_TEMP={}: expected N from 1 to 1000000", v);
    return n;
  }();
  return stop_at;
}
std::atomic<long> g_temps_created{0};

thread_local int t_deferred_sync = 0;  // DeferredSync objects alive on this thread

// fsync of the folder that holds `target`'s name; a folder that cannot be opened is not an error.
void sync_folder_of(const fs::path& folder, const fs::path& target) {
  const int dir = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {  // make the rename itself durable
    const int rc = checked_fsync(dir);
    const int err = errno;
    ::close(dir);
    // The file is complete under its name, but whether the name survives a power loss is unknown.
    if (rc != 0)
      fail_file(ErrorKind::io, "{}: fsync of the folder after publishing the file failed: {}", target.string(),
                std::strerror(err));
  }
}

void release_temp(int& slot) noexcept {
  if (slot >= 0) g_temp_slots[slot].state.store(0);
  slot = -1;
}
}  // namespace

void remove_temp_files_for_exit() noexcept {
  g_exiting.store(true);
  for (TempSlot& s : g_temp_slots)
    if (s.state.load() == 2) ::unlink(s.path);
}

int temp_files_open() noexcept {
  int n = 0;
  for (const TempSlot& s : g_temp_slots) n += s.state.load() == 2 ? 1 : 0;
  return n;
}

// The rename at commit replaces whatever has the final name. Only a regular file is replaced: a
// FIFO, a device (/dev/null), a socket, a folder or a symbolic link there is the user's, and a
// process run as root would otherwise swap a device node for a file.
static void check_replaceable(const fs::path& target) {
  struct stat st {};
  if (::lstat(target.c_str(), &st) == 0) {
    DQ_CHECK(S_ISREG(st.st_mode), io,
             "{}: exists and is {}; duquant replaces only regular files: remove it or choose "
             "another path",
             target.string(), file_kind_text(st.st_mode));
  } else if (errno != ENOENT) {
    fail_file(ErrorKind::io, "{}: cannot access: {}", target.string(),
              errno == ELOOP ? std::string("too many levels of symbolic links") : std::strerror(errno));
  }
}

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  check_replaceable(target_);
  const fs::path folder = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
  temp_ = folder / fmt::format(".{}.tmp-{}", target_.filename().string(), ::getpid());
  const long stop_at = temp_stop_target();  // may throw: before anything is created
  slot_ = register_temp(temp_.string());    // recorded before it exists, so an interruption never misses it
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const int err = errno;
    release_temp(slot_);
    fail_file(ErrorKind::io, "{}: cannot create: {}", temp_.string(), std::strerror(err));
  }
  if (g_exiting.load()) {  // an interruption handler is removing the temporary files and ending the process
    ::unlink(temp_.c_str());
    for (;;) ::pause();
  }
  if (stop_at > 0 && g_temps_created.fetch_add(1) + 1 == stop_at) std::raise(SIGSTOP);
}

AtomicFile::AtomicFile(fs::path target, fs::path kept)
    : target_(std::move(target)), temp_(std::move(kept)), kept_(true) {
  check_replaceable(target_);
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
  if (fd_ < 0) fail_file(ErrorKind::io, "{}: cannot create: {}", temp_.string(), std::strerror(errno));
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_ && !kept_) ::unlink(temp_.c_str());
  if (!kept_) release_temp(slot_);
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
      fail_file(ErrorKind::io, "{}: write failed after {} bytes: {}", target_.string(), written_,
                n < 0 ? std::strerror(errno) : "no progress");
    p += n;
    left -= static_cast<std::size_t>(n);
    written_ += static_cast<std::uint64_t>(n);
  }
}

void AtomicFile::write(std::string_view text) { write(std::as_bytes(std::span(text.data(), text.size()))); }

DeferredSync::DeferredSync() noexcept { ++t_deferred_sync; }
DeferredSync::~DeferredSync() { --t_deferred_sync; }

void sync_files(const std::vector<fs::path>& files, const fs::path& folder) {
  for (const fs::path& file : files) {
    const int fd = ::open(file.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) fail_file(ErrorKind::io, "{}: cannot open to sync it: {}", file.string(), std::strerror(errno));
    const int rc = checked_fsync(fd);
    const int err = errno;
    ::close(fd);
    if (rc != 0) fail_file(ErrorKind::io, "{}: fsync failed: {}", file.string(), std::strerror(err));
  }
  if (!files.empty()) sync_folder_of(folder, files.back());
}

void AtomicFile::commit() {
  DQ_CHECK(!committed_, internal, "{}: committed twice", target_.string());
  const bool deferred = t_deferred_sync > 0;  // the owner syncs it later (sync_files)
  if (!deferred && checked_fsync(fd_) != 0)
    fail_file(ErrorKind::io, "{}: fsync failed after {} bytes: {}", target_.string(), written_, std::strerror(errno));
  if (::close(fd_) != 0) {
    fd_ = -1;
    fail_file(ErrorKind::io, "{}: close failed: {}", target_.string(), std::strerror(errno));
  }
  fd_ = -1;
  const int injected = injected_fault(FaultOp::rename);
  if (injected != 0) errno = injected;
  if (injected != 0 || ::rename(temp_.c_str(), target_.c_str()) != 0)
    fail_file(ErrorKind::io, "{}: cannot rename the finished file into place: {}", target_.string(),
              std::strerror(errno));
  committed_ = true;
  if (!kept_) release_temp(slot_);
  if (!deferred) sync_folder_of(target_.has_parent_path() ? target_.parent_path() : fs::path("."), target_);
}

}  // namespace duquant::formats

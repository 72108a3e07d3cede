#include "formats/mapped_file.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <utility>

#include "duquant/error.hpp"
#include "formats/regular_file.hpp"

namespace duquant::formats {
namespace {

// --- The SIGBUS guard -------------------------------------------------------------------------
// A fixed table the handler can read without locks or allocation: a slot is in use while `begin`
// is non-zero. Registration (under a mutex) fills `size` and `path` before publishing `begin`.
constexpr int kGuardSlots = 4096;
struct GuardSlot {
  std::atomic<std::uintptr_t> begin{0};
  std::atomic<std::size_t> size{0};
  std::atomic<const char*> path{nullptr};
};
GuardSlot g_slots[kGuardSlots];
std::mutex g_guard_mutex;
struct sigaction g_previous {};

// Appends `text` to buf[*len] (async-signal-safe).
void put(char* buf, std::size_t cap, std::size_t* len, const char* text) {
  while (*text != '\0' && *len + 1 < cap) buf[(*len)++] = *text++;
}
void put_number(char* buf, std::size_t cap, std::size_t* len, std::uint64_t v) {
  char digits[24];
  int n = 0;
  do {
    digits[n++] = static_cast<char>('0' + v % 10);
    v /= 10;
  } while (v != 0);
  while (n > 0 && *len + 1 < cap) buf[(*len)++] = digits[--n];
}

void on_sigbus(int sig, siginfo_t* info, void* context) {
  const auto addr = reinterpret_cast<std::uintptr_t>(info->si_addr);
  for (const GuardSlot& slot : g_slots) {
    const std::uintptr_t begin = slot.begin.load(std::memory_order_acquire);
    if (begin == 0 || addr < begin) continue;
    const std::size_t size = slot.size.load(std::memory_order_relaxed);
    if (addr - begin >= size) continue;
    const char* path = slot.path.load(std::memory_order_relaxed);
    char msg[4608];
    std::size_t len = 0;
    put(msg, sizeof msg, &len, "duquant: error: ");
    put(msg, sizeof msg, &len, path != nullptr ? path : "an input file");
    put(msg, sizeof msg, &len,
        ": the file shrank while it was being read (truncated or rewritten by another program): "
        "no data at byte offset ");
    put_number(msg, sizeof msg, &len, addr - begin);
    put(msg, sizeof msg, &len, " of the ");
    put_number(msg, sizeof msg, &len, size);
    put(msg, sizeof msg, &len,
        " bytes mapped when it was opened; nothing unfinished was published "
        "(pack: --resume continues once the file is whole)\n");
    const ssize_t ignored = ::write(STDERR_FILENO, msg, len);
    (void)ignored;
    ::_exit(exit_code(ErrorKind::io));
  }
  // Not one of ours: hand it on to what was installed before (a sanitizer's handler), or fall
  // back to the default action by re-raising with it.
  if ((g_previous.sa_flags & SA_SIGINFO) != 0 && g_previous.sa_sigaction != nullptr) {
    g_previous.sa_sigaction(sig, info, context);
    return;
  }
  if (g_previous.sa_handler != SIG_DFL && g_previous.sa_handler != SIG_IGN && g_previous.sa_handler != nullptr) {
    g_previous.sa_handler(sig);
    return;
  }
  ::signal(SIGBUS, SIG_DFL);
  ::raise(SIGBUS);
}

int register_mapping(const void* data, std::size_t size, const std::filesystem::path& path) {
  std::lock_guard lock(g_guard_mutex);
  static const bool installed = [] {
    struct sigaction sa {};
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    return ::sigaction(SIGBUS, &sa, &g_previous) == 0;
  }();
  if (!installed) return -1;
  for (int i = 0; i < kGuardSlots; ++i) {
    GuardSlot& slot = g_slots[i];
    if (slot.begin.load(std::memory_order_relaxed) != 0) continue;
    slot.size.store(size, std::memory_order_relaxed);
    slot.path.store(::strdup(path.c_str()), std::memory_order_relaxed);
    slot.begin.store(reinterpret_cast<std::uintptr_t>(data), std::memory_order_release);
    return i;
  }
  return -1;  // more than kGuardSlots files mapped at once: this one is not guarded
}

void unregister_mapping(int index) noexcept {
  if (index < 0) return;
  std::lock_guard lock(g_guard_mutex);
  GuardSlot& slot = g_slots[index];
  slot.begin.store(0, std::memory_order_release);
  std::free(const_cast<char*>(slot.path.exchange(nullptr, std::memory_order_relaxed)));
}

std::uint64_t nanoseconds(const struct timespec& t) {
  return static_cast<std::uint64_t>(t.tv_sec) * 1000000000ull + static_cast<std::uint64_t>(t.tv_nsec);
}

}  // namespace

MappedFile MappedFile::open(const std::filesystem::path& path) {
  // O_NONBLOCK: a FIFO in place of the file is refused below instead of waiting for a writer.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) fail(ErrorKind::io, "{}: no such file", path.string());
    fail(ErrorKind::io, "{}: cannot open: {}", path.string(),
         err == ELOOP ? std::string("too many levels of symbolic links (a symbolic link loop?)") : std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    fail(ErrorKind::io, "{}: cannot stat: {}", path.string(), std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorKind::io, "{}: not a regular file ({}); expected a file", path.string(), file_kind_text(st.st_mode));
  }
  MappedFile file;
  file.path_ = path;
  file.size_ = static_cast<std::size_t>(st.st_size);
  file.dev_ = static_cast<std::uint64_t>(st.st_dev);
  file.ino_ = static_cast<std::uint64_t>(st.st_ino);
  file.mtime_ns_ = nanoseconds(st.st_mtim);
  if (file.size_ > 0) {
    void* p = ::mmap(nullptr, file.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      fail(ErrorKind::io, "{}: cannot map {} bytes: {}", path.string(), file.size_, std::strerror(err));
    }
    file.data_ = static_cast<const std::byte*>(p);
    file.guard_slot_ = register_mapping(p, file.size_, path);
  }
  ::close(fd);  // the mapping keeps the file alive
  return file;
}

void MappedFile::check_unchanged(const char* stage) const {
  struct stat st {};
  if (::stat(path_.c_str(), &st) != 0)
    fail(ErrorKind::io, "{}: {}: the file is gone ({}) since it was opened; the result would not match any file",
         path_.string(), stage, std::strerror(errno));
  if (static_cast<std::uint64_t>(st.st_dev) != dev_ || static_cast<std::uint64_t>(st.st_ino) != ino_)
    fail(ErrorKind::io,
         "{}: {}: the file was replaced by another one while it was being read; run again on the new file",
         path_.string(), stage);
  if (static_cast<std::uint64_t>(st.st_size) != size_ || nanoseconds(st.st_mtim) != mtime_ns_)
    fail(ErrorKind::io,
         "{}: {}: the file was modified while it was being read (size {} -> {} bytes{}); run again "
         "once it is complete",
         path_.string(), stage, size_, static_cast<std::uint64_t>(st.st_size),
         nanoseconds(st.st_mtim) != mtime_ns_ ? ", modification time changed" : "");
}

void MappedFile::release(std::uint64_t offset, std::uint64_t length) const noexcept {
  if (data_ == nullptr || offset >= size_) return;
  length = std::min<std::uint64_t>(length, size_ - offset);
  const auto page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t first = (offset + page - 1) / page * page, last = (offset + length) / page * page;
  if (first < last) ::madvise(const_cast<std::byte*>(data_) + first, last - first, MADV_DONTNEED);
}

MappedFile::MappedFile(MappedFile&& other) noexcept
    : path_(std::move(other.path_)),
      data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      guard_slot_(std::exchange(other.guard_slot_, -1)),
      dev_(other.dev_),
      ino_(other.ino_),
      mtime_ns_(other.mtime_ns_) {}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    unregister_mapping(std::exchange(guard_slot_, -1));
    if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
    path_ = std::move(other.path_);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    guard_slot_ = std::exchange(other.guard_slot_, -1);
    dev_ = other.dev_;
    ino_ = other.ino_;
    mtime_ns_ = other.mtime_ns_;
  }
  return *this;
}

MappedFile::~MappedFile() {
  unregister_mapping(guard_slot_);
  if (data_ != nullptr) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace duquant::formats

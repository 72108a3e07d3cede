#include "cli/process_guard.hpp"

#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <unistd.h>

#include <fmt/format.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <string_view>

#include "cli/options.hpp"
#include "duquant/error.hpp"
#include "formats/atomic_file.hpp"

namespace duquant::cli {
namespace {

// Writes to descriptor 2 with SIGPIPE held back: a closed, full or broken stderr loses the message
// and changes nothing else (no SIGPIPE, no error, no abort).
ssize_t best_effort_stderr(void*, const char* buf, std::size_t size) {
  sigset_t pipe_set, old;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
  std::size_t done = 0;
  bool broken = false;
  while (done < size) {
    const ssize_t n = ::write(STDERR_FILENO, buf + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      broken = n < 0 && errno == EPIPE;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (broken && !sigismember(&old, SIGPIPE)) {  // consume the SIGPIPE this write raised
    const timespec zero{0, 0};
    while (sigtimedwait(&pipe_set, nullptr, &zero) < 0 && errno == EINTR) {}
  }
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  return static_cast<ssize_t>(size);
}

// What the interruption line says (written by the main thread, read by the handler).
char g_pack_output[PATH_MAX];
std::atomic<bool> g_is_pack{false};
std::atomic<std::size_t> g_done{0}, g_total{0};

struct Line {
  char text[PATH_MAX + 512];
  std::size_t size = 0;
  void add(const char* s) {
    while (*s != '\0' && size + 1 < sizeof text) text[size++] = *s++;
  }
  void add(std::size_t n) {
    char digits[24];
    int k = 0;
    do {
      digits[k++] = static_cast<char>('0' + n % 10);
      n /= 10;
    } while (n > 0);
    while (k > 0 && size + 1 < sizeof text) text[size++] = digits[--k];
  }
};

extern "C" void on_interrupt(int sig) {
  static std::atomic<bool> busy{false};
  if (busy.exchange(true)) {  // the other signal while this one is handled: the first one ends the process
    for (;;) ::pause();
  }
  formats::remove_temp_files_for_exit();
  Line line;  // async-signal-safe: no allocation, no stdio
  line.add("duquant: interrupted by ");
  line.add(sig == SIGINT ? "SIGINT" : "SIGTERM");
  if (g_is_pack.load()) {
    const std::size_t done = g_done.load(), total = g_total.load();
    if (total == 0) {
      line.add(" before the first layer was finished");
    } else if (done < total) {
      line.add(" at layer ");
      line.add(done + 1);
      line.add(" of ");
      line.add(total);
    } else {
      line.add(" after all ");
      line.add(total);
      line.add(" layers, before the pack was finished");
    }
    line.add("; temporary files removed, finished layers kept in ");
    line.add(g_pack_output);
    line.add(": run again with --resume");
  }
  line.add("\n");
  std::size_t done = 0;
  while (done < line.size) {
    const ssize_t n = ::write(STDERR_FILENO, line.text + done, line.size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  ::_exit(128 + sig);
}

bool printable_ascii(std::string_view s) {
  for (const char c : s)
    if (c < 0x20 || c > 0x7e) return false;
  return s.size() <= 64;
}

std::string shown(const char* name, std::string_view value) {
  return printable_ascii(value) ? fmt::format("{}={}", name, value)
                                : fmt::format("{} (a value of {} bytes)", name, value.size());
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// A whole number of at most 18 digits, or -1.
long long whole(std::string_view s) {
  s = trim(s);
  if (s.empty() || s.size() > 18) return -1;
  long long v = 0;
  for (const char c : s) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

void check_thread_count(const char* name) {
  const char* raw = std::getenv(name);
  if (raw == nullptr || *raw == '\0') return;
  const std::string_view value = raw;
  std::string_view rest = value;
  while (true) {  // OMP_NUM_THREADS may be a list, one count per nesting level
    const std::size_t comma = name == std::string_view("OMP_NUM_THREADS") ? rest.find(',') : std::string_view::npos;
    const std::string_view item = rest.substr(0, comma);
    const long long n = whole(item);
    DQ_CHECK(n >= 1 && n <= kMaxThreads, usage,
             "{}: {}; give a thread count from 1 to {} (as --threads), or leave it unset for every core",
             shown(name, value), n < 0 ? std::string("not a whole number") : fmt::format("{} threads", n), kMaxThreads);
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
}

void check_stack_size(const char* name) {
  const char* raw = std::getenv(name);
  if (raw == nullptr || *raw == '\0') return;
  const std::string_view value = trim(raw);
  // libgomp's form: a number and an optional unit B, K, M or G (K when none).
  std::size_t digits = 0;
  while (digits < value.size() && value[digits] >= '0' && value[digits] <= '9') ++digits;
  const std::string_view unit = trim(value.substr(digits));
  const long long n = whole(value.substr(0, digits));
  long long scale = 0;
  if (unit.empty() || unit == "k" || unit == "K")
    scale = 1LL << 10;
  else if (unit == "b" || unit == "B")
    scale = 1;
  else if (unit == "m" || unit == "M")
    scale = 1LL << 20;
  else if (unit == "g" || unit == "G")
    scale = 1LL << 30;
  constexpr long long kMin = 16LL << 10, kMax = 1LL << 30;
  const bool ok = n >= 0 && scale > 0 && n <= kMax / scale && n * scale >= kMin;
  DQ_CHECK(ok, usage,
           "{}: give a stack size per thread from 16K to 1G (a number with B, K, M or G; K when none), or leave "
           "it unset",
           shown(name, raw));
}

}  // namespace

void guard_standard_streams() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    const int got = ::open("/dev/null", fd == 0 ? O_RDONLY : O_WRONLY);
    if (got < 0) ::_exit(exit_code(ErrorKind::io));  // no /dev/null: nothing can be said anywhere
    if (got != fd) {
      ::dup2(got, fd);
      ::close(got);
    }
  }
  static const cookie_io_functions_t io{nullptr, best_effort_stderr, nullptr, nullptr};
  if (FILE* f = ::fopencookie(nullptr, "w", io); f != nullptr) {
    std::setvbuf(f, nullptr, _IONBF, 0);
    stderr = f;  // glibc: stderr is an ordinary variable; every fmt::print(stderr, ...) goes through it
  }
}

void install_interrupt_handlers() {
  for (const int sig : {SIGINT, SIGTERM}) {
    struct sigaction old {};
    if (::sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;  // nohup, background jobs
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGINT);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaddset(&sa.sa_mask, SIGPIPE);  // a broken stderr must not turn the exit code into SIGPIPE
    ::sigaction(sig, &sa, nullptr);
  }
}

void note_pack_output(const std::string& output) {
  const std::size_t n = std::min(output.size(), sizeof g_pack_output - 1);
  std::memcpy(g_pack_output, output.data(), n);
  g_pack_output[n] = '\0';
  g_is_pack.store(true);
}

void note_pack_progress(std::size_t done, std::size_t total) {
  g_done.store(done);
  g_total.store(total);
}

void check_openmp_environment() {
  check_thread_count("OMP_NUM_THREADS");
  check_thread_count("OMP_THREAD_LIMIT");
  check_stack_size("OMP_STACKSIZE");
  check_stack_size("GOMP_STACKSIZE");
}

bool report_stdout_failure(int err) {
  if (std::ferror(stdout) == 0) return false;
  fmt::print(stderr, "duquant: error: standard output: write failed: {}\n",
             err == EPIPE ? "Broken pipe (its reader is gone)"
             : err != 0   ? std::strerror(err)
                          : "I/O error");
  return true;
}

int finish_stdout(int code) {
  errno = 0;
  const int rc = std::fflush(stdout);
  const int err = errno;
  if (rc != 0 || std::ferror(stdout) != 0) {
    report_stdout_failure(err);
    return exit_code(ErrorKind::io);
  }
  return code;
}

void prefer_passive_openmp_wait(char** argv) {
  if (argv == nullptr || argv[0] == nullptr) return;
  if (std::getenv("OMP_WAIT_POLICY") != nullptr || std::getenv("GOMP_SPINCOUNT") != nullptr) return;
  if (::setenv("OMP_WAIT_POLICY", "passive", 0) != 0) return;
  ::execv("/proc/self/exe", argv);  // returns only on failure: keep running, libgomp spins
}

void keep_freed_memory() {
#if defined(__GLIBC__)
  // One heap for every thread, and no allocation served by a private mapping (each would be unmapped when freed and
  // faulted in again, page by page, for the next layer), and the heap's free top is never trimmed.
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, INT_MAX);
  mallopt(M_ARENA_MAX, 1);  // the reader and writer threads too: their arenas would map and unmap
#endif
}

}  // namespace duquant::cli

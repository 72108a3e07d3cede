// Calibration dumps: the structure scanned first in a forked child process (calib_dump.cpp).
#include "calib_dump_internal.hpp"

namespace duquant::formats::calib_internal {

// ---------------------------------------------------------------------------------------------
// The structure is first scanned in a forked child process. HDF5 1.10.8 does not survive every
// corrupt file: fuzzing single-byte mutations of h5py dumps crashed it (11 of 6,000) or hung it
// (4 of 6,000) inside its global-heap reader, reached through the variable-length string that
// h5py writes for attrs["dtype"] = "bfloat16". A crash or hang of the child becomes a format
// error; only when the child reports success does this process scan the file itself (the same
// deterministic code, so it succeeds too). Reading data afterwards touches only metadata the scan
// already went through.

// The check process may take 60 s plus 30 s per GiB of file (a real scan takes about 1 s per
// 30,000 calls); longer is taken for a hang. Test seam: DUQUANT_TEST_HDF5_CHECK_SECONDS=N (1 to
// 86400) replaces the limit, so that the fuzz target meets HDF5's hangs in seconds, not minutes.
std::int64_t probe_seconds(const std::string& file, std::uint64_t file_size) {
  if (const char* seam = std::getenv("DUQUANT_TEST_HDF5_CHECK_SECONDS"); seam != nullptr && *seam != '\0') {
    const std::string_view text(seam);
    std::int64_t n = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    DQ_CHECK(ec == std::errc() && end == text.data() + text.size() && n >= 1 && n <= 86400, usage,
             "{}: DUQUANT_TEST_HDF5_CHECK_SECONDS={}: expected whole seconds from 1 to 86400", file, text);
    return n;
  }
  return 60 + 30 * static_cast<std::int64_t>((file_size + (std::uint64_t{1} << 30) - 1) >> 30);
}

void write_all(int fd, const std::string& text) noexcept {
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    done += static_cast<std::size_t>(n);
  }
}

// The child: scans, reports "ok" or "error KIND\nMESSAGE" on `fd`, and leaves without running any
// destructor or exit handler. It never takes the HDF5 lock: the parent's thread holds it, and a
// mutex copied by fork() stays owned by a thread that does not exist in the child.
[[noreturn]] void probe_child(const State& parent, int fd) noexcept {
  for (const int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) std::signal(sig, SIG_DFL);
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  // A crafted header can make HDF5 allocate and fill gigabytes here (fuzzing found 4 GiB from a
  // 6 KiB file): if memory runs out, the kernel is to kill this process first, not its parent.
  if (const int adj = ::open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC); adj >= 0) {
    write_all(adj, "1000");
    ::close(adj);
  }
  std::string report = "ok";
  try {
    auto* probe = new State();  // never destroyed (its destructor would take the lock)
    probe->path = parent.path;
    probe->label = parent.label;
    probe->file_size = parent.file_size;
    scan_hdf5(*probe);
  } catch (const Error& e) {
    report = std::string("error ") + kind_name(e.kind()) + "\n" + e.what();
  } catch (const std::exception& e) {
    report = std::string("error internal\n") + parent.label + ": " + e.what();
  } catch (...) {
    report = std::string("error internal\n") + parent.label + ": unknown exception while checking the HDF5 file";
  }
  write_all(fd, report);
  _exit(0);
}

// Runs probe_child and turns its outcome into nothing (success) or a duquant::Error.
void probe_hdf5(const State& impl) {
  const std::string& file = impl.label;
  const std::int64_t seconds = probe_seconds(file, impl.file_size);
  int fds[2] = {-1, -1};
  DQ_CHECK(::pipe2(fds, O_CLOEXEC) == 0, io, "{}: cannot create a pipe for the HDF5 check: {}", file,
           std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    fail(ErrorKind::io, "{}: cannot start the HDF5 check process: {}", file, std::strerror(err));
  }
  if (pid == 0) {
    ::close(fds[0]);
    probe_child(impl, fds[1]);
  }
  ::close(fds[1]);
  std::string report;
  bool timed_out = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
  char buf[4096];
  while (true) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p{fds[0], POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::min<std::int64_t>(left.count(), 1 << 30)));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      timed_out = true;
      break;
    }
    if (ready < 0) break;
    const ssize_t n = ::read(fds[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    if (report.size() < (std::size_t{1} << 20)) report.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  if (timed_out) ::kill(pid, SIGKILL);
  int status = 0;
  pid_t waited = -1;
  do {
    waited = ::waitpid(pid, &status, 0);
  } while (waited < 0 && errno == EINTR);
  if (timed_out)
    bad(file,
        "HDF5 did not finish reading the file's structure within {} s (checked in a separate process); the "
        "file is corrupt or crafted",
        seconds);
  if (waited == pid && WIFSIGNALED(status))
    bad(file,
        "HDF5 crashed (signal {}) reading the file's structure (checked in a separate process); the file is "
        "corrupt or crafted, and HDF5 1.10 does not survive every such file",
        WTERMSIG(status));
  if (report == "ok") return;
  if (report.rfind("error ", 0) == 0) {
    const std::size_t eol = report.find('\n');
    const std::string kind = report.substr(6, eol == std::string::npos ? std::string::npos : eol - 6);
    const std::string message = eol == std::string::npos ? file : report.substr(eol + 1);
    for (const ErrorKind k : {ErrorKind::usage, ErrorKind::format, ErrorKind::io, ErrorKind::no_match,
                              ErrorKind::numeric, ErrorKind::internal})
      if (kind == kind_name(k)) throw Error(k, message);
  }
  bad(file,
      "HDF5's check process ended without a result (wait status {}; checked in a separate process); the file "
      "is corrupt or crafted",
      status);
}

}  // namespace duquant::formats::calib_internal

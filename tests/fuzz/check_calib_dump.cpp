// Fuzz check of the calibration dump reader: structure validation (HDF5 and safetensors) and reads.
#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "duquant/error.hpp"
#include "formats/calib_dump.hpp"
#include "fuzz/fuzz_checks.hpp"

namespace duquant::fuzz {
namespace {

namespace fs = std::filesystem;

// Calls larger than this are validated but not read (a few KiB of deflate can declare hundreds of
// MiB; the reader's own bound is kMaxCallElements).
constexpr std::uint64_t kReadLimit = std::uint64_t{1} << 22;

// One file per process, written for every input and removed after it: the reader opens dumps by path.
const fs::path& scratch_file() {
  static const fs::path path = fs::temp_directory_path() / fmt::format("duquant-fuzz-{}.dump", ::getpid());
  return path;
}

struct ScratchRemover {
  ~ScratchRemover() { ::unlink(scratch_file().c_str()); }
};

void write_scratch(Bytes input) {
  const fs::path& path = scratch_file();
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error(path.string() + ": cannot write the fuzz input: " + std::strerror(errno));
  std::size_t done = 0;
  while (done < input.size()) {
    const ssize_t n = ::write(fd, input.data() + done, input.size() - done);
    if (n <= 0) {
      ::close(fd);
      throw std::runtime_error(path.string() + ": cannot write the fuzz input: " + std::strerror(errno));
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
}

bool is_call_name(const formats::DumpCall& c) {
  if (c.name.size() < 6 || c.name.rfind("x_", 0) != 0) return false;
  std::int64_t index = 0;
  for (std::size_t i = 2; i < c.name.size(); ++i) {
    if (c.name[i] < '0' || c.name[i] > '9') return false;
    if (__builtin_mul_overflow(index, 10, &index) || __builtin_add_overflow(index, c.name[i] - '0', &index))
      return false;
  }
  return index == c.index;
}

}  // namespace

// Accepted dumps: layers sorted and distinct; every call named x_NNNN after its index, indices
// ascending and distinct, rows and columns at least 1 and within kMaxCallElements, a dtype the
// reader converts; every call read gives rows x cols finite values, or a numeric error.
Outcome check_calib_dump(Bytes input) {
  const ScratchRemover remove_afterwards;
  write_scratch(input);
  try {
    const formats::CalibDump dump = formats::CalibDump::open(scratch_file());
    const bool hdf5 = input.size() >= 8 && std::memcmp(input.data(), "\x89HDF\r\n\x1a\n", 8) == 0;
    if (dump.container() != (hdf5 ? "hdf5" : "safetensors"))
      throw Violation(
          fmt::format("read as {} with the first bytes of {}", dump.container(), hdf5 ? "HDF5" : "another file"));
    const std::vector<std::string> layers = dump.layers();
    if (!std::is_sorted(layers.begin(), layers.end()) ||
        std::adjacent_find(layers.begin(), layers.end()) != layers.end())
      throw Violation("layer names are not sorted and distinct");
    if (layers.empty()) throw Violation("a dump with no layer was accepted");
    std::vector<float> values;
    bool numeric_error = false;
    for (const std::string& layer : layers) {
      const std::vector<formats::DumpCall>* calls = dump.calls(layer);
      if (calls == nullptr) throw Violation("listed layer '" + layer + "' has no calls entry");
      for (std::size_t i = 0; i < calls->size(); ++i) {
        const formats::DumpCall& c = (*calls)[i];
        const std::string where = fmt::format("layer '{}' call '{}'", layer, c.name);
        if (!is_call_name(c) || (i > 0 && (*calls)[i - 1].index >= c.index))
          throw Violation(where + ": name, index or order broken");
        std::uint64_t elements = 0;
        if (c.rows < 1 || c.cols < 1 || __builtin_mul_overflow(c.rows, c.cols, &elements) ||
            elements > formats::kMaxCallElements)
          throw Violation(fmt::format("{}: accepted {} x {}", where, c.rows, c.cols));
        if (c.dtype != "F32" && c.dtype != "F16" && c.dtype != "BF16") throw Violation(where + ": dtype " + c.dtype);
        if (elements > kReadLimit) continue;
        try {
          dump.read(layer, c, values);
        } catch (const Error& e) {
          if (e.kind() != ErrorKind::numeric && e.kind() != ErrorKind::format) throw;
          numeric_error = true;
          continue;
        }
        if (values.size() != elements)
          throw Violation(fmt::format("{}: read {} values of {}", where, values.size(), elements));
        for (const float v : values)
          if (!std::isfinite(v)) throw Violation(where + ": a non-finite value was returned");
      }
    }
    if (dump.calls("\x01 not a layer") != nullptr) throw Violation("calls() of an unknown layer");
    return numeric_error ? Outcome::refused : Outcome::accepted;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::format && e.kind() != ErrorKind::io) throw;
    return Outcome::refused;
  }
}

}  // namespace duquant::fuzz

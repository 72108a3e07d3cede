// The input checkpoint changed while a pack reads it. The pack stops itself after its second layer
// (the DUQUANT_TEST_STOP_AT seam), the test changes the file, the pack continues:
// - truncated while mapped (the next read of a vanished page is SIGBUS): exit 4 naming the file,
//   the offset and the mapped size -- an I/O error, never a crash;
// - rewritten in place, replaced by another file, or removed: exit 4 before anything is published.
// In every case no manifest exists afterwards, and once the file is whole again `--resume` gives
// the bytes of an uninterrupted run.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "robustness/robustness_util.hpp"

namespace duquant {
namespace {

namespace fs = std::filesystem;

std::vector<std::string> pack_args(const fs::path& ckpt, const fs::path& out, bool resume = false) {
  std::vector<std::string> a{"pack", ckpt.string(), "-o", out.string(), "--preset", "openpi-dit"};
  if (resume) a.push_back("--resume");
  return a;
}

std::uint64_t header_end(const fs::path& file) {
  const std::string bytes = test::read_text(file);
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return 8 + n;
}

void set_mtime(const fs::path& file, std::int64_t seconds) {
  const struct timespec times[2] = {{seconds, 0}, {seconds, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, 0), 0) << std::strerror(errno);
}

// Packs a private copy of the fixture, changes it with `change` while the pack is stopped after
// layer 2, and checks the refusal; then restores the copy and resumes.
void expect_refused_then_resumable(const std::function<void(const fs::path&)>& change, const std::string& expected) {
  const fs::path dir = test::temp_dir();
  const fs::path ckpt = dir / "model.safetensors";
  fs::copy_file(test::tiny_checkpoint(), ckpt);
  const fs::path baseline = dir / "baseline";
  ASSERT_EQ(test::run_cli(pack_args(ckpt, baseline)).exit_code, 0);

  const fs::path out = dir / "out";
  test::Child child(pack_args(ckpt, out), {"DUQUANT_TEST_STOP_AT=layer:2"}, dir / "stopped");
  ASSERT_TRUE(child.started());
  ASSERT_TRUE(child.wait_stopped()) << child.out() << child.err();
  change(ckpt);
  child.resume();
  const int code = child.wait();
  EXPECT_EQ(code, 4) << child.out() << child.err();
  EXPECT_TRUE(test::contains(child.err(), "duquant: error: " + ckpt.string())) << child.err();
  EXPECT_TRUE(test::contains(child.err(), expected)) << child.err();
  EXPECT_FALSE(fs::exists(out / "manifest.json"));
  std::printf("[ changed input ] %s", child.err().c_str());

  fs::remove(ckpt);
  fs::copy_file(test::tiny_checkpoint(), ckpt);
  const test::CliResult resumed = test::run_cli(pack_args(ckpt, out, true));
  ASSERT_EQ(resumed.exit_code, 0) << resumed.out << resumed.err;
  std::string why;
  EXPECT_TRUE(test::same_folder(out, baseline, &why)) << why;
}

TEST(ChangedInput, TruncatedWhileMappedIsAnIoErrorNotACrash) {
  expect_refused_then_resumable(
      [](const fs::path& ckpt) { ASSERT_EQ(::truncate(ckpt.c_str(), static_cast<off_t>(header_end(ckpt))), 0); },
      "the file shrank while it was being read");
}

TEST(ChangedInput, TruncatedToNothingWhileMapped) {
  expect_refused_then_resumable([](const fs::path& ckpt) { ASSERT_EQ(::truncate(ckpt.c_str(), 0), 0); },
                                "no data at byte offset");
}

TEST(ChangedInput, RewrittenInPlaceIsRefusedBeforePublishing) {
  expect_refused_then_resumable(
      [](const fs::path& ckpt) {
        const int fd = ::open(ckpt.c_str(), O_WRONLY);
        ASSERT_GE(fd, 0);
        const std::uint64_t size = fs::file_size(ckpt);
        const std::string junk(4096, '\x3f');  // 0x3f3f3f3f: a valid float, so the math goes on
        for (std::uint64_t at = header_end(ckpt); at + junk.size() <= size; at += 64 * 1024)
          ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), static_cast<off_t>(at)), static_cast<ssize_t>(junk.size()));
        ::close(fd);
        set_mtime(ckpt, 1000000000);  // as a write would, independent of the clock's granularity
      },
      "was modified while it was being read");
}

TEST(ChangedInput, ReplacedByAnotherFileIsRefused) {
  expect_refused_then_resumable(
      [](const fs::path& ckpt) {
        const fs::path other = ckpt.parent_path() / "other.safetensors";
        fs::copy_file(ckpt, other);
        fs::rename(other, ckpt);
      },
      "was replaced by another one");
}

TEST(ChangedInput, RemovedIsRefused) {
  expect_refused_then_resumable([](const fs::path& ckpt) { fs::remove(ckpt); }, "the file is gone");
}

}  // namespace
}  // namespace duquant

// A file that appears under its final name only once it is complete.
//
// Data goes to a temporary file beside the target (".<name>.tmp-<pid>"); commit() flushes it to
// disk, renames it over the target and syncs the folder. A file never committed (an error, an
// exception, a crash) leaves no file under the final name: the destructor removes the temporary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>
#include <vector>

namespace duquant::formats {

class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  // The data goes to `kept` (created or truncated) instead of a temporary beside the target, and
  // that file is the caller's: neither an interruption nor the destructor removes it, so that its
  // bytes outlive a failed run (a pack's work folder keeps the layers streamed into it for
  // --resume). commit() renames it over the target as above.
  AtomicFile(std::filesystem::path target, std::filesystem::path kept);
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  void write(std::span<const std::byte> data);
  void write(std::string_view text);
  std::uint64_t bytes_written() const noexcept { return written_; }
  void commit();

  const std::filesystem::path& target() const noexcept { return target_; }

 private:
  std::filesystem::path target_;
  std::filesystem::path temp_;
  int fd_ = -1;
  std::uint64_t written_ = 0;
  int slot_ = -1;  // in the registry of temporary files (below)
  bool committed_ = false;
  bool kept_ = false;  // the temporary is the caller's (see the second constructor)
};

// Deferred durability, for many small files whose contents are checked before they are trusted (a
// pack's per-layer npz, .part and record: --resume trusts a layer only when its record parses and
// the digests it holds match the npz and the .part, and the manifest that publishes the npz files is
// written only after sync_files() of every one of them). While a DeferredSync lives on a thread,
// commit() on that thread writes, closes and renames as always (every reader finds the file complete
// under its name) but leaves the fsync of the file and of its folder to sync_files(): after a power
// loss such a file may be missing, empty or partial, never trusted. Six fsyncs per tiny layer
// became one per npz at the end (docs/benchmarks.md, "Cost against the number of linear layers").
class DeferredSync {
 public:
  DeferredSync() noexcept;
  ~DeferredSync();
  DeferredSync(const DeferredSync&) = delete;
  DeferredSync& operator=(const DeferredSync&) = delete;
};

// Makes files committed under a DeferredSync durable: fsync(2) of each (through the fault seam; an
// io error names the file), then of `folder`, which holds their names. Linear in the files.
void sync_files(const std::vector<std::filesystem::path>& files, const std::filesystem::path& folder);

// Every AtomicFile's temporary name is recorded in a fixed table from before it is created until it
// is renamed or removed, so that an interruption (SIGINT, SIGTERM) can remove them. Called from a
// signal handler: async-signal-safe (unlink only). After it, no AtomicFile creates a file any more:
// a thread that is about to removes its own and waits for the process to end.
void remove_temp_files_for_exit() noexcept;
// How many temporary files exist now (tests, diagnostics).
int temp_files_open() noexcept;

}  // namespace duquant::formats

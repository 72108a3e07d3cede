// What a command may write: never one of its inputs, only regular files (or standard output).
//
// Every command that writes (pack -o and --fold-smoothing, inspect --html, synth -o) first records
// every path it reads in an InputSet, then checks each output against it before anything is
// created. Two paths are the same file when their names resolve to one (symbolic links followed)
// or when they are one (device, inode) pair (hard links, bind mounts, links to links). A collision
// is a usage error (exit 2) naming both paths. docs/reliability.md, "Outputs and inputs".
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace duquant::formats {

// One path the command reads.
struct InputPath {
  std::filesystem::path path;      // as given or found (messages)
  std::string label;               // what it is: "the checkpoint", "--calib", "--config", ...
  std::filesystem::path resolved;  // symbolic links resolved as far as they exist
  bool has_identity = false;       // exists: dev/ino below are its identity
  dev_t dev = 0;
  ino_t ino = 0;
};

class InputSet {
 public:
  // Records `path` (following symbolic links; a missing path is recorded by name only).
  void add(const std::filesystem::path& path, std::string label);
  // Records every regular file directly in `folder` and in its subfolders one level down (a pack
  // folder and its .duquant-work); `label` names the folder's role ("the pack").
  void add_folder_files(const std::filesystem::path& folder, const std::string& label);
  const std::vector<InputPath>& paths() const noexcept { return paths_; }

  // Throws usage (exit 2) when the file `output` (existing or not) is one of the inputs, naming
  // both: `output_label` says which output it is ("--html report.html").
  void check_output_file(const std::filesystem::path& output, std::string_view output_label) const;
  // Throws usage when an input lies inside the folder `output` (by name), or when a file in it (or
  // in its subfolders one level down) is one of the inputs (by identity: a hard link, a symbolic
  // link). `except` names inputs that were read completely before the first write (the label
  // "--config"): those may lie in the folder, which then replaces them.
  void check_output_folder(const std::filesystem::path& output, std::string_view output_label,
                           const std::vector<std::string>& except = {}) const;

 private:
  std::vector<InputPath> paths_;
};

// A single-file output: standard output, or the regular file to write.
struct OutputFile {
  bool to_stdout = false;
  std::filesystem::path target;  // symbolic links followed: the file replaced (the link stays)
};

// Checks a single-file output path before anything is written:
//  - "-" is standard output when `allow_stdout` (else a usage error: the format needs a file);
//  - an existing path must be, once symbolic links are followed, a regular file, replaced only
//    with `force`; anything else (a device, a FIFO, a socket, a folder) is a usage error and is
//    never opened, so it cannot block or be touched;
//  - a dangling symbolic link and a missing parent folder are refused (usage, io).
// `label` names the option ("--html"). The returned target is where AtomicFile writes.
OutputFile check_output_file(const std::filesystem::path& path, std::string_view label, bool force, bool allow_stdout);

// The path with its symbolic links resolved as far as they exist, made absolute; never throws
// (a loop or an over-long name keeps the path as written).
std::filesystem::path resolved_path(const std::filesystem::path& path);
// True when `a` and `b` name one file: the same inode, or the same path once resolved (for a path
// not created yet). Never throws.
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b);
// True when `child` lies inside (or is) `parent`, both resolved.
bool path_inside(const std::filesystem::path& child, const std::filesystem::path& parent);

}  // namespace duquant::formats

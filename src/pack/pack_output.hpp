// The pack's output folder (run_pack's first steps, src/pack/pack.cpp): what pack owns in it, the checks before
// anything is created (no output is an input, reused folders hold only pack's kinds of files, the
// location is writable), the folder's write lock, and its preparation (stale temporary files,
// --force). docs/pack-format.md, docs/reliability.md ("Outputs and inputs").
#pragma once

#include <filesystem>
#include <string>

#include "duquant/pack.hpp"
#include "formats/folder_lock.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace duquant::pack_output {

// True when `p` itself (not what a link points to) is a regular file; never throws.
bool is_plain_file(const std::filesystem::path& p);

// Refuses an output that cannot work, before anything is created: no folder given, an input (a
// checkpoint file, the dump, by name or as a hard or symbolic link) inside it or as it, a
// non-empty folder without --resume/--force, a --fold-smoothing path that is an input, lies in
// the pack folder or is not a regular file, or a location this process cannot write into.
void check_output(const PackOptions& o, const formats::Checkpoint& ckpt);

// The output folder's write lock (formats/folder_lock.hpp), taken before the folder's contents
// decide anything: a missing folder is created first (and removed again if the lock is refused).
formats::FolderLock lock_output(const PackOptions& o);

// Creates the output and work folders (check_output has accepted them), removing stale temporary
// files (this process's and those of gone writers) and, with --force, the pack files of an earlier run.
void prepare_output(const PackOptions& o);

// Removes `.duquant-work` when it is a real folder: its regular files (records, parts, temporary
// files), then the folder if that left it empty. Never follows a link, never removes a folder in it.
void remove_work_folder(const std::filesystem::path& work);

}  // namespace duquant::pack_output

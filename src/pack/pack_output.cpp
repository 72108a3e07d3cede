#include "pack_output.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <string_view>
#include <system_error>
#include <vector>

#include "duquant/error.hpp"
#include "formats/output_paths.hpp"
#include "formats/regular_file.hpp"
#include "packfmt/layout.hpp"

namespace duquant::pack_output {
namespace fs = std::filesystem;

bool is_ours(const std::string& name) {
  auto ends = [&](std::string_view s) {
    return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
  };
  return ends(".npz") || name == kManifestName || name == kQuantizedName || name == kQuantizedIndexName ||
         (name.rfind("quantized-", 0) == 0 && ends(".safetensors")) || name == kWorkDirName;
}

bool is_stale_temp(const std::string& name) {
  return name.size() > 1 && name[0] == '.' && name.find(".tmp-") != std::string::npos;
}

// A temporary file this writer may remove: its own, or one whose writer is gone. Temporary names
// end in ".tmp-<pid>" (AtomicFile); with the folder's lock held, another live pid's file belongs to
// a writer that runs without the lock (--no-lock), and is left alone.
bool removable_temp(const std::string& name) {
  if (!is_stale_temp(name)) return false;
  const std::string pid_text = name.substr(name.rfind(".tmp-") + 5);
  long long pid = 0;
  const auto [end, ec] = std::from_chars(pid_text.data(), pid_text.data() + pid_text.size(), pid);
  if (ec != std::errc() || end != pid_text.data() + pid_text.size() || pid <= 0 || pid > 0x7fffffff) return true;
  return pid == ::getpid() || formats::process_is_gone(static_cast<pid_t>(pid));
}

// What pack reads, for the rule that no output is an input (formats/output_paths.hpp).
formats::InputSet pack_inputs(const PackOptions& o, const formats::Checkpoint& ckpt) {
  formats::InputSet in;
  for (const auto& f : ckpt.files()) in.add(f.path, "checkpoint file");
  std::error_code ec;
  if (fs::is_directory(ckpt.source(), ec)) {
    for (const char* name : {"model.safetensors.index.json", "config.json"})
      if (fs::exists(formats::status_of(ckpt.source() / name))) in.add(ckpt.source() / name, "checkpoint file");
  } else {
    in.add(ckpt.source(), "checkpoint");
  }
  if (!o.calib.empty()) in.add(o.calib, "--calib");
  if (!o.config_file.empty()) in.add(o.config_file, "--config");
  return in;
}

// True when `p` itself (not what a link points to) is a regular file; never throws.
bool is_plain_file(const fs::path& p) {
  std::error_code ec;
  return fs::symlink_status(p, ec).type() == fs::file_type::regular && !ec;
}

// The entries of `dir` (names only); an io error naming the folder when it cannot be listed.
std::vector<std::string> entries_of(const fs::path& dir, const std::string& label) {
  std::vector<std::string> names;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec))
    names.push_back(it->path().filename().string());
  DQ_CHECK(!ec, io, "{}: cannot list the folder: {}", label, ec.message());
  return names;
}

// An output folder that is reused (--resume, --force) holds, under the names pack writes, removes
// or reads back, only what pack itself would have put there: regular files, and `.duquant-work` a
// real folder (not a link: records would be written through it) holding regular files. Anything
// else (a user's folder `keep.npz/`, a link, a FIFO) is refused before any work, named.
void check_reused_output(const fs::path& out) {
  const std::string label = "-o " + out.string();
  for (const std::string& name : entries_of(out, label)) {
    if (!is_ours(name) && !is_stale_temp(name)) continue;
    const fs::path p = out / name;
    const fs::file_type t = formats::symlink_status_of(p, label + ": " + name).type();
    if (name == kWorkDirName) {
      DQ_CHECK(t == fs::file_type::directory, usage,
               "{}: {} is {}, not the folder pack keeps its work records in; pack writes nothing through it: remove "
               "or rename it",
               label, p.string(), formats::file_type_text(t));
      for (const std::string& record : entries_of(p, p.string())) {
        const fs::file_type rt = formats::symlink_status_of(p / record, p.string()).type();
        DQ_CHECK(rt == fs::file_type::regular, usage,
                 "{}: {} is {}; the work folder holds only pack's own regular files: remove or rename it", label,
                 (p / record).string(), formats::file_type_text(rt));
      }
      continue;
    }
    DQ_CHECK(t == fs::file_type::regular, usage,
             "{}: {} is {} where pack writes, reads or replaces a regular file of that name; pack neither follows "
             "nor removes it: remove or rename it",
             label, p.string(), formats::file_type_text(t));
  }
}

// The folder's entries but the lock file, which stays for good (it does not make a folder "not empty").
std::vector<std::string> entries_but_lock(const fs::path& dir, const std::string& label) {
  std::vector<std::string> names = entries_of(dir, label);
  std::erase(names, std::string(formats::kLockFileName));
  return names;
}

// What an existing output folder must be to be written: empty, or reused with --resume/--force and
// holding under pack's names only pack's own kinds of files. Run before the lock (to refuse early,
// creating nothing) and again under it (what decides).
void check_output_contents(const PackOptions& o) {
  const fs::path& out = o.output;
  const bool empty = entries_but_lock(out, "-o " + out.string()).empty();
  DQ_CHECK(empty || o.resume || o.force, usage,
           "-o {}: folder is not empty (--resume continues an interrupted pack, --force replaces its pack files)",
           out.string());
  if (!empty) check_reused_output(out);
}

// Refuses an output that cannot work, before anything is created: no folder given, an input (a
// checkpoint file, the dump, by name or as a hard or symbolic link) inside it or as it, a
// non-empty folder without --resume/--force, a --fold-smoothing path that is an input, lies in
// the pack folder or is not a regular file, or a location this process cannot write into.
void check_output(const PackOptions& o, const formats::Checkpoint& ckpt) {
  const fs::path& out = o.output;
  const std::string label = "-o " + out.string();
  DQ_CHECK(!out.empty(), usage, "-o: an output folder is required");
  const formats::InputSet inputs = pack_inputs(o, ckpt);
  for (const auto& f : ckpt.files())
    DQ_CHECK(formats::resolved_path(f.path) != formats::resolved_path(out), usage,
             "{}: the output would replace the checkpoint file {}", label, f.path.string());
  // --config is read completely before the first write: `pack --config OUT/manifest.json -o OUT
  // --force` packs again with the configuration of an earlier pack.
  inputs.check_output_folder(out, label, {"--config"});
  std::error_code ec;
  if (fs::is_directory(o.checkpoint, ec))
    DQ_CHECK(!formats::path_inside(out, o.checkpoint), usage,
             "{}: the output folder lies inside the input checkpoint folder {}", label, o.checkpoint.string());
  fs::path existing = out;
  // status_of: a link loop or an over-long name is an io error naming -o, never an escaping exception.
  const fs::file_status out_status = formats::status_of(out, label);
  if (fs::exists(out_status)) {
    DQ_CHECK(fs::is_directory(out_status), usage, "{}: exists and is not a folder (it is {})", label,
             formats::file_type_text(out_status.type()));
    check_output_contents(o);
  } else {
    DQ_CHECK(formats::symlink_status_of(out, label).type() != fs::file_type::symlink, usage,
             "{}: a symbolic link to nothing (dangling); pack does not create folders through it", label);
    existing = fs::absolute(out, ec).parent_path();
    while (!existing.empty() && !fs::exists(formats::status_of(existing, label)) && existing != existing.parent_path())
      existing = existing.parent_path();
    DQ_CHECK(fs::is_directory(existing, ec), usage, "{}: {} is not a folder", label, existing.string());
  }
  if (!o.fold_smoothing.empty()) {  // before anything is created: a refusal leaves no work folder behind
    const std::string flabel = "--fold-smoothing " + o.fold_smoothing.string();
    const formats::OutputFile fold = formats::check_output_file(o.fold_smoothing, "--fold-smoothing", o.force, false);
    inputs.check_output_file(fold.target, flabel);
    DQ_CHECK(!formats::path_inside(fold.target, out), usage,
             "{}: lies in the output folder {}, which holds only the pack's own files; choose a path outside it "
             "(nothing was written)",
             flabel, out.string());
  }
  // The one reliable test of writability (permissions, ACLs, read-only mounts, root): create a file.
  const fs::path probe = existing / fmt::format(".duquant-probe.tmp-{}", ::getpid());
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  DQ_CHECK(fd >= 0, io, "{}: cannot write into {}: {}; nothing was done", label, existing.string(),
           std::strerror(errno));
  ::close(fd);
  ::unlink(probe.c_str());
}

// The output folder's write lock (formats/folder_lock.hpp), taken before the folder's contents
// decide anything: a missing folder is created first (its parents too).
formats::FolderLock lock_output(const PackOptions& o) {
  const fs::path& out = o.output;
  std::error_code ec;
  const bool create = !fs::exists(formats::status_of(out, "-o " + out.string()));
  if (create) {
    fs::create_directories(out, ec);
    DQ_CHECK(!ec, io, "-o {}: cannot create the folder: {}", out.string(), ec.message());
  }
  std::optional<formats::FolderLock> taken;
  try {
    taken.emplace(formats::FolderLock::acquire(out, "-o " + out.string(), o.no_lock));
  } catch (const Error&) {
    if (create) {  // refused: the folder made for the lock goes again (only what this run put there)
      fs::remove(out / formats::kLockFileName, ec);
      fs::remove(out, ec);
    }
    throw;
  }
  formats::FolderLock lock = std::move(*taken);
  if (!lock.locked() && o.warn)
    o.warn(fmt::format("-o {}: writing without the folder's lock (--no-lock): nothing stops a second writer",
                       out.string()));
  check_output_contents(o);  // under the lock: what another writer may have changed meanwhile
  return lock;
}

// Removes a regular file pack wrote; an io error naming it when that fails.
void remove_owned_file(const fs::path& p) {
  std::error_code ec;
  fs::remove(p, ec);
  DQ_CHECK(!ec, io, "{}: cannot remove: {}", p.string(), ec.message());
}

// Removes `.duquant-work` when it is a real folder: its regular files (records, parts, temporary
// files), then the folder if that left it empty. Never follows a link, never removes a folder in it.
void remove_work_folder(const fs::path& work) {
  std::error_code ec;
  if (fs::symlink_status(work, ec).type() != fs::file_type::directory) return;
  for (const std::string& name : entries_of(work, work.string()))
    if (is_plain_file(work / name)) remove_owned_file(work / name);
  fs::remove(work, ec);  // fails, harmlessly, when something not pack's is left in it
}

// Creates the output and work folders (check_output has accepted them), removing stale temporary
// files and, with --force, the pack files of an earlier run.
void prepare_output(const PackOptions& o) {
  const fs::path& out = o.output;
  std::error_code ec;
  if (fs::exists(formats::status_of(out, "-o " + out.string()))) {
    // Only what pack itself writes, by exact name and type (check_reused_output refused the rest):
    // regular files, and the contents of a real `.duquant-work` folder, never a link's target.
    for (const std::string& name : entries_of(out, "-o " + out.string())) {
      const fs::path p = out / name;
      if (name == kWorkDirName) {
        if (!o.force) {  // --resume keeps the records; only stale temporary files go
          for (const std::string& record : entries_of(p, p.string()))
            if (removable_temp(record) && is_plain_file(p / record)) remove_owned_file(p / record);
        } else {
          remove_work_folder(p);
        }
        continue;
      }
      if ((removable_temp(name) || (o.force && is_ours(name))) && is_plain_file(p)) remove_owned_file(p);
    }
  } else {
    fs::create_directories(out, ec);
    DQ_CHECK(!ec, io, "-o {}: cannot create the folder: {}", out.string(), ec.message());
  }
  fs::create_directories(out / kWorkDirName, ec);
  DQ_CHECK(!ec, io, "{}: cannot create: {}", (out / kWorkDirName).string(), ec.message());
  // Swapped for a link since check_output? Records are never written through one.
  DQ_CHECK(fs::symlink_status(out / kWorkDirName, ec).type() == fs::file_type::directory, io,
           "{}: is not a real folder (a symbolic link?); pack writes nothing through it",
           (out / kWorkDirName).string());
}

}  // namespace duquant::pack_output

#include "formats/output_paths.hpp"

#include <sys/stat.h>

#include <algorithm>
#include <system_error>

#include "duquant/error.hpp"
#include "formats/regular_file.hpp"

namespace duquant::formats {
namespace fs = std::filesystem;

namespace {

struct Identity {
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
};

// The (device, inode) of what `path` names once symbolic links are followed; never throws.
Identity identity_of(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return {};
  return {true, st.st_dev, st.st_ino};
}

bool same(const InputPath& in, const Identity& id) {
  return in.has_identity && id.exists && in.dev == id.dev && in.ino == id.ino;
}

std::string describe_input(const InputPath& in) { return fmt::format("{} {}", in.label, in.path.string()); }

// The regular files in `folder` and in its subfolders one level down (never following a link to
// a folder); never throws (an unreadable folder has no files here: its reader reports it).
std::vector<fs::path> files_in(const fs::path& folder) {
  std::vector<fs::path> out;
  std::error_code ec;
  for (fs::directory_iterator it(folder, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code sec;
    const fs::file_type t = it->symlink_status(sec).type();
    if (t == fs::file_type::directory) {
      std::error_code sub;
      for (fs::directory_iterator s(it->path(), sub), send; !sub && s != send; s.increment(sub))
        out.push_back(s->path());
    } else {
      out.push_back(it->path());
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

fs::path resolved_path(const fs::path& p) {
  std::error_code ec;
  fs::path r = fs::weakly_canonical(p, ec);
  if (ec || r.empty()) r = fs::absolute(p, ec).lexically_normal();
  return r;
}

bool path_inside(const fs::path& child, const fs::path& parent) {
  const fs::path c = resolved_path(child), p = resolved_path(parent);
  auto ci = c.begin();
  for (auto pi = p.begin(); pi != p.end(); ++pi, ++ci) {
    if (pi->empty() && std::next(pi) == p.end()) break;  // a trailing separator
    if (ci == c.end() || *ci != *pi) return false;
  }
  return true;
}

void InputSet::add(const fs::path& path, std::string label) {
  InputPath in;
  in.path = path;
  in.label = std::move(label);
  in.resolved = resolved_path(path);
  const Identity id = identity_of(path);
  in.has_identity = id.exists;
  in.dev = id.dev;
  in.ino = id.ino;
  paths_.push_back(std::move(in));
}

void InputSet::add_folder_files(const fs::path& folder, const std::string& label) {
  for (const fs::path& p : files_in(folder)) add(p, label);
}

void InputSet::check_output_file(const fs::path& output, std::string_view output_label) const {
  const fs::path r = resolved_path(output);
  const Identity id = identity_of(output);
  for (const InputPath& in : paths_) {
    DQ_CHECK(in.resolved != r, usage, "{}: the output is the input {}; choose another path (nothing was written)",
             output_label, describe_input(in));
    DQ_CHECK(!same(in, id), usage,
             "{}: the output is the same file as the input {} (a hard or symbolic link to it); choose another path "
             "(nothing was written)",
             output_label, describe_input(in));
  }
}

void InputSet::check_output_folder(const fs::path& output, std::string_view output_label,
                                   const std::vector<std::string>& except) const {
  auto exempt = [&](const InputPath& in) { return std::find(except.begin(), except.end(), in.label) != except.end(); };
  const Identity folder_id = identity_of(output);
  for (const InputPath& in : paths_) {
    if (exempt(in)) continue;
    DQ_CHECK(!path_inside(in.path, output), usage,
             "{}: the output folder holds the input {}; the folder is the pack's own (its files are replaced and "
             "removed): pack into another folder (nothing was written)",
             output_label, describe_input(in));
    DQ_CHECK(!same(in, folder_id), usage, "{}: the output folder is the input {} (nothing was written)", output_label,
             describe_input(in));
  }
  if (!folder_id.exists) return;
  for (const fs::path& f : files_in(output)) {
    const Identity id = identity_of(f);
    for (const InputPath& in : paths_)
      DQ_CHECK(exempt(in) || !same(in, id), usage,
               "{}: {} in the output folder is the same file as the input {} (a hard or symbolic link to it); pack "
               "into another folder, or remove the link (nothing was written)",
               output_label, f.string(), describe_input(in));
  }
}

OutputFile check_output_file(const fs::path& path, std::string_view label, bool force, bool allow_stdout) {
  OutputFile out;
  const std::string named = fmt::format("{} {}", label, path.string());
  DQ_CHECK(!path.empty(), usage, "{}: an empty path", label);
  if (path == "-") {
    DQ_CHECK(allow_stdout, usage, "{} -: this output is a binary file, not a stream; give a file name", label);
    out.to_stdout = true;
    return out;
  }
  const fs::file_type own = symlink_status_of(path, named).type();
  const fs::file_type target = own == fs::file_type::symlink ? status_of(path, named).type() : own;
  DQ_CHECK(!(own == fs::file_type::symlink && target == fs::file_type::not_found), usage,
           "{}: a symbolic link to nothing (dangling); choose another path", named);
  DQ_CHECK(target == fs::file_type::not_found || target == fs::file_type::regular, usage,
           "{}: exists and is {}{}; the output is a regular file: it was not opened or changed", named,
           file_type_text(target), own == fs::file_type::symlink ? " (through a symbolic link)" : "");
  DQ_CHECK(target == fs::file_type::not_found || force, usage, "{}: exists (use --force to replace it)", named);
  // Through a symbolic link the file it points to is replaced: the temporary file lies beside it.
  out.target = own == fs::file_type::symlink ? resolved_path(path) : path;
  std::error_code ec;
  const fs::path parent = fs::absolute(out.target, ec).parent_path();
  const fs::file_type pt = status_of(parent, named).type();
  DQ_CHECK(pt == fs::file_type::directory, io, "{}: the folder {} {}", named, parent.string(),
           pt == fs::file_type::not_found ? std::string("does not exist") : std::string("is ") + file_type_text(pt));
  return out;
}

bool same_file(const std::filesystem::path& a, const std::filesystem::path& b) {
  std::error_code ec;
  if (std::filesystem::equivalent(a, b, ec)) return true;
  const std::filesystem::path ca = std::filesystem::weakly_canonical(a, ec);
  if (ec) return false;
  const std::filesystem::path cb = std::filesystem::weakly_canonical(b, ec);
  return !ec && ca == cb;
}

}  // namespace duquant::formats

#include "formats/safetensors_checkpoint.hpp"

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>

#include "duquant/error.hpp"
#include "formats/regular_file.hpp"
#include "formats/safetensors_header.hpp"
#include "formats/strict_json.hpp"

namespace duquant::formats {
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMaxIndexBytes = 100'000'000;

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string read_small_file(const fs::path& path, std::uint64_t limit) {
  const RegularFile file = RegularFile::open(path);  // never blocks; refuses a FIFO, a device, a folder
  DQ_CHECK(file.size() <= limit, format, "{}: {} bytes is larger than the {}-byte limit for an index", path.string(),
           file.size(), limit);
  return file.read_all(limit);
}

// A shard name must be a relative path that cannot leave the checkpoint's folder. The check is
// lexical on purpose: Hugging Face caches link shards to blobs elsewhere, which is legitimate.
void check_shard_name(const std::string& shard, const std::string& tensor, const std::string& label) {
  DQ_CHECK(!shard.empty(), format, "{}: tensor '{}' maps to an empty shard name", label, tensor);
  DQ_CHECK(shard.find('\0') == std::string::npos, format, "{}: tensor '{}': shard name contains a NUL byte", label,
           tensor);
  const fs::path p(shard);
  DQ_CHECK(!p.is_absolute() && !p.has_root_name() && !p.has_root_directory(), format,
           "{}: tensor '{}': shard '{}' is an absolute path; shards must lie inside the checkpoint's folder", label,
           tensor, shard);
  for (const auto& part : p) {
    DQ_CHECK(part != "..", format, "{}: tensor '{}': shard '{}' escapes the checkpoint's folder through '..'", label,
             tensor, shard);
  }
  DQ_CHECK(ends_with(shard, ".safetensors"), format, "{}: tensor '{}': shard '{}' is not a .safetensors file", label,
           tensor, shard);
}

}  // namespace

std::map<std::string, std::string> parse_safetensors_index(std::string_view text, const std::string& label) {
  const nlohmann::json root = parse_strict_json(text, label, 4);
  DQ_CHECK(root.is_object(), format, "{}: an index must be a JSON object, found {}", label, json_kind(root));
  DQ_CHECK(root.contains("weight_map"), format, "{}: missing \"weight_map\"", label);
  const auto& map = root["weight_map"];
  DQ_CHECK(map.is_object(), format, "{}: \"weight_map\" must be an object, found {}", label, json_kind(map));
  std::map<std::string, std::string> out;
  for (const auto& [tensor, shard] : map.items()) {
    DQ_CHECK(shard.is_string(), format, "{}: weight_map['{}'] must be a shard file name, found {}", label, tensor,
             json_kind(shard));
    check_shard_name(shard.get<std::string>(), tensor, label);
    out.emplace(tensor, shard.get<std::string>());
  }
  DQ_CHECK(!out.empty(), format, "{}: \"weight_map\" lists no tensors", label);
  return out;
}

void Checkpoint::add_file(const fs::path& path, const std::string& label) {
  MappedFile map = MappedFile::open(path);
  SafetensorsHeader header = parse_safetensors_header(map.bytes(), label);
  const auto file_index = static_cast<std::uint32_t>(files_.size());
  for (TensorEntry& t : header.tensors) {
    TensorRef ref;
    ref.name = std::move(t.name);
    ref.stored_name = ref.name;
    ref.dtype = t.dtype;
    ref.shape = std::move(t.shape);
    ref.numel = t.numel;
    ref.nbytes = t.end - t.begin;
    ref.file = file_index;
    ref.offset = header.data_start + t.begin;
    const auto [it, fresh] = by_name_.emplace(ref.name, tensors_.size());
    DQ_CHECK(fresh, format, "{}: tensor '{}' is also stored in {}", label, ref.name,
             files_[tensors_[it->second].file].path.string());
    all_.push_back(ref);
    tensors_.push_back(std::move(ref));
  }
  files_.push_back({path, map.size(), header.header_bytes, std::move(header.metadata)});
  maps_.push_back(std::move(map));
}

Checkpoint Checkpoint::open(const fs::path& path) {
  std::error_code ec;
  // status_of: a symbolic link loop or an over-long name is an io error naming the path.
  const auto status = status_of(path);
  DQ_CHECK(fs::exists(status), io, "{}: no such file or folder", path.string());
  auto present = [](const fs::path& p) { return symlink_status_of(p).type() != fs::file_type::not_found; };

  fs::path index;
  fs::path single;
  if (fs::is_directory(status)) {
    if (present(path / "model.safetensors.index.json")) {
      index = path / "model.safetensors.index.json";
    } else if (present(path / "model.safetensors")) {
      single = path / "model.safetensors";
    } else {
      std::vector<fs::path> files;
      std::vector<fs::path> indexes;
      for (const auto& entry : fs::directory_iterator(path, ec)) {
        const std::string name = entry.path().filename().string();
        if (ends_with(name, ".safetensors")) files.push_back(entry.path());
        if (ends_with(name, ".safetensors.index.json")) indexes.push_back(entry.path());
      }
      DQ_CHECK(!ec, io, "{}: cannot list folder: {}", path.string(), ec.message());
      if (indexes.size() == 1) {
        index = indexes.front();
      } else if (indexes.empty() && files.size() == 1) {
        single = files.front();
      } else {
        fail(ErrorKind::io,
             "{}: cannot tell which checkpoint to open ({} *.safetensors.index.json and {} *.safetensors files; "
             "name the file or index)",
             path.string(), indexes.size(), files.size());
      }
    }
  } else if (ends_with(path.filename().string(), ".json")) {
    index = path;
  } else {
    single = path;
  }

  Checkpoint ckpt;
  ckpt.source_ = path;
  if (!single.empty()) {
    ckpt.add_file(single, single.string());
    return ckpt;
  }

  const std::string label = index.string();
  const auto weight_map = parse_safetensors_index(read_small_file(index, kMaxIndexBytes), label);
  std::set<std::string> shards;  // sorted: model-00001-of-00003 ... in order
  for (const auto& [tensor, shard] : weight_map) shards.insert(shard);
  const fs::path folder = index.parent_path();
  for (const std::string& shard : shards) {
    const fs::path shard_path = folder / shard;
    DQ_CHECK(fs::exists(status_of(shard_path)), io, "{}: shard '{}' (listed in the index) is missing", label, shard);
    const std::size_t first = ckpt.tensors_.size();
    ckpt.add_file(shard_path, shard_path.string());
    for (std::size_t i = first; i < ckpt.tensors_.size(); ++i) {
      const TensorRef& t = ckpt.tensors_[i];
      const auto it = weight_map.find(t.name);
      DQ_CHECK(it != weight_map.end(), format, "{}: tensor '{}' is in shard '{}' but not in the index", label, t.name,
               shard);
      DQ_CHECK(it->second == shard, format, "{}: tensor '{}' is in shard '{}' but the index places it in '{}'", label,
               t.name, shard, it->second);
    }
  }
  for (const auto& [tensor, shard] : weight_map)
    DQ_CHECK(ckpt.by_name_.count(tensor) == 1, format, "{}: tensor '{}' is listed in the index but shard '{}' lacks it",
             label, tensor, shard);
  return ckpt;
}

std::vector<const TensorRef*> Checkpoint::stored_tensors() const {
  std::vector<const TensorRef*> out;
  out.reserve(all_.size());
  for (const TensorRef& t : all_) out.push_back(&t);
  return out;
}

void Checkpoint::apply_names(const std::vector<std::optional<std::string>>& names) {
  std::unordered_map<std::string, std::size_t> by_name;
  std::vector<TensorRef> kept;
  for (std::size_t i = 0; i < all_.size(); ++i) {
    if (!names[i]) continue;
    TensorRef t = all_[i];
    t.name = *names[i];
    DQ_CHECK(!t.name.empty(), format, "{}: tensor '{}' would be renamed to an empty name", source_.string(),
             t.stored_name);
    const auto [it, fresh] = by_name.emplace(t.name, kept.size());
    DQ_CHECK(fresh, format, "{}: tensors '{}' and '{}' would both be named '{}'", source_.string(),
             kept[it->second].stored_name, t.stored_name, t.name);
    kept.push_back(std::move(t));
  }
  for (std::size_t i = 0; i < all_.size(); ++i) {
    if (names[i]) continue;
    const auto it = by_name.find(all_[i].stored_name);
    DQ_CHECK(it == by_name.end(), format,
             "{}: tensor '{}' would be renamed to '{}', the name of a tensor that the renaming sets aside: the names "
             "would be ambiguous",
             source_.string(), kept[it->second].stored_name, all_[i].stored_name);
  }
  tensors_ = std::move(kept);
  by_name_ = std::move(by_name);
}

const TensorRef* Checkpoint::find(std::string_view name) const {
  const auto it = by_name_.find(std::string(name));
  return it == by_name_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> Checkpoint::bytes(const TensorRef& t) const {
  return maps_.at(t.file).bytes().subspan(t.offset, t.nbytes);
}

void Checkpoint::release(const TensorRef& t) const { maps_.at(t.file).release(t.offset, t.nbytes); }

void Checkpoint::check_unchanged(const char* stage) const {
  for (const MappedFile& map : maps_) map.check_unchanged(stage);
}

void Checkpoint::read_f32(const TensorRef& t, std::span<float> out) const {
  DQ_CHECK(converts_to_f32(t.dtype), format, "{}: tensor '{}' is {}; only F32, F16 and BF16 convert to float32",
           files_.at(t.file).path.string(), t.stored_name, dtype_name(t.dtype));
  DQ_CHECK(out.size() == t.numel, internal, "read_f32('{}'): output holds {} floats, tensor has {}", t.name, out.size(),
           t.numel);
  convert_to_f32(t.dtype, bytes(t).data(), t.numel, out.data());
}

}  // namespace duquant::formats

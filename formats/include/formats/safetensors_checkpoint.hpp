// A checkpoint: one safetensors file, or shards joined by a Hugging Face style index.
//
// Every file is memory-mapped and its header validated when the checkpoint opens; tensor data is
// not touched until a caller asks for a tensor's bytes or converts it to float32.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "formats/dtype.hpp"
#include "formats/mapped_file.hpp"

namespace duquant::formats {

struct TensorRef {
  std::string name;         // the name callers use (see Checkpoint::rename)
  std::string stored_name;  // the name in the file
  DType dtype{};
  std::vector<std::uint64_t> shape;
  std::uint64_t numel = 0;
  std::uint64_t nbytes = 0;
  std::uint32_t file = 0;    // index into Checkpoint::files()
  std::uint64_t offset = 0;  // absolute byte offset of the data inside that file
};

struct CheckpointFile {
  std::filesystem::path path;
  std::uint64_t size = 0;
  std::uint64_t header_bytes = 0;
  std::map<std::string, std::string> metadata;
};

// Parses a `model.safetensors.index.json` text: tensor name -> shard file name, validated
// (a JSON object, "weight_map" an object of strings, no duplicate keys, shard names relative
// paths that stay inside the checkpoint's folder). `label` names the file in messages.
std::map<std::string, std::string> parse_safetensors_index(std::string_view text, const std::string& label);

class Checkpoint {
 public:
  // `path` may be a .safetensors file, a *.safetensors.index.json file, or a folder holding
  // model.safetensors.index.json, model.safetensors, or exactly one *.safetensors file.
  static Checkpoint open(const std::filesystem::path& path);

  // Every tensor, in storage order: shards by file name, then by data offset. After rename(),
  // only the tensors the renaming kept, under their new names.
  const std::vector<TensorRef>& tensors() const noexcept { return tensors_; }
  const TensorRef* find(std::string_view name) const;
  // Every tensor of the files, kept or not by rename(), in storage order: what a copy of the
  // checkpoint must hold (write each under its stored_name).
  std::vector<const TensorRef*> stored_tensors() const;
  // Renames every tensor: `to_name(stored_name)` gives its new name, or nullopt to set it aside
  // (it stays in stored_tensors()). Two tensors given one name, or a new name that is the stored
  // name of a tensor set aside, throw duquant::Error (format) naming both. Pointers to tensors
  // taken before a rename are invalid after it.
  template <class F>
  void rename(F&& to_name) {
    std::vector<std::optional<std::string>> names;
    names.reserve(all_.size());
    for (const TensorRef& t : all_) names.push_back(to_name(t.stored_name));
    apply_names(names);
  }
  // Tensors that the last rename() set aside.
  std::size_t set_aside() const noexcept { return all_.size() - tensors_.size(); }
  const std::vector<CheckpointFile>& files() const noexcept { return files_; }
  // What the user named (file, index or folder), for messages.
  const std::filesystem::path& source() const noexcept { return source_; }

  // The tensor's raw little-endian bytes, inside the mapping (no copy; any alignment).
  std::span<const std::byte> bytes(const TensorRef& tensor) const;
  // Converts the tensor to float32 into `out` (out.size() must equal numel). F32/F16/BF16 only;
  // other dtypes throw duquant::Error (format) naming the tensor.
  void read_f32(const TensorRef& tensor, std::span<float> out) const;
  // Drops the tensor's pages from this process's resident memory (see MappedFile::release).
  void release(const TensorRef& tensor) const;
  // Throws duquant::Error (io) naming the file when any file of the checkpoint was removed,
  // replaced or modified since open() (see MappedFile::check_unchanged); `stage` names the step.
  void check_unchanged(const char* stage) const;

 private:
  void add_file(const std::filesystem::path& path, const std::string& label);
  void apply_names(const std::vector<std::optional<std::string>>& names);

  std::filesystem::path source_;
  std::vector<MappedFile> maps_;
  std::vector<CheckpointFile> files_;
  std::vector<TensorRef> all_;      // as stored
  std::vector<TensorRef> tensors_;  // as named by rename() (a copy of all_ until then)
  std::unordered_map<std::string, std::size_t> by_name_;
};

}  // namespace duquant::formats

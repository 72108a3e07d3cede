#include "formats/safetensors_writer.hpp"

#include <nlohmann/json.hpp>

#include <cstring>
#include <string_view>
#include <unordered_set>

#include "duquant/error.hpp"
#include "formats/strict_json.hpp"

namespace duquant::formats {

std::uint64_t TensorSpec::nbytes() const {
  std::uint64_t n = 1;
  for (std::uint64_t d : shape)
    DQ_CHECK(!__builtin_mul_overflow(n, d, &n), usage, "tensor '{}': shape overflows 64 bits", name);
  std::uint64_t bits = 0;
  DQ_CHECK(!__builtin_mul_overflow(n, std::uint64_t{dtype_bits(dtype)}, &bits), usage,
           "tensor '{}': byte count overflows 64 bits", name);
  DQ_CHECK(bits % 8 == 0, usage, "tensor '{}': {} elements of {} are not a whole number of bytes", name, n,
           dtype_name(dtype));
  return bits / 8;
}

std::string safetensors_header_bytes(const std::vector<TensorSpec>& tensors,
                                     const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  std::unordered_set<std::string_view> names;  // a hash set: header.contains() scans (O(n^2) over a dump's tensors)
  names.reserve(tensors.size());
  header.get_ref<nlohmann::ordered_json::object_t&>().reserve(tensors.size() + 1);  // no copies as it grows
  for (const TensorSpec& t : tensors) {
    DQ_CHECK(names.insert(t.name).second && t.name != "__metadata__", usage, "tensor '{}' written twice", t.name);
    const std::uint64_t n = t.nbytes();
    append_new_key(header, t.name,
                   {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + n}}});
    offset += n;
  }
  std::string json = dump_json(header);
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const std::uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json;
}

std::uint64_t header_entry_bound(const TensorSpec& t) {
  // "NAME":{"dtype":"DT","shape":[D,...],"data_offsets":[B,E]}, with a comma: 21 digits per number.
  const std::uint64_t name = dump_json(nlohmann::json(t.name)).size();  // quoted and escaped as written
  return name + 1 + std::string_view(R"({"dtype":"","shape":[],"data_offsets":[]},)").size() +
         dtype_name(t.dtype).size() + 21 * (t.shape.size() + 2);
}

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path, std::vector<TensorSpec> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : file_(std::move(path)) {
  for (const TensorSpec& t : tensors) total_ += t.nbytes();
  file_.write(safetensors_header_bytes(tensors, metadata));
}

SafetensorsWriter::SafetensorsWriter(std::filesystem::path path, std::filesystem::path kept,
                                     std::vector<TensorSpec> tensors,
                                     const std::map<std::string, std::string>& metadata)
    : file_(std::move(path), std::move(kept)) {
  for (const TensorSpec& t : tensors) total_ += t.nbytes();
  file_.write(safetensors_header_bytes(tensors, metadata));
}

void SafetensorsWriter::write(std::span<const std::byte> chunk) {
  DQ_CHECK(chunk.size() <= total_ - written_, internal, "{}: {} bytes written past the {}-byte data region",
           file_.target().string(), written_ + chunk.size() - total_, total_);
  file_.write(chunk);
  written_ += chunk.size();
}

void SafetensorsWriter::commit() {
  DQ_CHECK(written_ == total_, internal, "{}: {} of {} data bytes written", file_.target().string(), written_, total_);
  file_.commit();
}

}  // namespace duquant::formats

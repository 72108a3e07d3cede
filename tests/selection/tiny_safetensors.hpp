// Writes small safetensors files for the selection tests: F32 zeros, tensors stored (header and
// data) in exactly the order given, so a test controls the storage order.
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace duquant::test {

struct TinyTensor {
  std::string name;
  std::vector<std::uint64_t> shape;
};

inline void write_tiny_safetensors(const std::filesystem::path& path, const std::vector<TinyTensor>& tensors) {
  nlohmann::ordered_json header;
  std::uint64_t offset = 0;
  for (const TinyTensor& t : tensors) {
    std::uint64_t n = 1;
    for (auto d : t.shape) n *= d;
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + 4 * n}}};
    offset += 4 * n;
  }
  std::string text = header.dump();
  while (text.size() % 8 != 0) text += ' ';
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t size = text.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((size >> (8 * i)) & 0xff));
  out << text;
  out << std::string(offset, '\0');
}

// The tensors of a linear layer: "<name>.weight" [out, in] (and "<name>.bias" [out]).
inline void add_linear(std::vector<TinyTensor>& tensors, const std::string& name, std::uint64_t out, std::uint64_t in,
                       bool bias = false) {
  tensors.push_back({name + ".weight", {out, in}});
  if (bias) tensors.push_back({name + ".bias", {out}});
}

}  // namespace duquant::test

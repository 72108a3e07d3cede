// Fuzz checks of the safetensors readers: the single-file header and the shard index.
#include <fmt/format.h>

#include <filesystem>
#include <string>
#include <string_view>

#include "duquant/error.hpp"
#include "formats/dtype.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_header.hpp"
#include "fuzz/fuzz_checks.hpp"

namespace duquant::fuzz {

// Accepted headers: tensors back to back from offset 0 and filling the file, each holding exactly
// numel * dtype bits, numel the product of the shape.
Outcome check_safetensors_header(Bytes input) {
  try {
    const auto h = formats::parse_safetensors_header(input, "fuzz.safetensors");
    if (h.data_start != 8 + h.header_bytes || h.data_start > input.size())
      throw Violation(fmt::format("data starts at {} with a {}-byte header in a {}-byte file", h.data_start,
                                  h.header_bytes, input.size()));
    std::uint64_t expected = 0;
    for (const auto& t : h.tensors) {
      if (t.begin != expected || t.end < t.begin)
        throw Violation(
            fmt::format("tensor '{}' at [{}, {}) after data ending at {}", t.name, t.begin, t.end, expected));
      std::uint64_t numel = 1;
      for (const std::uint64_t d : t.shape)
        if (__builtin_mul_overflow(numel, d, &numel))
          throw Violation(fmt::format("tensor '{}': shape overflows", t.name));
      if (numel != t.numel)
        throw Violation(fmt::format("tensor '{}': numel {} for a shape of {}", t.name, t.numel, numel));
      if (numel * formats::dtype_bits(t.dtype) / 8 != t.end - t.begin)
        throw Violation(fmt::format("tensor '{}': {} bytes for {} elements", t.name, t.end - t.begin, numel));
      expected = t.end;
    }
    if (expected != input.size() - h.data_start)
      throw Violation(fmt::format("tensors end at {} of a {}-byte data region", expected, input.size() - h.data_start));
    return Outcome::accepted;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::format) throw;
    return Outcome::refused;
  }
}

// Accepted weight maps: not empty, every shard a relative .safetensors path that stays inside the
// checkpoint's folder.
Outcome check_safetensors_index(Bytes input) {
  const std::string_view text(reinterpret_cast<const char*>(input.data()), input.size());
  try {
    const auto map = formats::parse_safetensors_index(text, "fuzz.safetensors.index.json");
    if (map.empty()) throw Violation("an empty weight map was accepted");
    for (const auto& [tensor, shard] : map) {
      const std::filesystem::path p(shard);
      if (p.is_absolute() || p.has_root_directory() || !shard.ends_with(".safetensors"))
        throw Violation(fmt::format("shard '{}' of '{}' is not a relative .safetensors path", shard, tensor));
      for (const auto& part : p)
        if (part == "..") throw Violation(fmt::format("shard '{}' of '{}' leaves the folder", shard, tensor));
    }
    return Outcome::accepted;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::format) throw;
    return Outcome::refused;
  }
}

}  // namespace duquant::fuzz

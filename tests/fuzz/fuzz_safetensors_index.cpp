// libFuzzer target: parse_safetensors_index on arbitrary text. A duquant::Error of kind format is
// the only acceptable failure; any other exception, a sanitizer report, or an accepted weight map
// with a shard name that could leave the checkpoint's folder is a crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string_view>

#include "duquant/error.hpp"
#include "formats/safetensors_checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  try {
    const auto map = duquant::formats::parse_safetensors_index(text, "fuzz.safetensors.index.json");
    if (map.empty()) std::abort();
    for (const auto& [tensor, shard] : map) {
      const std::filesystem::path p(shard);
      if (p.is_absolute() || p.has_root_directory() || !shard.ends_with(".safetensors")) std::abort();
      for (const auto& part : p)
        if (part == "..") std::abort();
    }
  } catch (const duquant::Error& e) {
    if (e.kind() != duquant::ErrorKind::format) std::abort();
  }
  return 0;
}

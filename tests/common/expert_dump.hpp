// A calibration dump of the fixture's action expert, for tests that need a calibrated pack.
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "common/test_paths.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_writer.hpp"

namespace duquant::test {

// A deterministic two-call dump for every action-expert linear of the fixture (keys
// `<layer>.x_0000`, F32 [24, in]): values with a few outlier channels.
inline void write_expert_dump(const std::filesystem::path& path) {
  const formats::Checkpoint ckpt = formats::Checkpoint::open(tiny_checkpoint());
  std::vector<formats::TensorSpec> specs;
  std::string data;
  std::uint32_t x = 12345;
  for (const formats::TensorRef& t : ckpt.tensors()) {
    const std::string& n = t.name;
    if (n.find("gemma_expert") == std::string::npos || t.shape.size() != 2 || n.size() < 7 ||
        n.compare(n.size() - 7, 7, ".weight") != 0)
      continue;
    const std::string layer = n.substr(0, n.size() - 7);
    const std::uint64_t cols = t.shape[1], rows = 24;
    for (int call = 0; call < 2; ++call) {
      specs.push_back({fmt::format("{}.x_{:04d}", layer, call), formats::DType::F32, {rows, cols}});
      for (std::uint64_t k = 0; k < rows * cols; ++k) {
        x = x * 1664525u + 1013904223u;
        float f = static_cast<float>(x >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f;
        if (k % cols % 11 == 5) f *= 20.0f;
        data.append(reinterpret_cast<const char*>(&f), sizeof f);
      }
    }
  }
  formats::SafetensorsWriter w(path, specs, {});
  w.write(std::as_bytes(std::span(data.data(), data.size())));
  w.commit();
}

}  // namespace duquant::test

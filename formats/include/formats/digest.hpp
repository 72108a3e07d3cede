// Content digests for manifests and resume checks: XXH3-128 (xxHash), written as 32 hex digits
// in the canonical big-endian order `xxh128sum` prints.
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace duquant {

std::string xxh128_hex(std::span<const std::byte> data);
std::string xxh128_hex(std::string_view text);
// Streams the file (bounded memory). Throws duquant::Error (io) naming it.
std::string xxh128_file(const std::filesystem::path& path);

// Incremental form, for data written in pieces.
class Xxh128 {
 public:
  Xxh128();
  ~Xxh128();
  // A copy continues from the same state: a common prefix hashed once for many digests.
  Xxh128(const Xxh128& other);
  Xxh128& operator=(const Xxh128&) = delete;
  void update(std::span<const std::byte> data);
  std::string hex() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace duquant

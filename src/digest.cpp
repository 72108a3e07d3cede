#include "duquant/digest.hpp"

#define XXH_INLINE_ALL
#include <xxhash.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <vector>

#include "duquant/error.hpp"

namespace duquant {
namespace {

std::string hex(XXH128_hash_t h) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, h);
  std::string s;
  for (unsigned char byte : c.digest) s += fmt::format("{:02x}", byte);
  return s;
}

}  // namespace

struct Xxh128::State {
  XXH3_state_t* s = XXH3_createState();
  ~State() { XXH3_freeState(s); }
};

Xxh128::Xxh128() : state_(new State) {
  DQ_CHECK(state_->s != nullptr, internal, "out of memory for a hash state");
  XXH3_128bits_reset(state_->s);
}
Xxh128::~Xxh128() = default;
void Xxh128::update(std::span<const std::byte> data) { XXH3_128bits_update(state_->s, data.data(), data.size()); }
std::string Xxh128::hex() const { return duquant::hex(XXH3_128bits_digest(state_->s)); }

std::string xxh128_hex(std::span<const std::byte> data) { return hex(XXH3_128bits(data.data(), data.size())); }
std::string xxh128_hex(std::string_view text) { return hex(XXH3_128bits(text.data(), text.size())); }

std::string xxh128_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  DQ_CHECK(in.good(), io, "{}: cannot open for reading: {}", path.string(), std::strerror(errno));
  Xxh128 h;
  std::vector<char> buffer(1 << 22);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    const auto n = static_cast<std::size_t>(in.gcount());
    if (n == 0) break;
    h.update(std::as_bytes(std::span(buffer.data(), n)));
  }
  DQ_CHECK(in.eof(), io, "{}: read error", path.string());
  return h.hex();
}

}  // namespace duquant

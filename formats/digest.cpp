#include "formats/digest.hpp"

#define XXH_INLINE_ALL
#include <unistd.h>
#include <xxhash.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

#include "duquant/error.hpp"
#include "formats/regular_file.hpp"

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
Xxh128::Xxh128(const Xxh128& other) : state_(new State) {
  DQ_CHECK(state_->s != nullptr, internal, "out of memory for a hash state");
  XXH3_copyState(state_->s, other.state_->s);
}
Xxh128::~Xxh128() = default;
void Xxh128::update(std::span<const std::byte> data) { XXH3_128bits_update(state_->s, data.data(), data.size()); }
std::string Xxh128::hex() const { return duquant::hex(XXH3_128bits_digest(state_->s)); }

std::string xxh128_hex(std::span<const std::byte> data) { return hex(XXH3_128bits(data.data(), data.size())); }
std::string xxh128_hex(std::string_view text) { return hex(XXH3_128bits(text.data(), text.size())); }

std::string xxh128_file(const std::filesystem::path& path) {
  // Never blocks: a FIFO, a device (/dev/zero) or a folder is refused, naming what it is.
  const formats::RegularFile file = formats::RegularFile::open(path);
  Xxh128 h;
  // Sized to the file (at most 4 MiB) and not zero-filled: a pack hashes a few small files per
  // layer, and clearing 4 MiB for each was most of a tiny layer's time.
  const std::size_t size =
      static_cast<std::size_t>(std::clamp<std::uint64_t>(file.size(), 4096, std::uint64_t{1} << 22));
  const auto buffer = std::make_unique_for_overwrite<char[]>(size);
  for (;;) {
    const ssize_t n = ::read(file.fd(), buffer.get(), size);
    if (n < 0 && errno == EINTR) continue;
    DQ_CHECK(n >= 0, io, "{}: read error: {}", path.string(), std::strerror(errno));
    if (n == 0) break;
    h.update(std::as_bytes(std::span(buffer.get(), static_cast<std::size_t>(n))));
  }
  return h.hex();
}

}  // namespace duquant

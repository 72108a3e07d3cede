// libFuzzer target: parse_safetensors_header on arbitrary bytes. A duquant::Error of kind format is
// the only acceptable failure; any other exception, a sanitizer report, or an accepted header that
// breaks the documented invariants (tensors back to back from 0, filling the file) is a crash.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <span>

#include "duquant/error.hpp"
#include "formats/safetensors_header.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::span<const std::byte> file(reinterpret_cast<const std::byte*>(data), size);
  try {
    const auto h = duquant::formats::parse_safetensors_header(file, "fuzz.safetensors");
    if (h.data_start != 8 + h.header_bytes || h.data_start > size) std::abort();
    std::uint64_t expected = 0;
    for (const auto& t : h.tensors) {
      if (t.begin != expected || t.end < t.begin) std::abort();
      std::uint64_t numel = 1;
      for (const std::uint64_t d : t.shape)
        if (__builtin_mul_overflow(numel, d, &numel)) std::abort();
      if (numel != t.numel) std::abort();
      if (numel * duquant::formats::dtype_bits(t.dtype) / 8 != t.end - t.begin) std::abort();
      expected = t.end;
    }
    if (expected != size - h.data_start) std::abort();
  } catch (const duquant::Error& e) {
    if (e.kind() != duquant::ErrorKind::format) std::abort();
  }
  return 0;
}

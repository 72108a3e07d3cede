// Fuzz check of the npy and npz readers (the runtime's pack files and ours).
#include <fmt/format.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "duquant/error.hpp"
#include "formats/npy.hpp"
#include "formats/npz.hpp"
#include "fuzz/fuzz_checks.hpp"

namespace duquant::fuzz {
namespace {

bool inside(std::span<const std::byte> part, Bytes whole) {
  return part.empty() || (part.data() >= whole.data() && part.data() + part.size() <= whole.data() + whole.size());
}

// An accepted array: numel the product of the shape, exactly numel * itemsize bytes inside `whole`,
// and the accessor of its type returning numel elements (or a string for a 0-d unicode array).
void check_array(const formats::NpyArray& a, Bytes whole, const std::string& label) {
  std::uint64_t numel = 1;
  for (const std::uint64_t d : a.shape)
    if (__builtin_mul_overflow(numel, d, &numel)) throw Violation(label + ": shape overflows");
  std::uint64_t bytes = 0;
  if (numel != a.numel || __builtin_mul_overflow(numel, a.itemsize, &bytes) || bytes != a.data.size())
    throw Violation(fmt::format("{}: {} bytes for numel {} (shape says {}) of itemsize {}", label, a.data.size(),
                                a.numel, numel, a.itemsize));
  if (!inside(a.data, whole)) throw Violation(label + ": data outside the input");
  switch (a.type) {
    case formats::NpyType::f4:
      if (formats::npy_to_f32(a, label).size() != numel) throw Violation(label + ": npy_to_f32 size");
      break;
    case formats::NpyType::i8:
      if (formats::npy_to_i64(a, label).size() != numel) throw Violation(label + ": npy_to_i64 size");
      break;
    case formats::NpyType::unicode:
      if (a.shape.empty()) (void)formats::npy_unicode_to_utf8(a, label);
      break;
    default: break;
  }
}

}  // namespace

Outcome check_npz(Bytes input) {
  static constexpr char kMagic[] = "\x93NUMPY";
  try {
    if (input.size() >= 6 && std::memcmp(input.data(), kMagic, 6) == 0) {
      check_array(formats::parse_npy(input, "fuzz.npy"), input, "fuzz.npy");
      return Outcome::accepted;
    }
    const auto members = formats::parse_zip(input, "fuzz.npz");
    std::set<std::string> names;
    for (const auto& m : members) {
      if (!names.insert(m.name).second) throw Violation("member '" + m.name + "' listed twice");
      if (!inside(m.data, input)) throw Violation("member '" + m.name + "' outside the input");
    }
    const std::vector<std::byte> copy(input.begin(), input.end());
    const formats::NpzFile npz = formats::NpzFile::parse(copy, "fuzz.npz");
    if (npz.keys().size() != members.size()) throw Violation("keys and members differ in number");
    for (std::size_t i = 0; i < members.size(); ++i) {
      const std::string& key = npz.keys()[i];
      if (key + ".npy" != members[i].name) throw Violation("key '" + key + "' is not member '" + members[i].name + "'");
      // The array as the archive holds it, checked against the member's bytes in the input.
      check_array(formats::parse_npy(members[i].data, key), members[i].data, "fuzz.npz: " + key);
      const formats::NpyArray& a = npz.at(key);
      if (a.shape != formats::parse_npy(members[i].data, key).shape)
        throw Violation("key '" + key + "': shape differs");
    }
    return Outcome::accepted;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::format) throw;
    return Outcome::refused;
  }
}

}  // namespace duquant::fuzz

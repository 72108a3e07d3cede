#include "packfmt/pack_layout.hpp"

#include <fmt/format.h>

#include <cmath>
#include <unordered_map>

#include "duquant/error.hpp"
#include "formats/strict_json.hpp"

namespace duquant {
namespace {

// The length of the UTF-8 sequence at s[i], 1 for ASCII and for a byte that starts no valid sequence.
std::size_t utf8_sequence_length(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  const std::size_t n = c < 0xc2 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : c < 0xf5 ? 4 : 1;
  if (n == 1 || i + n > s.size()) return 1;
  const std::optional<std::size_t> bad = formats::invalid_utf8_offset(s.substr(i, n));
  return bad ? 1 : n;
}

}  // namespace

std::string pack_file_name(std::string_view module) {
  std::string s;
  s.reserve(module.size() + 4);
  // Per character, as the runtime's Python str: a non-ASCII character (several UTF-8 bytes) is one '_'.
  for (std::size_t i = 0; i < module.size();) {
    const char c = module[i];
    const bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                      c == '.' || c == '-';
    s += keep ? c : '_';
    i += utf8_sequence_length(module, i);
  }
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    if (s[i] == '.' && i + 1 < s.size() && s[i + 1] == '.') {
      out += '.';
      i += 2;
    } else {
      out += s[i++];
    }
  }
  return out + ".npz";
}

std::vector<PackFileCollision> pack_file_collisions(const std::vector<std::string>& layers) {
  std::vector<PackFileCollision> out;
  std::unordered_map<std::string, const std::string*> owner;  // file name -> first layer
  for (const std::string& l : layers) {
    std::string file = pack_file_name(l);
    const auto [it, fresh] = owner.emplace(file, &l);
    if (!fresh && *it->second != l) out.push_back({*it->second, l, std::move(file)});
  }
  return out;
}

std::string describe(const PackFileCollision& c) {
  return fmt::format("layers '{}' and '{}' both map to the npz file '{}'", c.first, c.second, c.file);
}

void check_pack_file_names(const std::vector<std::string>& layers, const std::string& what) {
  const auto collisions = pack_file_collisions(layers);
  if (collisions.empty()) return;
  fail(ErrorKind::format,
       "{}: {} (the runtime's file name: characters outside [A-Za-z0-9_.-] become '_', then '..' becomes '.'), so "
       "the runtime could load only one of them{}; leave all but one out of the selection (--exclude, --layers or "
       "--scope); nothing was written",
       what, describe(collisions.front()),
       collisions.size() > 1 ? fmt::format(" ({} more such pairs)", collisions.size() - 1) : std::string());
}

std::string python_float_repr(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "Infinity" : "-Infinity";  // what json.dumps writes
  std::string s = fmt::format("{}", v);
  if (s.find_first_of(".en") == std::string::npos) s += ".0";
  return s;
}

std::string pack_meta_json(std::uint64_t in_features, std::uint64_t out_features, const QuantConfig& q) {
  return fmt::format(
      "{{\"in_features\": {}, \"out_features\": {}, \"block_size\": {}, \"block_out_size\": {}, "
      "\"enable_permute\": {}, \"lambda_smooth\": {}}}",
      in_features, out_features, q.block, q.block_out, q.permute ? "true" : "false", python_float_repr(q.lambda_smooth));
}

std::string quantized_shard_name(int i, int n) { return fmt::format("quantized-{:05d}-of-{:05d}.safetensors", i, n); }

}  // namespace duquant

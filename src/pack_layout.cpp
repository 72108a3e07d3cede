#include "duquant/pack_layout.hpp"

#include <fmt/format.h>

#include <cmath>

namespace duquant {

std::string pack_file_name(std::string_view module) {
  std::string s;
  s.reserve(module.size() + 4);
  for (char c : module) {
    const bool keep = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
                      c == '.' || c == '-';
    s += keep ? c : '_';
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

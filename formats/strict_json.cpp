#include "formats/strict_json.hpp"

#include <unordered_set>
#include <vector>

#include <fmt/format.h>

#include "duquant/error.hpp"

namespace duquant::formats {

namespace {

// nlohmann's messages quote the token read so far verbatim: it may hold invalid UTF-8 or run to
// megabytes (an unterminated string). Keep messages printable and short.
std::string printable_reason(const std::string& reason) {
  constexpr std::size_t kMaxChars = 200;
  std::string out;
  for (const char c : reason) {
    if (out.size() >= kMaxChars) return out + "...";
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x7f)
      out += fmt::format("\\x{:02x}", u);
    else
      out += c;
  }
  return out;
}

}  // namespace

nlohmann::json parse_strict_json(std::string_view text, const std::string& what, int max_depth) {
  // nlohmann stops at a NUL byte as if the input ended there, so "{}\0garbage" would parse. A NUL
  // can appear nowhere in JSON text (not even raw inside a string): reject it up front.
  if (const auto nul = text.find('\0'); nul != std::string_view::npos)
    fail(ErrorKind::format, "{}: NUL byte at byte {}; JSON text cannot contain one", what, nul);

  struct OpenObject {
    std::string name;  // the key this object is the value of ("" for the root or an array element)
    std::unordered_set<std::string> keys;
    std::string last_key;
  };
  std::vector<OpenObject> open_objects;
  auto check = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    switch (event) {
      case E::object_start:
      case E::array_start:
        if (depth >= max_depth)
          fail(ErrorKind::format, "{}: JSON nested deeper than {} levels", what, max_depth);
        if (event == E::object_start)
          open_objects.push_back({open_objects.empty() ? std::string() : open_objects.back().last_key, {}, {}});
        break;
      case E::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case E::key:
        if (!open_objects.empty()) {
          OpenObject& object = open_objects.back();
          object.last_key = parsed.get<std::string>();
          if (!object.keys.insert(object.last_key).second) {
            if (object.name.empty())
              fail(ErrorKind::format, "{}: duplicate key '{}'", what, object.last_key);
            fail(ErrorKind::format, "{}: duplicate key '{}' in '{}'", what, object.last_key, object.name);
          }
        }
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), check, /*allow_exceptions=*/true);
  } catch (const nlohmann::json::parse_error& e) {
    std::string reason = e.what();
    if (const auto colon = reason.find(": "); colon != std::string::npos) reason = reason.substr(colon + 2);
    fail(ErrorKind::format, "{}: not valid JSON (byte {}): {}", what, e.byte, printable_reason(reason));
  } catch (const nlohmann::json::exception& e) {
    // out_of_range 406 ("number overflow parsing '1e500'") is thrown as itself, not as a parse_error.
    std::string reason = e.what();
    if (const auto bracket = reason.find("] "); bracket != std::string::npos) reason = reason.substr(bracket + 2);
    fail(ErrorKind::format, "{}: not valid JSON: {}", what, printable_reason(reason));
  }
}

std::string json_kind(const nlohmann::json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_unsigned()) return "an integer";
  if (v.is_number_integer()) return "a negative integer";
  if (v.is_number_float()) return "a non-integer number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

std::string dump_json(const nlohmann::json& value, int indent) {
  return value.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string dump_json(const nlohmann::ordered_json& value, int indent) {
  return value.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string json_safe_text(std::string_view text) {
  if (!invalid_utf8_offset(text)) return std::string(text);
  // nlohmann's own replacement, so that a name read back from a manifest compares equal.
  const std::string dumped = dump_json(nlohmann::json(std::string(text)));
  return nlohmann::json::parse(dumped).get<std::string>();
}

std::optional<std::size_t> invalid_utf8_offset(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte
    if (c < 0x80) n = 1;
    else if (c >= 0xc2 && c <= 0xdf) n = 2;
    else if (c == 0xe0) n = 3, lo = 0xa0;
    else if (c == 0xed) n = 3, hi = 0x9f;
    else if (c >= 0xe1 && c <= 0xef) n = 3;
    else if (c == 0xf0) n = 4, lo = 0x90;
    else if (c == 0xf4) n = 4, hi = 0x8f;
    else if (c >= 0xf1 && c <= 0xf3) n = 4;
    else return i;
    if (i + n > s.size()) return i;
    for (std::size_t k = 1; k < n; ++k) {
      const unsigned char lo_k = k == 1 ? lo : 0x80, hi_k = k == 1 ? hi : 0xbf;
      if (b(i + k) < lo_k || b(i + k) > hi_k) return i;
    }
    i += n;
  }
  return std::nullopt;
}

}  // namespace duquant::formats

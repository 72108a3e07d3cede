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

}  // namespace duquant::formats

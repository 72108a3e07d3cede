#include "formats/strict_json.hpp"

#include <unordered_set>
#include <vector>

#include "duquant/error.hpp"

namespace duquant::formats {

nlohmann::json parse_strict_json(std::string_view text, const std::string& what, int max_depth) {
  std::vector<std::unordered_set<std::string>> open_objects;
  auto check = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    switch (event) {
      case E::object_start:
      case E::array_start:
        if (depth >= max_depth)
          fail(ErrorKind::format, "{}: JSON nested deeper than {} levels", what, max_depth);
        if (event == E::object_start) open_objects.emplace_back();
        break;
      case E::object_end:
        if (!open_objects.empty()) open_objects.pop_back();
        break;
      case E::key:
        if (!open_objects.empty() && !open_objects.back().insert(parsed.get<std::string>()).second)
          fail(ErrorKind::format, "{}: duplicate key '{}'", what, parsed.get<std::string>());
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
    fail(ErrorKind::format, "{}: not valid JSON (byte {}): {}", what, e.byte, reason);
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

// JSON parsing for untrusted files: nlohmann-json, plus the checks it does not make itself.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace duquant::formats {

// Parses `text` as one JSON document. Rejects (duquant::Error, format) invalid JSON or UTF-8, a
// key repeated inside one object (nlohmann would keep the last silently) and nesting deeper than
// `max_depth`. `what` names the document in messages, e.g. "model.safetensors: header".
nlohmann::json parse_strict_json(std::string_view text, const std::string& what, int max_depth);

// Short description of a JSON value's type for messages: "a string", "a negative integer", ...
std::string json_kind(const nlohmann::json& value);

}  // namespace duquant::formats

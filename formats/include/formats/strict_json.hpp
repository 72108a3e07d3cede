// JSON parsing for untrusted files: nlohmann-json, plus the checks it does not make itself.
#pragma once

#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <string_view>

namespace duquant::formats {

// Parses `text` as one JSON document. Rejects (duquant::Error, format) invalid JSON or UTF-8, a
// key repeated inside one object (nlohmann would keep the last silently) and nesting deeper than
// `max_depth`. `what` names the document in messages, e.g. "model.safetensors: header".
nlohmann::json parse_strict_json(std::string_view text, const std::string& what, int max_depth);

// Short description of a JSON value's type for messages: "a string", "a negative integer", ...
std::string json_kind(const nlohmann::json& value);

// Every JSON text duquant writes goes through these (nlohmann's dump() throws type_error 316 on a
// string that is not valid UTF-8, e.g. a file name): invalid bytes are written as U+FFFD, exactly as
// json_safe_text() replaces them, so they never throw. `indent` as in nlohmann (-1: one line).
std::string dump_json(const nlohmann::json& value, int indent = -1);
std::string dump_json(const nlohmann::ordered_json& value, int indent = -1);

// `text` as dump_json() records it: each invalid UTF-8 sequence replaced by U+FFFD. A text read
// back from such a JSON file compares equal to json_safe_text() of the original bytes.
std::string json_safe_text(std::string_view text);

// nlohmann::ordered_json keeps an object's keys in a vector and finds a key by a linear scan, so
// `object[key] = value` over n keys costs O(n^2) (a report of 100,000 layers: minutes). These build
// such objects at O(1) per key.
//
// Appends `key` to `object` (made an object if null) without looking for it: the caller knows the
// keys it appends are distinct.
void append_new_key(nlohmann::ordered_json& object, std::string key, nlohmann::ordered_json value);
// `value` as an ordered_json with the same keys in the same (nlohmann::json's, sorted) order,
// exactly what ordered_json::parse(dump_json(value)) gives, without its per-key scans.
nlohmann::ordered_json to_ordered_json(const nlohmann::json& value);

// The byte offset of the first byte of `text` that does not start a well-formed UTF-8 sequence
// (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF); nullopt when all is valid.
std::optional<std::size_t> invalid_utf8_offset(std::string_view text);

}  // namespace duquant::formats

#include "formats/strict_json.hpp"

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

// A SAX handler that builds the same value as nlohmann::json::parse, checking each event first:
// the nesting depth when a container opens, duplicate keys as each key arrives (a lookup in the
// object being built, O(log n)). Not nlohmann's callback parser: after every closed object or
// array it rescans the parent container for discarded values, which is quadratic in the number of
// siblings (a safetensors header or an index of 100,000 tensors).
class StrictHandler {
 public:
  StrictHandler(nlohmann::json& result, const std::string& what, int max_depth)
      : root_(result), what_(what), max_depth_(max_depth) {}

  bool null() { return put(nullptr); }
  bool boolean(bool v) { return put(v); }
  bool number_integer(nlohmann::json::number_integer_t v) { return put(v); }
  bool number_unsigned(nlohmann::json::number_unsigned_t v) { return put(v); }
  bool number_float(nlohmann::json::number_float_t v, const nlohmann::json::string_t& /*text*/) { return put(v); }
  bool string(nlohmann::json::string_t& v) { return put(v); }
  bool binary(nlohmann::json::binary_t& v) {  // never called for JSON text
    nlohmann::json b = nlohmann::json::binary({});
    b.get_binary() = v;
    return put(std::move(b));
  }
  bool start_object(std::size_t /*elements*/) {
    check_depth();
    // The key this object is the value of: the last key of the nearest enclosing object ("" for
    // the root or an element of a top-level array).
    const std::string* name = keys_.empty() ? nullptr : keys_.back();
    stack_.push_back(put_value(nlohmann::json::value_t::object));
    keys_.push_back(nullptr);
    names_.push_back(name);
    return true;
  }
  bool key(nlohmann::json::string_t& k) {
    auto& object = stack_.back()->get_ref<nlohmann::json::object_t&>();
    const auto [it, fresh] = object.try_emplace(k);
    if (!fresh) {
      const std::string* name = names_.back();
      if (name == nullptr || name->empty()) fail(ErrorKind::format, "{}: duplicate key '{}'", what_, k);
      fail(ErrorKind::format, "{}: duplicate key '{}' in '{}'", what_, k, *name);
    }
    element_ = &it->second;
    keys_.back() = &it->first;
    return true;
  }
  bool end_object() {
    stack_.pop_back();
    keys_.pop_back();
    names_.pop_back();
    return true;
  }
  bool start_array(std::size_t /*elements*/) {
    check_depth();
    stack_.push_back(put_value(nlohmann::json::value_t::array));
    return true;
  }
  bool end_array() {
    stack_.pop_back();
    return true;
  }
  template <class Exception>
  bool parse_error(std::size_t /*position*/, const std::string& /*last_token*/, const Exception& ex) {
    throw ex;  // NOLINT(hicpp-exception-baseclass): nlohmann's own exception, as nlohmann::json::parse throws it
  }

 private:
  // The depth is the number of containers open around the new one, as the callback parser
  // counted it: the root object or array is at depth 0.
  void check_depth() const {
    if (static_cast<std::ptrdiff_t>(stack_.size()) >= max_depth_)
      fail(ErrorKind::format, "{}: JSON nested deeper than {} levels", what_, max_depth_);
  }
  template <class V>
  nlohmann::json* put_value(V&& v) {
    if (stack_.empty()) {
      root_ = nlohmann::json(std::forward<V>(v));
      return &root_;
    }
    if (stack_.back()->is_array()) {
      auto& array = stack_.back()->get_ref<nlohmann::json::array_t&>();
      array.emplace_back(std::forward<V>(v));
      return &array.back();
    }
    *element_ = nlohmann::json(std::forward<V>(v));
    return element_;
  }
  template <class V>
  bool put(V&& v) {
    put_value(std::forward<V>(v));
    return true;
  }

  nlohmann::json& root_;
  const std::string& what_;
  const int max_depth_;
  std::vector<nlohmann::json*> stack_;     // the open objects and arrays, innermost last
  nlohmann::json* element_ = nullptr;      // where the value of the last key goes
  std::vector<const std::string*> keys_;   // per open object: its last key (a key of the map: stable)
  std::vector<const std::string*> names_;  // per open object: the key it is the value of
};

}  // namespace

nlohmann::json parse_strict_json(std::string_view text, const std::string& what, int max_depth) {
  // nlohmann stops at a NUL byte as if the input ended there, so "{}\0garbage" would parse. A NUL
  // can appear nowhere in JSON text (not even raw inside a string): reject it up front.
  if (const auto nul = text.find('\0'); nul != std::string_view::npos)
    fail(ErrorKind::format, "{}: NUL byte at byte {}; JSON text cannot contain one", what, nul);

  try {
    nlohmann::json result;
    StrictHandler handler(result, what, max_depth);
    nlohmann::json::sax_parse(text.begin(), text.end(), &handler, nlohmann::json::input_format_t::json,
                              /*strict=*/true);
    return result;
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

void append_new_key(nlohmann::ordered_json& object, std::string key, nlohmann::ordered_json value) {
  if (object.is_null()) object = nlohmann::ordered_json::object();
  // ordered_map is a std::vector of pairs: its emplace_back, not ordered_map::emplace (which scans).
  object.get_ref<nlohmann::ordered_json::object_t&>().emplace_back(std::move(key), std::move(value));
}

nlohmann::ordered_json to_ordered_json(const nlohmann::json& value) {
  switch (value.type()) {
    case nlohmann::json::value_t::object: {
      nlohmann::ordered_json out = nlohmann::ordered_json::object();
      auto& object = out.get_ref<nlohmann::ordered_json::object_t&>();
      object.reserve(value.size());
      for (const auto& [k, v] : value.items()) object.emplace_back(k, to_ordered_json(v));
      return out;
    }
    case nlohmann::json::value_t::array: {
      nlohmann::ordered_json out = nlohmann::ordered_json::array();
      auto& array = out.get_ref<nlohmann::ordered_json::array_t&>();
      array.reserve(value.size());
      for (const auto& v : value) array.push_back(to_ordered_json(v));
      return out;
    }
    case nlohmann::json::value_t::string: return value.get_ref<const std::string&>();
    case nlohmann::json::value_t::boolean: return value.get<bool>();
    case nlohmann::json::value_t::number_integer: return value.get<nlohmann::json::number_integer_t>();
    case nlohmann::json::value_t::number_unsigned: return value.get<nlohmann::json::number_unsigned_t>();
    case nlohmann::json::value_t::number_float: return value.get<nlohmann::json::number_float_t>();
    case nlohmann::json::value_t::binary: {  // never in JSON text
      nlohmann::ordered_json b = nlohmann::ordered_json::binary({});
      b.get_binary() = value.get_binary();
      return b;
    }
    case nlohmann::json::value_t::null:
    case nlohmann::json::value_t::discarded: break;
  }
  return nullptr;
}

std::optional<std::size_t> invalid_utf8_offset(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
    const unsigned char c = b(i);
    std::size_t n = 0;
    unsigned char lo = 0x80, hi = 0xbf;  // the range of the second byte
    if (c < 0x80)
      n = 1;
    else if (c >= 0xc2 && c <= 0xdf)
      n = 2;
    else if (c == 0xe0)
      n = 3, lo = 0xa0;
    else if (c == 0xed)
      n = 3, hi = 0x9f;
    else if (c >= 0xe1 && c <= 0xef)
      n = 3;
    else if (c == 0xf0)
      n = 4, lo = 0x90;
    else if (c == 0xf4)
      n = 4, hi = 0x8f;
    else if (c >= 0xf1 && c <= 0xf3)
      n = 4;
    else
      return i;
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

#define PCRE2_CODE_UNIT_WIDTH 8
#include "base/regex.hpp"

#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <string>
#include <vector>

#include "duquant/error.hpp"

namespace duquant {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  ~Impl() { pcre2_code_free(code); }
};

namespace {

// What Python's ASCII flag (`(?a)`, re.ASCII) makes of \w \W \d \D \s \S \b \B: outside a set, and
// inside one (where only the positive classes and explicit ranges can be written).
constexpr std::string_view kAsciiWord = "A-Za-z0-9_";
std::string_view ascii_escape(char c, bool in_class) {
  if (in_class) {
    switch (c) {
      case 'w': return kAsciiWord;
      case 'W': return "\\x00-\\x2f\\x3a-\\x40\\x5b-\\x5e\\x60\\x7b-\\x{10ffff}";
      case 'd': return "0-9";
      case 'D': return "\\x00-\\x2f\\x3a-\\x{10ffff}";
      case 's': return "\\t\\n\\x0b\\f\\r\\x20";
      case 'S': return "\\x00-\\x08\\x0e-\\x1f\\x21-\\x{10ffff}";
      default: return {};
    }
  }
  switch (c) {
    case 'w': return "[A-Za-z0-9_]";
    case 'W': return "[^A-Za-z0-9_]";
    case 'd': return "[0-9]";
    case 'D': return "[^0-9]";
    case 's': return "[\\t\\n\\x0b\\f\\r\\x20]";
    case 'S': return "[^\\t\\n\\x0b\\f\\r\\x20]";
    case 'b': return "(?:(?<=[A-Za-z0-9_])(?![A-Za-z0-9_])|(?<![A-Za-z0-9_])(?=[A-Za-z0-9_]))";
    case 'B': return "(?:(?<=[A-Za-z0-9_])(?=[A-Za-z0-9_])|(?<![A-Za-z0-9_])(?![A-Za-z0-9_]))";
    default: return {};
  }
}

struct Translation {
  std::string pcre2;
  bool global_ascii = false;  // a global (?a) was met
  std::string problem;        // a flag combination Python refuses, empty when none
};

// Translates a Python pattern to PCRE2. `origin`, when given, receives for every byte of the
// result the offset of the Python byte it came from (plus one entry for the end), so that a
// PCRE2 error offset can be reported in the user's pattern. `ascii` starts the pattern under
// Python's ASCII flag (a global `(?a)` applies to the whole pattern, wherever Python finds it).
//
// Inline flags: Python's `u` (Unicode, the default of str patterns) is dropped, and its `a`
// (ASCII) is dropped too and applied by spelling \w \W \d \D \s \S \b \B in ASCII; the other
// letters (i m s x, and `-imsx`) are PCRE2's own. `(?a:...)` / `(?u:...)` apply to their group.
Translation translate(std::string_view p, std::vector<std::size_t>* origin, bool ascii) {
  Translation t;
  std::string& out = t.pcre2;
  out.reserve(p.size() + 4);
  auto emit = [&](std::string_view text, std::size_t from) {
    out += text;
    if (origin) origin->insert(origin->end(), text.size(), from);
  };
  std::vector<bool> outer;  // the ASCII state outside every open group (restored at its ')')
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {  // escaped character: copy both
      // Python's \Z is the very end of the string: PCRE2's \z (PCRE2's \Z also matches before a
      // final newline).
      const std::string_view as_ascii = ascii ? ascii_escape(p[i + 1], in_class) : std::string_view{};
      if (!in_class && p[i + 1] == 'Z') {
        emit("\\z", i);
      } else if (!as_ascii.empty()) {
        emit(as_ascii, i);
      } else {
        emit(p.substr(i, 2), i);
      }
      ++i;
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      // Python reads '[' inside a set as a literal; PCRE2 would start a POSIX class "[:alpha:]".
      emit(c == '[' ? std::string_view("\\[") : p.substr(i, 1), i);
      continue;
    }
    if (c == '[') {
      in_class = true;
      emit(p.substr(i, 1), i);
      if (i + 1 < p.size() && p[i + 1] == '^') ++i, emit(p.substr(i, 1), i);
      if (i + 1 < p.size() && p[i + 1] == ']') ++i, emit(p.substr(i, 1), i);  // "[]...]", "[^]...]": literal ]
      continue;
    }
    if (c == '(' && p.substr(i, 3) == "(?#") {  // a comment: copied to its ')', no group
      const std::size_t close = p.find(')', i);
      const std::size_t n = close == std::string_view::npos ? p.size() - i : close + 1 - i;
      emit(p.substr(i, n), i);
      i += n - 1;
      continue;
    }
    if (c == '(') {
      outer.push_back(ascii);
      // Inline flags: "(?" letters of aiLmsux, optionally "-" and letters of imsx, then ")" or ":".
      std::size_t j = i + 2;
      std::string on, off;
      bool minus = false;
      if (i + 1 < p.size() && p[i + 1] == '?') {
        for (; j < p.size(); ++j) {
          const char f = p[j];
          if (f == '-' && !minus) {
            minus = true;
          } else if (!minus && std::string_view("aiLmsux").find(f) != std::string_view::npos) {
            on += f;
          } else if (minus && std::string_view("imsx").find(f) != std::string_view::npos) {
            off += f;
          } else {
            break;
          }
        }
      }
      const bool flags = (!on.empty() || minus) && j < p.size() && (p[j] == ')' || p[j] == ':');
      if (!flags) {
        emit(p.substr(i, 1), i);
        continue;
      }
      const bool a = on.find('a') != std::string::npos, u = on.find('u') != std::string::npos;
      if (a && u && t.problem.empty()) t.problem = "the flags 'a' and 'u' are incompatible";
      std::string kept;
      for (char f : on)
        if (f != 'a' && f != 'u') kept += f;
      const bool scoped = p[j] == ':';
      if (scoped) {
        if (a) ascii = true;
        if (u) ascii = false;
        emit("(?" + kept + (minus ? "-" + off : std::string()) + ":", i);
      } else {
        outer.pop_back();  // a global flag group opens no group
        if (a) ascii = true, t.global_ascii = true;
        if (!kept.empty() || minus) emit("(?" + kept + (minus ? "-" + off : std::string()) + ")", i);
      }
      i = j;
      continue;
    }
    if (c == ')' && !outer.empty()) {
      ascii = outer.back();
      outer.pop_back();
    }
    if (c == '{' && i + 1 < p.size() && p[i + 1] == ',') {  // "{,n}" -> "{0,n}", "{,}" -> "{0,}"
      std::size_t j = i + 2;
      while (j < p.size() && std::isdigit(static_cast<unsigned char>(p[j]))) ++j;
      if (j < p.size() && p[j] == '}') {
        emit("{0", i);
        continue;  // the ',' and digits follow unchanged
      }
    }
    emit(p.substr(i, 1), i);
  }
  if (origin) origin->push_back(p.size());
  return t;
}

// A global (?a) anywhere applies to the whole pattern: translated again from the start.
Translation translate(std::string_view p, std::vector<std::size_t>* origin) {
  Translation t = translate(p, origin, false);
  if (t.global_ascii) {
    if (origin) origin->clear();
    t = translate(p, origin, true);
  }
  return t;
}

}  // namespace

std::string python_to_pcre2(std::string_view p) { return translate(p, nullptr).pcre2; }

Regex::Regex(std::string pattern, const std::string& source) : pattern_(std::move(pattern)), impl_(new Impl) {
  std::vector<std::size_t> origin;
  const Translation t = translate(pattern_, &origin);
  DQ_CHECK(t.problem.empty(), usage, "{}: invalid regular expression '{}': {}", source, pattern_, t.problem);
  const std::string& translated = t.pcre2;
  int code = 0;
  PCRE2_SIZE offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(), PCRE2_UTF | PCRE2_UCP,
                              &code, &offset, nullptr);
  if (impl_->code == nullptr) {
    PCRE2_UCHAR buffer[256];
    pcre2_get_error_message(code, buffer, sizeof buffer);
    fail(ErrorKind::usage, "{}: invalid regular expression '{}' at offset {}: {}", source, pattern_,
         origin[std::min<std::size_t>(offset, origin.size() - 1)], reinterpret_cast<const char*>(buffer));
  }
  pcre2_jit_compile(impl_->code, PCRE2_JIT_COMPLETE);  // optional speed-up; falls back to the interpreter
}

Regex::~Regex() = default;
Regex::Regex(Regex&&) noexcept = default;
Regex& Regex::operator=(Regex&&) noexcept = default;

bool Regex::search(std::string_view text) const {
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(impl_->code, nullptr);
  DQ_CHECK(md != nullptr, internal, "out of memory matching '{}'", pattern_);
  const int rc = pcre2_match(impl_->code, reinterpret_cast<PCRE2_SPTR>(text.data()), text.size(), 0, 0, md, nullptr);
  pcre2_match_data_free(md);
  if (rc >= 0) return true;
  if (rc == PCRE2_ERROR_NOMATCH) return false;
  PCRE2_UCHAR buffer[256];
  pcre2_get_error_message(rc, buffer, sizeof buffer);
  fail(ErrorKind::usage, "regular expression '{}' failed on '{}': {}", pattern_, text,
       reinterpret_cast<const char*>(buffer));
}

}  // namespace duquant

#define PCRE2_CODE_UNIT_WIDTH 8
#include "duquant/regex.hpp"

#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <vector>

#include "duquant/error.hpp"

namespace duquant {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  ~Impl() { pcre2_code_free(code); }
};

namespace {

// Translates a Python pattern to PCRE2. `origin`, when given, receives for every byte of the
// result the offset of the Python byte it came from (plus one entry for the end), so that a
// PCRE2 error offset can be reported in the user's pattern.
std::string translate(std::string_view p, std::vector<std::size_t>* origin) {
  std::string out;
  out.reserve(p.size() + 4);
  auto emit = [&](std::string_view text, std::size_t from) {
    out += text;
    if (origin) origin->insert(origin->end(), text.size(), from);
  };
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {  // escaped character: copy both
      // Python's \Z is the very end of the string: PCRE2's \z (PCRE2's \Z also matches before a
      // final newline).
      if (!in_class && p[i + 1] == 'Z') {
        emit("\\z", i);
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
  return out;
}

}  // namespace

std::string python_to_pcre2(std::string_view p) { return translate(p, nullptr); }

Regex::Regex(std::string pattern, const std::string& source) : pattern_(std::move(pattern)), impl_(new Impl) {
  std::vector<std::size_t> origin;
  const std::string translated = translate(pattern_, &origin);
  int code = 0;
  PCRE2_SIZE offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP, &code, &offset, nullptr);
  if (impl_->code == nullptr) {
    PCRE2_UCHAR buffer[256];
    pcre2_get_error_message(code, buffer, sizeof buffer);
    fail(ErrorKind::usage, "{}: invalid regular expression '{}' at offset {}: {}", source, pattern_,
         origin[std::min<std::size_t>(offset, origin.size() - 1)],
         reinterpret_cast<const char*>(buffer));
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

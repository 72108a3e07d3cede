#define PCRE2_CODE_UNIT_WIDTH 8
#include "duquant/regex.hpp"

#include <pcre2.h>

#include <cctype>

#include "duquant/error.hpp"

namespace duquant {

struct Regex::Impl {
  pcre2_code* code = nullptr;
  ~Impl() { pcre2_code_free(code); }
};

std::string python_to_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 4);
  bool in_class = false;
  for (std::size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {  // escaped character: copy both
      out += c;
      out += p[++i];
      continue;
    }
    if (in_class) {
      if (c == ']') in_class = false;
      out += c;
      continue;
    }
    if (c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];  // "[]...]" and "[^]...]": literal ]
      continue;
    }
    if (c == '{' && i + 1 < p.size() && p[i + 1] == ',') {  // "{,n}" -> "{0,n}" when n are digits
      std::size_t j = i + 2;
      while (j < p.size() && std::isdigit(static_cast<unsigned char>(p[j]))) ++j;
      if (j > i + 2 && j < p.size() && p[j] == '}') {
        out += "{0";
        continue;  // the ',' and digits follow unchanged
      }
    }
    out += c;
  }
  return out;
}

Regex::Regex(std::string pattern, const std::string& source) : pattern_(std::move(pattern)), impl_(new Impl) {
  const std::string translated = python_to_pcre2(pattern_);
  int code = 0;
  PCRE2_SIZE offset = 0;
  impl_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                              PCRE2_UTF | PCRE2_UCP, &code, &offset, nullptr);
  if (impl_->code == nullptr) {
    PCRE2_UCHAR buffer[256];
    pcre2_get_error_message(code, buffer, sizeof buffer);
    fail(ErrorKind::usage, "{}: invalid regular expression '{}' at offset {}: {}", source, pattern_, offset,
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

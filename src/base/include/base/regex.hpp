// Regular expressions with the semantics of Python's `re.search`, through PCRE2.
//
// The runtime selects layers with Python `re`; PCRE2 accepts the same syntax for everything that
// appears in layer patterns (groups, (?:...), (?P<name>...), lookarounds, classes, \d \w \b, ^ $).
// Python-only spellings are rewritten before compiling: `{,n}` and `{,}` (meaning {0,n}, {0,}),
// `\Z` (end of string: PCRE2's `\z`) and a `[` inside a set (a literal in Python, a POSIX class
// opener in PCRE2); Python's inline flags `(?u)` (dropped: the default) and `(?a)` (dropped, and
// \w \W \d \D \s \S \b \B spelt in ASCII for the pattern or the group). Patterns are compiled with UTF and Unicode
// properties on, as Python compiles str patterns. See docs/selection.md.
#pragma once

#include <memory>
#include <string>
#include <string_view>

namespace duquant {

class Regex {
 public:
  // Compiles `pattern`; a bad pattern throws duquant::Error (usage) naming `source` (the flag or
  // variable it came from), the position and PCRE2's reason.
  Regex(std::string pattern, const std::string& source);
  ~Regex();
  Regex(Regex&&) noexcept;
  Regex& operator=(Regex&&) noexcept;

  // True when the pattern matches anywhere in `text` (Python re.search).
  bool search(std::string_view text) const;
  const std::string& pattern() const noexcept { return pattern_; }

 private:
  struct Impl;
  std::string pattern_;
  std::unique_ptr<Impl> impl_;
};

// The pattern in PCRE2 spelling (see above); everything else unchanged. Escapes and set contents
// are never rewritten as quantifiers.
std::string python_to_pcre2(std::string_view pattern);

}  // namespace duquant

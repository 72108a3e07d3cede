// Regex: Python re.search semantics through PCRE2 -- unanchored search, the runtime's default
// include/exclude on names that must and must not match, Python-only syntax ((?P<name>..),
// {,n}, \Z, '[' inside a set), lookarounds, and errors naming the source and the offset.
#include <gtest/gtest.h>

#include <string>

#include "base/regex.hpp"
#include "config/quant_config.hpp"
#include "duquant/error.hpp"

namespace duquant {
namespace {

bool search(const std::string& pattern, const std::string& text) { return Regex(pattern, "test").search(text); }

TEST(Regex, SearchIsUnanchored) {
  EXPECT_TRUE(search("q_proj", "model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(search("layers", "model.layers.0.self_attn.q_proj"));
  EXPECT_FALSE(search("^layers", "model.layers.0"));
  EXPECT_TRUE(search("^model", "model.layers.0"));
  EXPECT_TRUE(search("0$", "model.layers.0"));
  EXPECT_FALSE(search("^layers$", "model.layers"));
  EXPECT_TRUE(search("", "anything"));  // an empty pattern matches everywhere, as in Python
}

TEST(Regex, DefaultIncludeMatchesProjections) {
  const Regex include(std::string(kDefaultInclude), "default include");
  for (const char* name : {"paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj",
                           "paligemma_with_expert.gemma_expert.model.layers.17.self_attn.k_proj", "x.v_proj",
                           "x.o_proj", "vision_model.encoder.layers.3.self_attn.out_proj", "encoder.layers.0.mlp.fc1",
                           "encoder.layers.0.mlp.fc2", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
                           "action_out_proj",          // contains out_proj
                           "q_proj_extra.something"})  // .* on both sides: anywhere in the name
    EXPECT_TRUE(include.search(name)) << name;
}

TEST(Regex, DefaultIncludeSkipsOtherLinears) {
  const Regex include(std::string(kDefaultInclude), "default include");
  for (const char* name :
       {"paligemma_with_expert.gemma_expert.model.layers.0.input_layernorm.dense",
        "paligemma_with_expert.gemma_expert.model.layers.0.post_attention_layernorm.dense", "action_in_proj",
        "time_mlp_in", "time_mlp_out", "paligemma_with_expert.paligemma.model.multi_modal_projector.linear", "lm_head",
        "qproj", "fc3"})
    EXPECT_FALSE(include.search(name)) << name;
}

TEST(Regex, DefaultExcludeMatchesWholeComponents) {
  const Regex exclude(std::string(kDefaultExclude), "default exclude");
  for (const char* name : {"model.norm", "norm", "model.norm.weight", "ln", "a.ln.b", "layernorm", "x.layernorm", "emb",
                           "model.emb.q_proj"})
    EXPECT_TRUE(exclude.search(name)) << name;
  for (const char* name : {"model.layers.0.input_layernorm.dense", "model.layers.0.post_attention_layernorm",
                           "model.norm_x", "model.xnorm", "embed_tokens", "model.embeddings.q_proj", "model.lnx.q_proj",
                           "model.layer_norm1", "model.layers.0.self_attn.q_proj"})
    EXPECT_FALSE(exclude.search(name)) << name;
}

TEST(Regex, PythonNamedGroupsAndBackreferences) {
  EXPECT_TRUE(search("(?P<kind>q|k)_proj", "self_attn.k_proj"));
  EXPECT_FALSE(search("(?P<kind>q|k)_proj", "self_attn.v_proj"));
  EXPECT_TRUE(search("(?P<n>\\d+)\\.x\\.(?P=n)", "layers.12.x.12"));
  EXPECT_FALSE(search("(?P<n>\\d+)\\.x\\.(?P=n)$", "layers.12.x.13"));
}

TEST(Regex, ComponentBoundaryGroup) {
  const std::string p = "(?:^|\\.)mlp(?:\\.|$)";
  EXPECT_TRUE(search(p, "mlp.fc1"));
  EXPECT_TRUE(search(p, "layers.0.mlp"));
  EXPECT_TRUE(search(p, "layers.0.mlp.fc1"));
  EXPECT_FALSE(search(p, "layers.0.time_mlp_in"));
  EXPECT_FALSE(search(p, "layers.0.mlpx.fc1"));
}

TEST(Regex, Lookarounds) {
  EXPECT_TRUE(search("(?<=self_attn\\.)q_proj", "layers.0.self_attn.q_proj"));
  EXPECT_FALSE(search("(?<=self_attn\\.)q_proj", "layers.0.cross_attn.q_proj"));
  EXPECT_TRUE(search("(?<!action_)out_proj", "encoder.self_attn.out_proj"));
  EXPECT_FALSE(search("(?<!action_)out_proj", "action_out_proj"));
  EXPECT_TRUE(search("^(?!.*vision).*q_proj", "language_model.layers.0.self_attn.q_proj"));
  EXPECT_FALSE(search("^(?!.*vision).*q_proj", "vision_model.layers.0.self_attn.q_proj"));
  EXPECT_TRUE(search("layers\\.(?=1\\d)", "layers.12.mlp"));
  EXPECT_FALSE(search("layers\\.(?=1\\d)", "layers.2.mlp"));
}

TEST(Regex, PythonEmptyLowerBoundIsRewritten) {
  EXPECT_EQ(python_to_pcre2("a{,3}"), "a{0,3}");
  EXPECT_EQ(python_to_pcre2("a{,}"), "a{0,}");
  EXPECT_EQ(python_to_pcre2("a{2,3}b{,10}"), "a{2,3}b{0,10}");
  // Not a quantifier: inside a set, after a backslash, or not closed.
  EXPECT_EQ(python_to_pcre2("[{,3}]"), "[{,3}]");
  EXPECT_EQ(python_to_pcre2("[^]{,3}]"), "[^]{,3}]");
  EXPECT_EQ(python_to_pcre2("a\\{,3}"), "a\\{,3}");
  EXPECT_EQ(python_to_pcre2("x{,3"), "x{,3");
  EXPECT_EQ(python_to_pcre2("x{ ,3}"), "x{ ,3}");
  // After the set closes, rewriting resumes.
  EXPECT_EQ(python_to_pcre2("[a]{,2}"), "[a]{0,2}");

  EXPECT_TRUE(search("^layers\\.\\d{,2}$", "layers.17"));
  EXPECT_FALSE(search("^layers\\.\\d{,2}$", "layers.170"));
  EXPECT_TRUE(search("^a{,}$", "aaaa"));
  EXPECT_TRUE(search("^[{,3}]+$", "{,3}"));
  EXPECT_TRUE(search("^a\\{,3}$", "a{,3}"));
  EXPECT_TRUE(search("^x{,3$", "x{,3"));
}

TEST(Regex, PythonSpellingsThatPcre2ReadsDifferently) {
  // \Z is the very end in Python (PCRE2's \z); $ also matches before a final newline in both.
  EXPECT_EQ(python_to_pcre2("a\\Z"), "a\\z");
  EXPECT_FALSE(search("a\\Z", "a\n"));
  EXPECT_TRUE(search("a\\Z", "ba"));
  EXPECT_TRUE(search("a$", "a\n"));
  // '[' inside a set is a literal in Python, not a POSIX class.
  EXPECT_EQ(python_to_pcre2("[[:a]"), "[\\[:a]");
  EXPECT_TRUE(search("^[[:alpha:]]$", "[]"));
  EXPECT_FALSE(search("^[[:alpha:]]$", "a"));
}

TEST(Regex, UnicodeClassesAsInPython) {
  EXPECT_TRUE(search("^\\w+$", "caf\xC3\xA9"));  // é is a word character for a str pattern
  EXPECT_TRUE(search("^\\d$", "\xD9\xA3"));      // ARABIC-INDIC DIGIT THREE
  EXPECT_TRUE(search("^.$", "\xC3\xA9"));        // one code point, not one byte
}

// The error names the source, the pattern and the offset in the user's (untranslated) pattern.
void expect_error(const std::string& pattern, const std::string& offset_text) {
  try {
    Regex r(pattern, "OPENPI_DUQUANT_INCLUDE");
    FAIL() << "no error for " << pattern;
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    const std::string what = e.what();
    EXPECT_NE(what.find("OPENPI_DUQUANT_INCLUDE"), std::string::npos) << what;
    EXPECT_NE(what.find("'" + pattern + "'"), std::string::npos) << what;
    EXPECT_NE(what.find("at offset " + offset_text + ":"), std::string::npos) << what;
  }
}

TEST(Regex, InvalidPatternsNameSourceAndOffset) {
  expect_error("(q_proj", "7");
  expect_error("q_proj)", "6");
  expect_error("[abc", "4");
  expect_error("*x", "0");
  // Two rewrites ({,2} -> {0,2}) before the error must not shift the offset reported.
  expect_error("a{,2}b{,2}(", "11");
  expect_error("(?P<1bad>x)", "4");
}

}  // namespace
}  // namespace duquant

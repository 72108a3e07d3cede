// The naming contract (checkpoint_names.hpp): which layout a checkpoint's names show, the root
// prefix found or given, the renamed view of the checkpoint (and what it sets aside), what counts
// as a linear layer (embedding tables without "embed", --not-linear), and the GR00T port's
// action-head rule. Names come from the real models (reference: gr00t-n15-and-checkpoint-layouts.md).
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "duquant/error.hpp"
#include "select/checkpoint_names.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"
#include "selection/tiny_safetensors.hpp"

namespace duquant {
namespace {

using test::add_linear;
using test::TinyTensor;

constexpr const char* kPiExpert = "paligemma_with_expert.gemma_expert.model.layers.0.";
constexpr const char* kGr00tLm = "backbone.eagle_model.language_model.model.layers.0.";
constexpr const char* kGr00tDit = "action_head.model.transformer_blocks.0.";

class Naming : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() / "duquant-tests" /
           fmt::format("Naming-{}-{}", static_cast<long>(::getpid()),
                       ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path write(const std::vector<TinyTensor>& tensors) {
    const auto path = dir_ / fmt::format("ckpt{}.safetensors", files_++);
    test::write_tiny_safetensors(path, tensors);
    return path;
  }

  // A pi0.5 in miniature: one expert layer, the top-level linears, a norm.
  static std::vector<TinyTensor> pi05(const std::string& prefix) {
    std::vector<TinyTensor> t;
    add_linear(t, prefix + kPiExpert + "self_attn.q_proj", 8, 4);
    add_linear(t, prefix + kPiExpert + "mlp.down_proj", 4, 8);
    add_linear(t, prefix + kPiExpert + "input_layernorm.dense", 12, 4, true);
    t.push_back({prefix + "paligemma_with_expert.gemma_expert.model.norm.weight", {4}});
    add_linear(t, prefix + "action_in_proj", 4, 2, true);
    add_linear(t, prefix + "action_out_proj", 2, 4, true);
    add_linear(t, prefix + "time_mlp_in", 4, 4, true);
    return t;
  }

  // GR00T N1.5 in miniature: a language model layer, a DiT block, what looks linear but is not.
  static std::vector<TinyTensor> gr00t(const std::string& prefix) {
    std::vector<TinyTensor> t;
    t.push_back({prefix + "backbone.eagle_model.language_model.model.embed_tokens.weight", {16, 8}});
    add_linear(t, prefix + kGr00tLm + "self_attn.q_proj", 8, 8);
    add_linear(t, prefix + kGr00tLm + "mlp.down_proj", 8, 16);
    add_linear(t, prefix + kGr00tDit + "attn1.to_q", 6, 6, true);
    add_linear(t, prefix + kGr00tDit + "ff.net.0.proj", 24, 6, true);
    add_linear(t, prefix + kGr00tDit + "ff.net.2", 6, 24, true);
    add_linear(t, prefix + "action_head.vl_self_attention.transformer_blocks.0.attn1.to_q", 8, 8, true);
    t.push_back({prefix + "action_head.state_encoder.layer1.W", {2, 4, 6}});
    t.push_back({prefix + "action_head.state_encoder.layer1.b", {2, 6}});
    t.push_back({prefix + "action_head.future_tokens.weight", {4, 6}});
    t.push_back({prefix + "action_head.position_embedding.weight", {8, 6}});
    return t;
  }

  std::filesystem::path dir_;
  int files_ = 0;
};

std::vector<std::string> linear_names(const formats::Checkpoint& ckpt,
                                      const std::vector<std::string>& not_linear = {}) {
  std::vector<std::string> names;
  for (const LinearLayer& l : find_linear_layers(ckpt, not_linear)) names.push_back(l.name);
  return names;
}

TEST_F(Naming, GuessesTheModelAndItsPrefix) {
  const auto plain = formats::Checkpoint::open(write(pi05("")));
  LayoutGuess g = guess_layout(plain);
  EXPECT_EQ(g.model, "pi0.5");
  EXPECT_EQ(g.prefix, std::optional<std::string>(""));
  EXPECT_EQ(g.layout, "OpenPI");

  g = guess_layout(formats::Checkpoint::open(write(pi05("model."))));
  EXPECT_EQ(g.model, "pi0.5");
  EXPECT_EQ(g.prefix, std::optional<std::string>("model."));
  EXPECT_EQ(g.layout, "LeRobot");

  g = guess_layout(formats::Checkpoint::open(write(gr00t(""))));
  EXPECT_EQ(g.model, "GR00T N1.5");
  EXPECT_EQ(g.prefix, std::optional<std::string>(""));
  EXPECT_EQ(g.layout, "NVIDIA");

  g = guess_layout(formats::Checkpoint::open(write(gr00t("_groot_model."))));
  EXPECT_EQ(g.prefix, std::optional<std::string>("_groot_model."));
  EXPECT_EQ(g.layout, "LeRobot");

  g = guess_layout(formats::Checkpoint::open(write(gr00t("policy.inner."))));
  EXPECT_EQ(g.prefix, std::optional<std::string>("policy.inner."));
  EXPECT_EQ(g.layout, "prefixed");

  std::vector<TinyTensor> pi0;  // pi0: state_proj and the action-time MLP instead of the time MLP
  add_linear(pi0, std::string(kPiExpert) + "self_attn.q_proj", 8, 4);
  add_linear(pi0, "state_proj", 4, 2, true);
  add_linear(pi0, "action_time_mlp_in", 4, 8, true);
  EXPECT_EQ(guess_layout(formats::Checkpoint::open(write(pi0))).model, "pi0");

  std::vector<TinyTensor> other;
  add_linear(other, "encoder.layers.0.fc1", 4, 4);
  g = guess_layout(formats::Checkpoint::open(write(other)));
  EXPECT_EQ(g.model, "");
  EXPECT_FALSE(g.prefix);
}

TEST_F(Naming, AmbiguousLayoutsAreNotGuessed) {
  // Two copies of the model under two prefixes.
  std::vector<TinyTensor> two = pi05("model.");
  const auto more = pi05("ema.");
  two.insert(two.end(), more.begin(), more.end());
  LayoutGuess g = guess_layout(formats::Checkpoint::open(write(two)));
  EXPECT_FALSE(g.prefix);
  EXPECT_EQ(g.prefixes, (std::vector<std::string>{"ema.", "model."}));

  // paligemma_with_expert under model. but the top-level linears outside it: not the model's root.
  std::vector<TinyTensor> split;
  add_linear(split, std::string("model.") + kPiExpert + "self_attn.q_proj", 8, 4);
  add_linear(split, "action_in_proj", 4, 2, true);
  g = guess_layout(formats::Checkpoint::open(write(split)));
  EXPECT_FALSE(g.prefix);
  EXPECT_EQ(g.prefixes, (std::vector<std::string>{"", "model."}));

  // Both models' names.
  std::vector<TinyTensor> both = pi05("");
  const auto gr = gr00t("");
  both.insert(both.end(), gr.begin(), gr.end());
  g = guess_layout(formats::Checkpoint::open(write(both)));
  EXPECT_EQ(g.model, "");
  EXPECT_FALSE(g.prefix);

  // Read as stored, with a warning that names the prefixes.
  std::string warned;
  const OpenedCheckpoint o =
      open_checkpoint(write(two), {}, std::nullopt, {}, [&](const std::string& w) { warned = w; });
  EXPECT_TRUE(o.names.identity());
  EXPECT_NE(warned.find("'ema.', 'model.'"), std::string::npos) << warned;
}

TEST_F(Naming, DetectedPrefixRenamesAndSetsAsideTheRest) {
  std::vector<TinyTensor> t = pi05("model.");
  t.push_back({"normalize_inputs.buffer_observation_state.mean", {8}});  // beside the model
  std::string said;
  const OpenedCheckpoint o = open_checkpoint(write(t), {}, std::nullopt, [&](const std::string& n) { said = n; });
  EXPECT_EQ(o.names.how, "detected");
  EXPECT_EQ(o.names.checkpoint_prefix, "model.");
  EXPECT_EQ(o.names.set_aside, 1u);
  EXPECT_EQ(o.names.example_set_aside, "normalize_inputs.buffer_observation_state.mean");
  EXPECT_NE(said.find("pi0.5 in LeRobot's layout"), std::string::npos) << said;
  EXPECT_NE(said.find("'model.'"), std::string::npos) << said;
  EXPECT_NE(said.find("1 tensor outside"), std::string::npos) << said;

  const formats::Checkpoint& c = o.checkpoint;
  EXPECT_EQ(c.tensors().size(), t.size() - 1);
  ASSERT_NE(c.find("action_in_proj.weight"), nullptr);
  EXPECT_EQ(c.find("action_in_proj.weight")->stored_name, "model.action_in_proj.weight");
  EXPECT_EQ(c.find("model.action_in_proj.weight"), nullptr);
  EXPECT_EQ(c.find("normalize_inputs.buffer_observation_state.mean"), nullptr);
  EXPECT_EQ(c.stored_tensors().size(), t.size());  // a copy holds everything
  // The same bytes under either name.
  const auto plain = formats::Checkpoint::open(write(pi05("")));
  EXPECT_EQ(linear_names(c), linear_names(plain));
  for (const LinearLayer& l : find_linear_layers(c)) EXPECT_EQ(l.stored_name, "model." + l.name);
}

TEST_F(Naming, FlagsGiveAnyPrefix) {
  const auto path = write(gr00t("policy.inner."));
  OpenedCheckpoint o = open_checkpoint(path, NamingOptions{std::string(""), std::nullopt});
  EXPECT_TRUE(o.names.identity());  // --strip-prefix '': as stored
  EXPECT_EQ(o.names.how, "flags");
  EXPECT_NE(o.checkpoint.find("policy.inner.action_head.model.transformer_blocks.0.ff.net.2.weight"), nullptr);

  o = open_checkpoint(path, NamingOptions{std::string("policy."), std::string("wrapped.")});
  EXPECT_NE(o.checkpoint.find("wrapped.inner.action_head.model.transformer_blocks.0.ff.net.2.weight"), nullptr);
  EXPECT_EQ(o.names.stored_name("wrapped.inner.x"), "policy.inner.x");
  EXPECT_EQ(o.names.runtime_name("policy.inner.x"), std::optional<std::string>("wrapped.inner.x"));
  EXPECT_EQ(o.names.runtime_name("elsewhere.x"), std::nullopt);

  // A submodule's checkpoint: the runtime's names gain a prefix.
  std::vector<TinyTensor> sub;
  add_linear(sub, "layers.0.self_attn.q_proj", 8, 4);
  o = open_checkpoint(write(sub),
                      NamingOptions{std::nullopt, std::string("paligemma_with_expert.gemma_expert.model.")});
  EXPECT_EQ(linear_names(o.checkpoint),
            (std::vector<std::string>{"paligemma_with_expert.gemma_expert.model.layers.0.self_attn.q_proj"}));

  try {
    open_checkpoint(path, NamingOptions{std::string("model."), std::nullopt});
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::usage);
    EXPECT_NE(std::string(e.what()).find("--strip-prefix 'model.'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'policy.inner.'"), std::string::npos) << e.what();
  }
}

TEST_F(Naming, RenamingThatWouldMergeTwoNamesIsRefused) {
  std::vector<TinyTensor> t;
  add_linear(t, "a.x", 2, 2);
  add_linear(t, "b.x", 2, 2);
  auto ckpt = formats::Checkpoint::open(write(t));
  EXPECT_THROW(ckpt.rename([](const std::string& s) { return std::optional<std::string>(s.substr(2)); }), Error);
  // A kept tensor renamed onto the stored name of one set aside.
  std::vector<TinyTensor> u;
  add_linear(u, "model.x", 2, 2);
  add_linear(u, "x", 2, 2);
  auto ckpt2 = formats::Checkpoint::open(write(u));
  NameMapping m;
  m.checkpoint_prefix = "model.";
  EXPECT_THROW(apply_names(ckpt2, m), Error);
}

TEST_F(Naming, RecordedMappingIsFollowedWhereItsPrefixExists) {
  NameMapping recorded;
  recorded.checkpoint_prefix = "model.";
  recorded.how = "detected";
  // The same checkpoint: the recorded mapping.
  OpenedCheckpoint o = open_checkpoint(write(pi05("model.")), {}, recorded);
  EXPECT_EQ(o.names.how, "manifest");
  EXPECT_EQ(o.names.checkpoint_prefix, "model.");
  // The same weights without the prefix: found as for any checkpoint.
  o = open_checkpoint(write(pi05("")), {}, recorded);
  EXPECT_EQ(o.names.how, "none");
  EXPECT_TRUE(o.names.identity());
  // Round trip through the manifest's JSON.
  const NameMapping back = names_from_json(nlohmann::json::parse(names_json(recorded).dump()), "m.json");
  EXPECT_EQ(back.checkpoint_prefix, "model.");
  EXPECT_EQ(back.how, "detected");
  EXPECT_THROW(names_from_json(nlohmann::json::parse(R"({"checkpoint_prefix": 1})"), "m.json"), Error);
  EXPECT_THROW(
      names_from_json(nlohmann::json::parse(R"({"checkpoint_prefix": "", "runtime_prefix": "", "how": "guessed"})"),
                      "m.json"),
      Error);
}

TEST_F(Naming, EmbeddingTablesAndNotLinear) {
  const auto ckpt = formats::Checkpoint::open(write(gr00t("")));
  const std::vector<std::string> names = linear_names(ckpt);
  // embed_tokens, position_embedding, future_tokens: embedding tables; .W: 3-D, no .weight.
  EXPECT_EQ(names,
            (std::vector<std::string>{std::string(kGr00tLm) + "self_attn.q_proj",
                                      std::string(kGr00tLm) + "mlp.down_proj", std::string(kGr00tDit) + "attn1.to_q",
                                      std::string(kGr00tDit) + "ff.net.0.proj", std::string(kGr00tDit) + "ff.net.2",
                                      "action_head.vl_self_attention.transformer_blocks.0.attn1.to_q"}));
  EXPECT_TRUE(is_embedding_table("action_head.future_tokens"));
  EXPECT_FALSE(is_embedding_table("action_head.future_tokens.proj"));
  EXPECT_EQ(linear_names(ckpt, {"vl_self_attention", R"(ff\.net\.\d$)"}).size(), 4u);
}

TEST(ActionHeadRule, EachRuntimes) {
  // OpenPI: only action_out_proj, top level or last component.
  EXPECT_TRUE(is_action_head("action_out_proj", Runtime::openpi));
  EXPECT_TRUE(is_action_head("x.action_out_proj", Runtime::openpi));
  EXPECT_FALSE(is_action_head("xaction_out_proj", Runtime::openpi));
  EXPECT_FALSE(is_action_head("action_head.vl_self_attention.transformer_blocks.0.attn1.to_q", Runtime::openpi));
  // GR00T: anything of the action head outside its DiT, and every name ending in action_out_proj.
  EXPECT_TRUE(is_action_head("action_head.vl_self_attention.transformer_blocks.0.attn1.to_q", Runtime::gr00t));
  EXPECT_TRUE(is_action_head("action_head.model2.x", Runtime::gr00t));
  EXPECT_TRUE(is_action_head("backbone.action_head.model.x", Runtime::gr00t));
  EXPECT_TRUE(is_action_head("xaction_out_proj", Runtime::gr00t));
  EXPECT_FALSE(is_action_head("action_head.model.transformer_blocks.0.ff.net.2", Runtime::gr00t));
  EXPECT_FALSE(is_action_head("backbone.eagle_model.language_model.model.layers.0.mlp.up_proj", Runtime::gr00t));
}

}  // namespace
}  // namespace duquant

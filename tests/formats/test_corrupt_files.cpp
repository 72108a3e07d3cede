// The hand-made corrupt files of tests/data/corrupt (made by make_corrupt.py): each must be rejected
// by Checkpoint::open with the ErrorKind and message expected.json gives, and by the CLI with exit
// code 3 (format) or 4 (io) and that message on stderr. No file of the folder may lack an entry.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "formats/safetensors_checkpoint.hpp"

namespace {

namespace fs = std::filesystem;

struct Case {
  std::string name;     // file or folder inside tests/data/corrupt
  std::string kind;     // "format" or "io"
  std::string message;  // a substring the error message must contain
};

// Test names and failure reports show the case, not gtest's byte dump.
void PrintTo(const Case& c, std::ostream* os) { *os << c.name << " (" << c.kind << ")"; }

fs::path corrupt_dir() { return duquant::test::test_data() / "corrupt"; }

nlohmann::json expected_json() {
  std::ifstream in(corrupt_dir() / "expected.json");
  if (!in) return nlohmann::json::object();
  return nlohmann::json::parse(in);
}

std::vector<Case> cases() {
  std::vector<Case> out;
  const nlohmann::json expected = expected_json();
  for (const auto& [name, e] : expected.items())
    out.push_back({name, e.at("kind").get<std::string>(), e.at("message").get<std::string>()});
  return out;
}

std::string param_name(const ::testing::TestParamInfo<Case>& info) {
  std::string s;
  for (char c : info.param.name) s += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  return s;
}

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class CorruptFile : public ::testing::TestWithParam<Case> {};

TEST_P(CorruptFile, CheckpointOpenRejectsIt) {
  const Case& c = GetParam();
  const fs::path path = corrupt_dir() / c.name;
  ASSERT_TRUE(fs::exists(path)) << path;
  try {
    const auto ckpt = duquant::formats::Checkpoint::open(path);
    FAIL() << c.name << " opened with " << ckpt.tensors().size() << " tensors";
  } catch (const duquant::Error& e) {
    const std::string what = e.what();
    EXPECT_EQ(duquant::kind_name(e.kind()), c.kind) << what;
    EXPECT_TRUE(contains(what, c.message)) << "message: " << what << "\nexpected to contain: " << c.message;
    EXPECT_TRUE(contains(what, c.name)) << "message does not name the file: " << what;
  }
}

TEST_P(CorruptFile, CliExitsWithTheKindAndMessage) {
  const Case& c = GetParam();
  const auto r = duquant::test::run_cli({"list-linears", (corrupt_dir() / c.name).string()});
  EXPECT_EQ(r.exit_code, c.kind == "io" ? 4 : 3) << r.err;
  EXPECT_TRUE(contains(r.err, "duquant: error: ")) << r.err;
  EXPECT_TRUE(contains(r.err, c.message)) << "stderr: " << r.err << "\nexpected to contain: " << c.message;
  EXPECT_TRUE(r.out.empty()) << r.out;
}

INSTANTIATE_TEST_SUITE_P(All, CorruptFile, ::testing::ValuesIn(cases()), param_name);

TEST(CorruptFiles, ExpectedJsonIsWellFormed) {
  const auto cs = cases();
  EXPECT_GE(cs.size(), 60u);
  for (const auto& c : cs) {
    EXPECT_TRUE(c.kind == "format" || c.kind == "io") << c.name << ": " << c.kind;
    EXPECT_FALSE(c.message.empty()) << c.name;
  }
}

TEST(CorruptFiles, EveryFileInTheFolderHasAnEntry) {
  std::set<std::string> listed;
  for (const auto& c : cases()) {
    listed.insert(c.name);
    EXPECT_TRUE(fs::exists(corrupt_dir() / c.name)) << c.name << " is in expected.json but not in the folder";
  }
  int files = 0;
  for (const auto& entry : fs::directory_iterator(corrupt_dir())) {
    const std::string name = entry.path().filename().string();
    if (name == "make_corrupt.py" || name == "expected.json") continue;
    ++files;
    EXPECT_EQ(listed.count(name), 1u) << name << " has no entry in expected.json";
  }
  EXPECT_EQ(files, static_cast<int>(listed.size()));
}

}  // namespace

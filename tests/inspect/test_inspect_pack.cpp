// inspect on pack directories: the quality table against the manifest (worst first), per-head
// error against the layer's figures, runtime (npz-only) packs, and hostile manifests.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <functional>

#include "duquant/inspect.hpp"
#include "inspect_test_util.hpp"

namespace duquant::test {
namespace {

namespace fs = std::filesystem;

TEST(InspectHeads, RowsAndColumnsOfEachHead) {
  // W [4, 6] all ones; W_hat halves rows 2-3 (head 1 of q/k/v with hd 2) and is exact elsewhere.
  std::vector<float> w(24, 1.0f), w_hat(24, 1.0f);
  for (int c = 0; c < 6; ++c) w_hat[2 * 6 + c] = w_hat[3 * 6 + c] = 0.5f;
  const auto rows = head_errors(w.data(), w_hat.data(), 4, 6, HeadAxis::rows, 2);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].rel_fro_error, 0.0);
  EXPECT_FALSE(rows[0].sqnr_db.has_value());  // exact
  EXPECT_DOUBLE_EQ(rows[1].rel_fro_error, 0.5);
  EXPECT_NEAR(*rows[1].sqnr_db, 20 * std::log10(2.0), 1e-12);
  // o_proj: heads are columns; each of the 3 column heads sees half its rows halved
  const auto cols = head_errors(w.data(), w_hat.data(), 4, 6, HeadAxis::columns, 2);
  ASSERT_EQ(cols.size(), 3u);
  for (const auto& h : cols) EXPECT_DOUBLE_EQ(h.rel_fro_error, std::sqrt(0.5 * 0.25));
  EXPECT_TRUE(head_errors(w.data(), w_hat.data(), 4, 6, HeadAxis::columns, 4).empty());  // 4 does not divide 6
}

// The JSON `layers` array is in model order (numeric block indices); its figures are the manifest's.
TEST(InspectPack, JsonIsInModelOrderAndEqualsTheManifest) {
  const fs::path pack = pack_of_fixture("openpi-dit");
  const nlohmann::json m = read_json(pack / "manifest.json");
  const nlohmann::json j = run_json({"inspect", pack.string(), "--json"});
  EXPECT_EQ(j["kind"], "pack");
  EXPECT_EQ(j["format"], "duquant-pack");
  ASSERT_EQ(j["layers"].size(), 14u);
  std::map<std::string, nlohmann::json> by_name;
  for (const auto& l : m["layers"]) by_name[l["name"]] = l;
  std::uint64_t packed = 0;
  double worst = 1e300;
  std::string worst_name;
  int previous_block = -1;
  for (const auto& l : j["layers"]) {
    const nlohmann::json& ml = by_name.at(l["name"]);
    const double sqnr = l["quality"]["duquant"]["sqnr_db"].get<double>();
    if (sqnr < worst) worst = sqnr, worst_name = l["name"];
    // block indices never decrease (layers.0.* before layers.1.*)
    const std::string name = l["name"];
    const int block = std::stoi(name.substr(name.find("layers.") + 7));
    EXPECT_GE(block, previous_block) << name;
    previous_block = block;
    EXPECT_EQ(l["quality"]["duquant"]["sqnr_db"], ml["quality"]["duquant"]["sqnr_db"]);
    EXPECT_EQ(l["quality"]["rtn"]["sqnr_db"], ml["quality"]["rtn"]["sqnr_db"]);
    EXPECT_EQ(l["quality"]["duquant"]["rel_fro_error"], ml["quality"]["duquant"]["rel_fro_error"]);
    EXPECT_EQ(l["packed_bytes"], ml["quantized"]["bytes"]);
    EXPECT_EQ(l["shape"], ml["shape"]);
    EXPECT_EQ(l["group"], "action_expert");
    packed += ml["quantized"]["bytes"].get<std::uint64_t>();
  }
  EXPECT_EQ(j["totals"]["packed_bytes"], packed);
  EXPECT_EQ(j["totals"]["worst"]["name"], worst_name);
  EXPECT_NE(j["layers"][0]["name"].get<std::string>().find("layers.0."), std::string::npos) << j["layers"][0];
  EXPECT_NE(j["layers"][13]["name"].get<std::string>().find("layers.1."), std::string::npos) << j["layers"][13];
  // bytes in: the checkpoint's BF16 weights (no biases in these layers)
  EXPECT_EQ(j["totals"]["bytes_in"], 2u * 2 * (2 * 64 * 128 + 2 * 64 * 16 + 3 * 64 * 256));
}

TEST(InspectPack, TextShowsTheWorstLayerFirstWithinHundredColumns) {
  const fs::path pack = pack_of_fixture("openpi-dit");
  const nlohmann::json j = run_json({"inspect", pack.string(), "--json"});
  const CliResult r = run_cli({"inspect", pack.string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  std::istringstream lines(r.out);
  std::vector<std::string> rows;
  for (std::string line; std::getline(lines, line);) {
    EXPECT_LE(line.size(), 100u) << line;
    if (line.rfind("  1  ", 0) == 0 || line.rfind("  2  ", 0) == 0) rows.push_back(line);
  }
  ASSERT_EQ(rows.size(), 2u) << r.out;
  const std::string worst = j["totals"]["worst"]["name"], short_name = worst.substr(worst.find("layers.") + 7);
  EXPECT_NE(rows[0].find(short_name), std::string::npos) << rows[0];
  char expected[32];
  std::snprintf(expected, sizeof expected, "%.2f", j["totals"]["worst"]["sqnr_db"].get<double>());
  EXPECT_NE(rows[0].find(expected), std::string::npos) << rows[0];
}

TEST(InspectPack, PerHeadErrorAgreesWithTheLayer) {
  const fs::path pack = pack_of_fixture("openpi-dit");
  const nlohmann::json j =
      run_json({"inspect", pack.string(), "--checkpoint", tiny_checkpoint().string(), "--head-dim", "16", "--json"});
  int checked = 0;
  for (const auto& l : j["layers"]) {
    const std::string name = l["name"];
    const double layer_rel = l["quality"]["duquant"]["rel_fro_error"];
    const bool attention = name.find("self_attn") != std::string::npos;
    ASSERT_EQ(l["heads"].is_null(), !attention) << name;
    if (!attention) continue;
    const auto& all = l["heads"]["all"];
    const bool kv = name.find("k_proj") != std::string::npos || name.find("v_proj") != std::string::npos;
    const bool o = name.find("o_proj") != std::string::npos;
    EXPECT_EQ(all.size(), kv ? 1u : 8u) << name;  // 1 KV head; q rows and o columns: 8 heads of 16
    EXPECT_EQ(l["heads"]["axis"], o ? "columns" : "rows");
    double lo = 1e300, hi = 0;
    for (const auto& h : all) {
      lo = std::min(lo, h["rel_fro_error"].get<double>());
      hi = std::max(hi, h["rel_fro_error"].get<double>());
    }
    EXPECT_EQ(l["heads"]["worst"]["rel_fro_error"].get<double>(), hi);
    if (kv)
      EXPECT_NEAR(all[0]["rel_fro_error"].get<double>(), layer_rel, 1e-5 * layer_rel) << name;
    else {
      EXPECT_LE(lo, layer_rel * (1 + 1e-6)) << name;
      EXPECT_GE(hi, layer_rel * (1 - 1e-6)) << name;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 8);
}

TEST(InspectPack, BlockOutThatSplitsHeadsIsWarned) {
  const fs::path pack = pack_of_fixture("openpi-dit");
  const CliResult r =
      run_cli({"inspect", pack.string(), "--checkpoint", tiny_checkpoint().string(), "--head-dim", "12"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("block_out 16 does not divide head_dim 12"), std::string::npos) << r.err;
  EXPECT_NE(r.out.find("head_dim 12 does not divide the 128 rows"), std::string::npos) << r.out;
  const CliResult ok = run_cli({"inspect", pack.string(), "--head-dim", "32"});
  EXPECT_EQ(ok.err.find("does not divide"), std::string::npos) << ok.err;
  EXPECT_NE(ok.out.find("--checkpoint"), std::string::npos) << ok.out;  // per-head needs the checkpoint
}

TEST(InspectPack, RuntimePackShowsLayersAndMetaButNoQuality) {
  const fs::path pack = fixtures() / "openpi-pack-b32-out16";
  const nlohmann::json j = run_json({"inspect", pack.string(), "--json"});
  EXPECT_EQ(j["format"], "runtime-npz");
  ASSERT_EQ(j["layers"].size(), 14u);
  for (const auto& l : j["layers"]) {
    EXPECT_EQ(l["block"], 32);
    EXPECT_EQ(l["block_out"], 16);
    EXPECT_EQ(l["permute"], true);
    EXPECT_TRUE(l["quality"].is_null());
  }
  EXPECT_NE(j["notes"][0].get<std::string>().find("manifest"), std::string::npos);
  const CliResult r = run_cli({"inspect", (fixtures() / "openpi-pack-b8-noperm-ls0").string()});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("manifest"), std::string::npos);
  EXPECT_NE(r.out.find(" off "), std::string::npos);  // permute off
}

TEST(InspectPack, RuntimePackPerHeadErrorWithTheCheckpoint) {
  const nlohmann::json j = run_json({"inspect", (fixtures() / "openpi-pack-b16").string(), "--checkpoint",
                                     tiny_checkpoint().string(), "--head-dim", "16", "--json"});
  int with_heads = 0;
  for (const auto& l : j["layers"])
    if (!l["heads"].is_null()) {
      ++with_heads;
      for (const auto& h : l["heads"]["all"]) {
        EXPECT_GT(h["rel_fro_error"].get<double>(), 0.0);
        EXPECT_LT(h["rel_fro_error"].get<double>(), 1.0);
      }
    }
  EXPECT_EQ(with_heads, 8);
}

// A copy of the fixture pack's manifest with one value replaced.
fs::path broken_pack(const std::function<void(nlohmann::json&)>& edit) {
  const fs::path dir = temp_dir() / "pack";
  fs::create_directories(dir);
  nlohmann::json m = read_json(pack_of_fixture("openpi-dit") / "manifest.json");
  edit(m);
  std::ofstream(dir / "manifest.json") << m.dump(1);
  return dir;
}

TEST(InspectPack, HostileManifestsAreFormatErrors) {
  const std::vector<std::function<void(nlohmann::json&)>> edits = {
      [](nlohmann::json& m) { m["layers"][0]["shape"] = "64x128"; },
      [](nlohmann::json& m) {
        m["layers"][0]["shape"] = {64, -1};
      },
      [](nlohmann::json& m) {
        m["layers"][0]["shape"] = {1ull << 40, 4};
      },
      [](nlohmann::json& m) { m["layers"][1]["quality"]["duquant"]["sqnr_db"] = "high"; },
      [](nlohmann::json& m) { m["layers"][2]["wbits"] = 99; },
      [](nlohmann::json& m) { m["layers"][2]["wbits"] = 4.5; },
      [](nlohmann::json& m) { m["layers"][3]["dtype"] = "Q3"; },
      [](nlohmann::json& m) { m["layers"][3]["name"] = nullptr; },
      [](nlohmann::json& m) {
        m["layers"][4]["quantized"] = {{"bytes", "many"}};
      },
      [](nlohmann::json& m) { m["layers"][0] = 7; },
      [](nlohmann::json& m) {
        m["layers"] = {{"a", 1}};
      },
      [](nlohmann::json& m) { m["layers"] = nlohmann::json::array(); },
      [](nlohmann::json& m) { m["config"] = "x"; },
      [](nlohmann::json& m) { m["format"] = "other"; },
      [](nlohmann::json& m) { m["format_version"] = 2; },
      [](nlohmann::json& m) {
        m["files"] = {{{"name", 3}}};
      },
      [](nlohmann::json& m) { m = nlohmann::json::array(); },
  };
  for (std::size_t i = 0; i < edits.size(); ++i) {
    const fs::path dir = broken_pack(edits[i]);
    for (const char* json : {"", "--json"}) {
      std::vector<std::string> args{"inspect", dir.string()};
      if (*json) args.push_back(json);
      const CliResult r = run_cli(args);
      EXPECT_EQ(r.exit_code, 3) << "edit " << i << ": " << r.err;
      EXPECT_NE(r.err.find("manifest.json"), std::string::npos) << "edit " << i << ": " << r.err;
      EXPECT_EQ(r.err.find("internal"), std::string::npos) << r.err;
    }
  }
}

TEST(InspectPack, ExactLayersAreListedLast) {
  const fs::path dir = broken_pack([](nlohmann::json& m) {
    m["layers"][0]["quality"]["duquant"] = {{"rel_fro_error", 0.0}, {"sqnr_db", nullptr}};
  });
  const std::string exact = read_json(dir / "manifest.json")["layers"][0]["name"];
  const nlohmann::json j = run_json({"inspect", dir.string(), "--json"});
  ASSERT_EQ(j["layers"].size(), 14u);
  EXPECT_EQ(j["layers"][0]["name"], exact);  // JSON: model order, whatever the figures
  EXPECT_TRUE(j["layers"][0]["quality"]["gain_db"].is_null());
  // The text table, worst first, ends with it.
  const CliResult text = run_cli({"inspect", dir.string()});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  const std::string short_name = exact.substr(exact.find("layers."));
  std::string last_row;
  std::istringstream lines(text.out);
  for (std::string line; std::getline(lines, line);)
    if (line.find("self_attn.") != std::string::npos || line.find("mlp.") != std::string::npos) last_row = line;
  EXPECT_NE(last_row.find(short_name.substr(7)), std::string::npos) << text.out;
  EXPECT_NE(last_row.find("exact"), std::string::npos) << text.out;
  const CliResult r = run_cli({"inspect", dir.string(), "--html", (dir / "r.html").string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  EXPECT_NE(r.out.find("exact"), std::string::npos);
}

TEST(InspectPack, NamesThatAreNotUtf8DoNotBreakJson) {
  const fs::path dir = temp_dir();
  fs::copy_file(fixtures() / "openpi-pack-b16" / "paligemma_with_expert.gemma_expert.model.layers.0.mlp.up_proj.npz",
                dir / "layer\xff.q_proj.npz");
  const nlohmann::json j = run_json({"inspect", dir.string(), "--json"});
  ASSERT_EQ(j["layers"].size(), 1u);
  EXPECT_EQ(run_cli({"inspect", dir.string(), "--html", (dir / "r.html").string()}).exit_code, 0);
}

TEST(InspectPack, HostileFilesAreFormatOrIoErrors) {
  const fs::path dir = temp_dir();
  std::ofstream(dir / "manifest.json") << R"({"format": "duquant-pack", "format_version": 1, "lay)";
  EXPECT_EQ(run_cli({"inspect", dir.string()}).exit_code, 3);
  std::ofstream(dir / "manifest.json", std::ios::trunc) << "";
  const int empty = run_cli({"inspect", dir.string()}).exit_code;
  EXPECT_TRUE(empty == 3 || empty == 4) << empty;
  fs::remove(dir / "manifest.json");
  std::ofstream(dir / "a.npz") << "PK not a zip";
  EXPECT_EQ(run_cli({"inspect", dir.string()}).exit_code, 3);
  EXPECT_EQ(run_cli({"inspect", (dir / "nothing-here").string()}).exit_code, 4);
}

}  // namespace
}  // namespace duquant::test

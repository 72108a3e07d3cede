// The HTML report: self-contained (no http(s) references, no scripts), names escaped; per model part
// two maps (DuQuant SQNR, gain over round-to-nearest) with rows = block index in numeric order and
// columns = projection (q k v o, gate up down), one cell per layer, each with its legend; per-head and
// preset maps; the 20 worst layers. Rendered by chromium-headless-shell with the network blocked
// (the DOM's structure, a 1400 x 900 screenshot, the printed page count). Without chromium the
// rendering tests report skipped, never passed.
#include <gtest/gtest.h>

#include <fmt/format.h>
#include <cstdlib>

#include <regex>

#include "common/expert_dump.hpp"
#include "inspect_test_util.hpp"
#include "report/html_report.hpp"
#include "report/layer_grid.hpp"

namespace duquant::test {
namespace {

namespace fs = std::filesystem;

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

// The text from the `index`-th occurrence of `start` to the next `end` (empty when absent).
std::string section(const std::string& text, const std::string& start, const std::string& end, std::size_t index = 0) {
  std::size_t p = text.find(start);
  for (std::size_t k = 0; k < index && p != std::string::npos; ++k) p = text.find(start, p + 1);
  if (p == std::string::npos) return {};
  const std::size_t e = text.find(end, p);
  return text.substr(p, e == std::string::npos ? std::string::npos : e - p);
}

// Every value of attribute `attr` inside the elements whose opening tag starts with `tag`, in order.
std::vector<std::string> attribute_values(const std::string& text, const std::string& tag, const std::string& attr) {
  std::vector<std::string> out;
  const std::regex re(tag + "[^>]*?" + attr + "=\"([^\"]*)\"");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), re); it != std::sregex_iterator(); ++it)
    out.push_back((*it)[1]);
  return out;
}

// DUQUANT_TEST_CHROMIUM overrides the search (a path that does not exist makes the test skip).
std::string chromium() {
  if (const char* env = std::getenv("DUQUANT_TEST_CHROMIUM")) return fs::exists(env) ? std::string(env) : std::string();
  for (const char* dir : {"/usr/bin", "/usr/local/bin", "/usr/lib/chromium"}) {
    const fs::path p = fs::path(dir) / "chromium-headless-shell";
    if (fs::exists(p)) return p.string();
  }
  return {};
}

// Runs chromium-headless-shell with every host name unresolvable (no network); a hung browser is
// killed after 120 s and fails the test instead of stalling it.
CliResult run_chromium(const std::vector<std::string>& args) {
  ChildSetup setup;
  setup.command = {chromium(),
                   "--no-sandbox",
                   "--disable-gpu",
                   "--headless",
                   "--host-resolver-rules=MAP * ~NOTFOUND",
                   "--disable-background-networking",
                   "--no-first-run"};
  return run_program(args, setup, std::chrono::seconds(120));
}

fs::path write_report(const fs::path& dir) {
  const fs::path html = dir / "report.html";
  const CliResult r = run_cli({"inspect", pack_of_fixture("openpi-dit").string(), "--checkpoint",
                               tiny_checkpoint().string(), "--head-dim", "16", "--html", html.string()});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return html;
}

// A full-size-shaped pi0.5 (every width / 16, all 18 layers per stack) packed with openpi-full: 252
// layers, block indices 0-17 (two digits), as the demo's.
fs::path full_pack(const fs::path& dir) {
  const fs::path ckpt = dir / "pi05.safetensors", pack = dir / "pack";
  EXPECT_EQ(run_cli({"synth", "-o", ckpt.string(), "--factor", "16"}).exit_code, 0);
  const CliResult r = run_cli({"pack", ckpt.string(), "-o", pack.string(), "--preset", "openpi-full"});
  EXPECT_EQ(r.exit_code, 0) << r.err;
  return pack;
}

const std::vector<std::string> kExpertColumns = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                 "mlp.down_proj"};

TEST(LayerGrid, SplitsAtTheBlockIndexInNumericOrder) {
  const std::vector<std::string> names = {"m.layers.10.mlp.down_proj",
                                          "m.layers.2.self_attn.q_proj",
                                          "m.layers.10.self_attn.q_proj",
                                          "m.layers.2.mlp.down_proj",
                                          "action_in_proj",
                                          "dit.transformer_blocks.1.ff.net.2",
                                          "dit.transformer_blocks.1.attn1.to_q",
                                          "dit.transformer_blocks.0.ff.net.0.proj",
                                          "m.layers.9.self_attn.q_proj"};
  const LayerGrids g = layer_grids(names);
  ASSERT_EQ(g.grids.size(), 2u);
  EXPECT_EQ(g.grids[0].part, "m.layers");  // module order: the part that appears first
  EXPECT_EQ(g.grids[0].rows, (std::vector<std::int64_t>{2, 9, 10}));
  EXPECT_EQ(g.grids[0].columns, (std::vector<std::string>{"self_attn.q_proj", "mlp.down_proj"}));
  EXPECT_EQ(g.grids[0].at(2, 0), std::optional<std::size_t>(2));
  EXPECT_EQ(g.grids[0].at(1, 1), std::nullopt);  // layer 9 has no down_proj
  EXPECT_EQ(g.grids[1].part, "dit.transformer_blocks");
  EXPECT_EQ(g.grids[1].rows, (std::vector<std::int64_t>{0, 1}));
  EXPECT_EQ(g.grids[1].columns, (std::vector<std::string>{"attn1.to_q", "ff.net.0.proj", "ff.net.2"}));
  EXPECT_EQ(g.other, std::vector<std::size_t>{4});
  EXPECT_EQ(column_labels({"attn1.to_q", "attn1.to_k"}), (std::vector<std::string>{"to_q", "to_k"}));
  EXPECT_EQ(column_labels({"self_attn.q_proj", "mlp.up_proj"}),
            (std::vector<std::string>{"self_attn.q_proj", "mlp.up_proj"}));
}

TEST(InspectHtml, EscapesNames) {
  EXPECT_EQ(html_escape(R"(<a href="x">&'</a>)"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
  PackReport r;
  r.path = "<pack>";
  r.has_manifest = true;
  for (const char* name : {"m.<script>alert(1)</script>.q_proj", "m.layers.0.<b>x</b>.q_proj"}) {
    PackLayerInfo l;
    l.name = name;
    l.block_type = "<b>";
    l.duquant = Quality{0.1, 20.0};
    l.rtn = Quality{0.2, 14.0};
    r.layers.push_back(l);
  }
  const std::string page = pack_html(r);
  EXPECT_EQ(page.find("<script"), std::string::npos);
  EXPECT_EQ(page.find("<b>"), std::string::npos);
  EXPECT_NE(page.find("&lt;script&gt;"), std::string::npos);
  EXPECT_EQ(count(page, "<g class=\"cell\""), 2u);  // the grid layer, in both maps
}

TEST(InspectHtml, SelfContainedMapsInModelOrder) {
  const fs::path html = write_report(temp_dir());
  const std::string page = read_text(html);
  EXPECT_EQ(page.rfind("<!DOCTYPE html>", 0), 0u);
  for (const char* banned : {"http://", "https://", "<script", "@import", "url("})
    EXPECT_EQ(page.find(banned), std::string::npos) << banned;
  // One part (the action expert): its two maps, 2 rows x 7 columns, one cell per layer; the per-head map.
  EXPECT_EQ(count(page, "<svg class=\"map\""), 3u);
  for (const char* metric : {"sqnr", "gain"}) {
    const std::string map = section(page, fmt::format("<svg class=\"map\" data-metric=\"{}\"", metric), "</svg>");
    ASSERT_FALSE(map.empty()) << metric;
    EXPECT_NE(map.find("data-rows=\"2\" data-cols=\"7\""), std::string::npos) << map.substr(0, 200);
    EXPECT_EQ(count(map, "<g class=\"cell\""), 14u) << metric;
    EXPECT_EQ(attribute_values(map, "<text class=\"row\"", "data-row"), (std::vector<std::string>{"0", "1"}));
    EXPECT_EQ(attribute_values(map, "<text class=\"head col\"", "data-col"), kExpertColumns);
    const std::vector<std::string> cells = attribute_values(map, "<g class=\"cell\"", "data-col");
    EXPECT_EQ(std::vector<std::string>(cells.begin(), cells.begin() + 7), kExpertColumns);  // row by row
    // the legend of this map, with its swatches
    const std::string legend = section(page, fmt::format("<svg class=\"legend\" data-metric=\"{}\"", metric), "</svg>");
    EXPECT_EQ(count(legend, "<rect class=\"swatch\""), 7u) << metric;
  }
  // A cell's title names the layer in full, with both figures.
  EXPECT_NE(page.find("<title>paligemma_with_expert.gemma_expert.model.layers.1.mlp.down_proj\n[64 x 256] W4\nDuQuant"),
            std::string::npos);
  // The per-head map has the attention columns only.
  const std::string heads = section(page, "<svg class=\"map\" data-metric=\"heads\"", "</svg>");
  EXPECT_EQ(attribute_values(heads, "<text class=\"head col\"", "data-col"),
            std::vector<std::string>(kExpertColumns.begin(), kExpertColumns.begin() + 4));
  // The worst layers: all 14 (fewer than 20), lowest SQNR first.
  EXPECT_NE(page.find("The 14 worst layers"), std::string::npos);
  EXPECT_EQ(count(section(page, "<table class=\"worst\"", "</table>"), "<tr><td>"), 14u);
  for (const auto& e : fs::directory_iterator(html.parent_path()))  // written atomically: no temporary left
    EXPECT_EQ(e.path().filename().string().rfind(".report.html", 0), std::string::npos) << e.path();
}

// Two-digit block indices: 10 follows 9 in the maps and in the JSON, never 1.
TEST(InspectHtml, NumericOrderOfTwoDigitLayersInHtmlAndJson) {
  const fs::path dir = temp_dir();
  const fs::path pack = full_pack(dir);
  const fs::path html = dir / "report.html";
  ASSERT_EQ(run_cli({"inspect", pack.string(), "--html", html.string()}).exit_code, 0);
  const std::string page = read_text(html);
  std::vector<std::string> expected;
  for (int i = 0; i < 18; ++i) expected.push_back(std::to_string(i));
  EXPECT_EQ(count(page, "<svg class=\"map\" data-metric=\"sqnr\""), 2u);  // language model, action expert
  EXPECT_EQ(count(page, "<svg class=\"map\" data-metric=\"gain\""), 2u);
  for (std::size_t part = 0; part < 2; ++part)
    for (const char* metric : {"sqnr", "gain"}) {
      const std::string map =
          section(page, fmt::format("<svg class=\"map\" data-metric=\"{}\"", metric), "</svg>", part);
      EXPECT_EQ(attribute_values(map, "<text class=\"row\"", "data-row"), expected) << metric << " " << part;
      EXPECT_EQ(count(map, "<g class=\"cell\""), 126u);
      const std::vector<std::string> rows = attribute_values(map, "<g class=\"cell\"", "data-row");
      ASSERT_EQ(rows.size(), 126u);
      for (std::size_t k = 0; k < rows.size(); ++k) EXPECT_EQ(rows[k], std::to_string(k / 7)) << k;
    }
  EXPECT_LT(page.find("language model: paligemma_with_expert.paligemma.model.language_model.layers"),
            page.find("action expert: paligemma_with_expert.gemma_expert.model.layers"));
  EXPECT_EQ(count(section(page, "<table class=\"worst\"", "</table>"), "<tr><td>"), 20u);

  // The text table spells each module one way: every name shortened alike.
  const CliResult text = run_cli({"inspect", pack.string()});
  ASSERT_EQ(text.exit_code, 0) << text.err;
  const std::size_t with_model = count(text.out, "gemma_expert.model.layers."),
                    without = count(text.out, "gemma_expert.layers.");
  EXPECT_TRUE((with_model == 126 && without == 0) || (with_model == 0 && without == 126))
      << with_model << " " << without << "\n"
      << text.out;

  const nlohmann::json j = run_json({"inspect", pack.string(), "--json"});
  ASSERT_EQ(j["layers"].size(), 252u);
  std::vector<std::string> order;
  for (const auto& l : j["layers"]) order.push_back(l["name"]);
  const std::string lm = "paligemma_with_expert.paligemma.model.language_model.layers.";
  const auto nine = std::find(order.begin(), order.end(), lm + "9.self_attn.q_proj");
  const auto ten = std::find(order.begin(), order.end(), lm + "10.self_attn.q_proj");
  const auto one = std::find(order.begin(), order.end(), lm + "1.self_attn.q_proj");
  ASSERT_NE(ten, order.end());
  EXPECT_LT(one, nine);
  EXPECT_EQ(nine + 7, ten);  // the 7 projections of layer 9, then layer 10
}

// A calibrated, smoothed pack: the calibration section with its map of the held-out output error,
// one cell per layer, each title holding the layer's figure.
TEST(InspectHtml, CalibratedPackShowsTheOutputErrorMap) {
  const fs::path dir = temp_dir();
  write_expert_dump(dir / "dump.safetensors");
  const CliResult p =
      run_cli({"pack", tiny_checkpoint().string(), "-o", (dir / "pack").string(), "--preset", "openpi-dit", "--calib",
               (dir / "dump.safetensors").string(), "--calib-steps", "1", "--smooth-alpha", "0.5"});
  ASSERT_EQ(p.exit_code, 0) << p.err;
  const fs::path html = dir / "report.html";
  ASSERT_EQ(run_cli({"inspect", (dir / "pack").string(), "--html", html.string()}).exit_code, 0);
  const std::string page = read_text(html);
  EXPECT_NE(page.find("<h2>Calibration and smoothing</h2>"), std::string::npos);
  EXPECT_NE(page.find("14 of 14 layers calibrated, 14 smoothed"), std::string::npos) << page.substr(0, 3000);
  const std::string map = section(page, "<svg class=\"map\" data-metric=\"output\"", "</svg>");
  ASSERT_FALSE(map.empty());
  EXPECT_EQ(count(map, "<g class=\"cell smoothed\""), 14u);
  EXPECT_NE(map.find("held-out output error (W4 A8) 0."), std::string::npos);
  EXPECT_EQ(count(page, "<svg class=\"legend\" data-metric=\"output\""), 1u);
  const nlohmann::json j = run_json({"inspect", (dir / "pack").string(), "--json"});
  for (const auto& l : j["layers"]) {
    const double e = l["calibration"]["output_rel_error"];
    EXPECT_NE(map.find(fmt::format("held-out output error (W4 A8) {:.4f}", e)), std::string::npos) << l["name"];
  }
}

TEST(InspectHtml, CheckpointShowsWhatEachPresetSelectsAsMaps) {
  const fs::path html = temp_dir() / "ckpt.html";
  ASSERT_EQ(run_cli({"inspect", tiny_checkpoint().string(), "--html", html.string()}).exit_code, 0);
  const std::string page = read_text(html);
  const std::string dit = section(page, "<h3>openpi-dit ", "</section>");
  ASSERT_FALSE(dit.empty());
  EXPECT_EQ(count(dit, "<g class=\"cell sel-4\""), 14u);  // the 14 expert linears, W4
  EXPECT_EQ(count(dit, "<svg class=\"map\""), 1u);        // only the part it selects from
  const std::string qkvo = section(page, "<h3>openpi-dit-qkvo ", "</section>");
  EXPECT_EQ(count(qkvo, "<g class=\"cell sel-4\""), 8u);
  EXPECT_GT(count(qkvo, "<g class=\"cell unsel\""), 0u);  // the MLP projections, not selected
}

TEST(InspectHtml, ChromiumRendersTheMaps) {
  if (chromium().empty()) GTEST_SKIP() << "chromium-headless-shell is not installed";
  const fs::path dir = temp_dir();
  const fs::path html = write_report(dir);
  const std::string url = "file://" + fs::absolute(html).string();
  const CliResult dom = run_chromium({"--dump-dom", url});
  ASSERT_EQ(dom.exit_code, 0);
  // The structure the browser built: three maps and their cells, in order, and the legends.
  EXPECT_EQ(count(dom.out, "<svg class=\"map\""), 3u) << dom.out.substr(0, 500);
  const std::string sqnr = section(dom.out, "<svg class=\"map\" data-metric=\"sqnr\"", "</svg>");
  EXPECT_EQ(count(sqnr, "<g class=\"cell\""), 14u);
  EXPECT_EQ(attribute_values(sqnr, "<text class=\"head col\"", "data-col"), kExpertColumns);
  EXPECT_EQ(count(dom.out, "<svg class=\"legend\""), 3u);
  EXPECT_EQ(count(dom.out, "<rect class=\"swatch\""), 21u);

  const fs::path png = dir / "report.png";
  const CliResult shot = run_chromium({"--screenshot=" + png.string(), "--window-size=1400,900", url});
  ASSERT_EQ(shot.exit_code, 0);
  ASSERT_TRUE(fs::exists(png));
  EXPECT_GT(fs::file_size(png), 20000u);  // a blank 1400x900 page compresses to a few KB
  const std::string bytes = read_text(png);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
}

// The demo's 252-layer report: each map fits a 1400 x 900 window, and the page prints on at most 5
// pages (the count of the PDF's page tree).
TEST(InspectHtml, FullReportMapsFitAWindowAndItPrintsOnFivePages) {
  if (chromium().empty()) GTEST_SKIP() << "chromium-headless-shell is not installed";
  const fs::path dir = temp_dir();
  const fs::path pack = full_pack(dir);
  const fs::path html = dir / "report.html";
  ASSERT_EQ(run_cli({"inspect", pack.string(), "--checkpoint", (dir / "pi05.safetensors").string(), "--head-dim", "16",
                     "--html", html.string()})
                .exit_code,
            0);
  const std::string page = read_text(html);
  const std::vector<std::string> widths = attribute_values(page, "<svg class=\"map\"", "width");
  const std::vector<std::string> heights = attribute_values(page, "<svg class=\"map\"", "height");
  ASSERT_EQ(widths.size(), 6u);  // two parts x (SQNR, gain, heads)
  for (std::size_t k = 0; k < widths.size(); ++k) {
    EXPECT_LE(std::stoi(widths[k]), 1400) << k;
    EXPECT_LE(std::stoi(heights[k]), 900) << k;
  }
  const fs::path pdf = dir / "report.pdf";
  const CliResult print = run_chromium(
      {"--no-pdf-header-footer", "--print-to-pdf=" + pdf.string(), "file://" + fs::absolute(html).string()});
  ASSERT_EQ(print.exit_code, 0);
  const std::string bytes = read_text(pdf);
  std::smatch m;
  ASSERT_TRUE(std::regex_search(bytes, m, std::regex("/Type /Pages[^>]*?/Count ([0-9]+)|/Count ([0-9]+)")));
  const int pages = std::stoi(m[1].matched ? m[1].str() : m[2].str());
  EXPECT_GE(pages, 1);
  EXPECT_LE(pages, 5);
}

}  // namespace
}  // namespace duquant::test

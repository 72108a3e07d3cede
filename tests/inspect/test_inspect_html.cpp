// The HTML report: self-contained (no http(s) references, no scripts), names escaped, one bar per
// layer per method; rendered by chromium-headless-shell with the network blocked (DOM and a
// screenshot). Without chromium the rendering tests report skipped, never passed.
#include <gtest/gtest.h>

#include <cstdlib>

#include "inspect_test_util.hpp"
#include "report/html_report.hpp"

namespace duquant::test {
namespace {

namespace fs = std::filesystem;

std::size_t count(const std::string& text, const std::string& what) {
  std::size_t n = 0;
  for (std::size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
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

TEST(InspectHtml, EscapesNames) {
  EXPECT_EQ(html_escape(R"(<a href="x">&'</a>)"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;");
  PackReport r;
  r.path = "<pack>";
  r.has_manifest = true;
  PackLayerInfo l;
  l.name = "m.<script>alert(1)</script>.q_proj";
  l.block_type = "<b>";
  l.duquant = Quality{0.1, 20.0};
  l.rtn = Quality{0.2, 14.0};
  r.layers.push_back(l);
  const std::string page = pack_html(r);
  EXPECT_EQ(page.find("<script"), std::string::npos);
  EXPECT_EQ(page.find("<b>"), std::string::npos);
  EXPECT_NE(page.find("&lt;script&gt;"), std::string::npos);
  EXPECT_EQ(count(page, "<rect"), 2u);
}

TEST(InspectHtml, SelfContainedWithOneBarPerLayerPerMethod) {
  const fs::path html = write_report(temp_dir());
  const std::string page = read_text(html);
  EXPECT_EQ(page.rfind("<!DOCTYPE html>", 0), 0u);
  EXPECT_EQ(page.find("http://"), std::string::npos);
  EXPECT_EQ(page.find("https://"), std::string::npos);
  EXPECT_EQ(page.find("<script"), std::string::npos);
  EXPECT_EQ(page.find("@import"), std::string::npos);
  EXPECT_EQ(page.find("url("), std::string::npos);
  EXPECT_EQ(count(page, "<svg"), 1u);
  EXPECT_EQ(count(page, "<rect class=\"bar dq\""), 14u);
  EXPECT_EQ(count(page, "<rect class=\"bar rtn\""), 14u);
  EXPECT_EQ(count(page, "<tr><td>"), 14u);  // the table: one row per layer
  for (const char* type : {">q (2 layers)", ">k (2 layers)", ">v (2 layers)", ">o (2 layers)", ">gate (2 layers)",
                           ">up (2 layers)", ">down (2 layers)"})
    EXPECT_NE(page.find(type), std::string::npos) << type;
  for (const auto& e : fs::directory_iterator(html.parent_path()))  // written atomically: no temporary left
    EXPECT_EQ(e.path().filename().string().rfind(".report.html", 0), std::string::npos) << e.path();
}

TEST(InspectHtml, ChromiumRendersTheChart) {
  if (chromium().empty()) GTEST_SKIP() << "chromium-headless-shell is not installed";
  const fs::path dir = temp_dir();
  const fs::path html = write_report(dir);
  const std::string url = "file://" + fs::absolute(html).string();
  const CliResult dom = run_chromium({"--dump-dom", url});
  ASSERT_EQ(dom.exit_code, 0);
  EXPECT_EQ(count(dom.out, "<svg"), 1u) << dom.out.substr(0, 500);
  EXPECT_EQ(count(dom.out, "<rect"), 28u);
  EXPECT_EQ(count(dom.out, "class=\"bar dq\""), 14u);
  EXPECT_EQ(count(dom.out, "class=\"bar rtn\""), 14u);

  const fs::path png = dir / "report.png";
  const CliResult shot = run_chromium({"--screenshot=" + png.string(), "--window-size=1200,900", url});
  ASSERT_EQ(shot.exit_code, 0);
  ASSERT_TRUE(fs::exists(png));
  EXPECT_GT(fs::file_size(png), 20000u);  // a blank 1200x900 page compresses to a few KB
  const std::string bytes = read_text(png);
  EXPECT_EQ(bytes.substr(1, 3), "PNG");
}

}  // namespace
}  // namespace duquant::test

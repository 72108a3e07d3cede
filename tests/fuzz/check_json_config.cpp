// Fuzz check of the JSON readers of the pack: manifest.json (verify reads it) and --config files.
#include <fmt/format.h>

#include <string>
#include <string_view>

#include "config/settings.hpp"
#include "duquant/error.hpp"
#include "formats/strict_json.hpp"
#include "fuzz/fuzz_checks.hpp"
#include "packfmt/manifest.hpp"

namespace duquant::fuzz {
namespace {

// The values `duquant pack` accepts (docs/cli.md); an accepted configuration outside them is a bug.
void check_quant(const QuantConfig& q, const char* who) {
  if (q.wbits_default < 2 || q.wbits_default > 8 || q.abits < 2 || q.abits > 16 || q.block < 1 || q.block > 4096 ||
      q.block_out < 1 || q.block_out > 4096 || !(q.lambda_smooth >= 0 && q.lambda_smooth <= 1) ||
      !(q.act_pct > 0 && q.act_pct <= 100) || q.calib_steps < 1)
    throw Violation(fmt::format("{}: accepted wbits {} abits {} block {}/{} lambda {} act_pct {} calib_steps {}", who,
                                q.wbits_default, q.abits, q.block, q.block_out, q.lambda_smooth, q.act_pct,
                                q.calib_steps));
}

Outcome as_manifest(std::string_view text) {
  try {
    const nlohmann::json j = formats::parse_strict_json(text, "fuzz/manifest.json", 16);
    if (!j.is_object()) return Outcome::refused;  // verify refuses it so (pack_reader)
    const Manifest m = parse_manifest(j, "fuzz/manifest.json");
    check_quant(m.config.quant, "manifest");
    for (const ManifestLayer& l : m.layers) {
      if (l.out_features < 1 || l.in_features < 1 || l.wbits < 2 || l.wbits > 8 || l.block != m.config.quant.block ||
          l.block_out != m.config.quant.block_out || l.abits != m.config.quant.abits)
        throw Violation(fmt::format("manifest layer '{}': accepted shape {}x{} wbits {} block {}/{} abits {}", l.name,
                                    l.out_features, l.in_features, l.wbits, l.block, l.block_out, l.abits));
      if (l.duquant_rel_error && *l.duquant_rel_error < 0)
        throw Violation(fmt::format("manifest layer '{}': negative error accepted", l.name));
    }
    return Outcome::accepted;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::format) throw;
    return Outcome::refused;
  }
}

Outcome as_config(std::string_view text) {
  try {
    Settings settings;
    apply_config_text(text, "fuzz/config.json", settings);
    const RunConfig config = resolve(settings);
    check_quant(config.quant, "config");
    for (const auto& [name, bits] : config.selection.wbits)
      if (bits < 2 || bits > 8) throw Violation(fmt::format("config: wbits {} accepted for '{}'", bits, name));
    for (const auto& [pattern, bits] : config.selection.wbits_rules)
      if (bits < 2 || bits > 8) throw Violation(fmt::format("config: wbits {} accepted for rule '{}'", bits, pattern));
    return Outcome::accepted;
  } catch (const Error& e) {
    if (e.kind() != ErrorKind::format && e.kind() != ErrorKind::usage) throw;
    return Outcome::refused;
  }
}

}  // namespace

Outcome check_json_config(Bytes input) {
  const std::string_view text(reinterpret_cast<const char*>(input.data()), input.size());
  const Outcome manifest = as_manifest(text);
  const Outcome config = as_config(text);
  return manifest == Outcome::accepted || config == Outcome::accepted ? Outcome::accepted : Outcome::refused;
}

}  // namespace duquant::fuzz

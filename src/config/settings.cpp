#include "config/settings.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstring>
#include <unordered_map>

#include "base/regex.hpp"
#include "duquant/error.hpp"
#include "formats/regular_file.hpp"
#include "formats/strict_json.hpp"

#include <fstream>
#include <iterator>

namespace duquant {
namespace {

// Variables the runtime reads that do not affect what is packed: accepted and ignored.
constexpr std::string_view kRuntimeOnly[] = {"PACKDIR", "DRYRUN",       "DEBUG",
                                             "PROFILE", "PROFILE_SYNC", "PRECACHE_WEIGHTS"};

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  while (true) {
    const std::size_t at = s.find(sep);
    parts.push_back(s.substr(0, at));
    if (at == std::string_view::npos) return parts;
    s.remove_prefix(at + 1);
  }
}

// Python's int() and float() accept surrounding spaces and a leading '+'; from_chars does not.
std::string_view number_text(std::string_view text) {
  std::string_view t = trim(text);
  if (t.size() > 1 && t.front() == '+' && t[1] != '-' && t[1] != '+') t.remove_prefix(1);
  return t;
}

long long parse_int_text(std::string_view text, const std::string& source, const std::string& whole) {
  const std::string_view t = number_text(text);
  long long v = 0;
  const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  DQ_CHECK(!t.empty() && ec == std::errc() && end == t.data() + t.size(), usage, "{}: '{}' is not an integer", source,
           whole);
  return v;
}

int parse_int(const Setting& s, int lo, int hi) {
  const long long v = parse_int_text(s.value, s.source, s.value);
  DQ_CHECK(v >= lo && v <= hi, usage, "{}: {} is out of range ({} to {})", s.source, v, lo, hi);
  return static_cast<int>(v);
}

double parse_float(const Setting& s, double lo, double hi, bool lo_open) {
  const std::string_view t = number_text(s.value);
  double v = 0;
  const auto [end, ec] = std::from_chars(t.data(), t.data() + t.size(), v);
  DQ_CHECK(!t.empty() && ec == std::errc() && end == t.data() + t.size() && std::isfinite(v), usage,
           "{}: '{}' is not a finite number", s.source, s.value);
  DQ_CHECK((lo_open ? v > lo : v >= lo) && v <= hi, usage, "{}: {} is out of range ({} {} to {})", s.source, s.value,
           lo_open ? "above" : "from", lo, hi);
  return v;
}

bool parse_bool(const Setting& s) {
  const std::string_view t = trim(s.value);
  if (t == "1" || t == "true" || t == "True") return true;
  if (t == "0" || t == "false" || t == "False") return false;
  fail(ErrorKind::usage,
       "{}: '{}' is not a boolean; use 1 or 0 (true/false and True/False also work; the runtime would read "
       "any other value as on)",
       s.source, s.value);
}

RowRot parse_row_rot(const Setting& s) {
  const std::string_view t = trim(s.value);
  if (t == "restore") return RowRot::restore;
  if (t == "0") return RowRot::off;
  if (t == "propagate") return RowRot::propagate;
  fail(ErrorKind::usage, "{}: '{}' is not a row rotation mode (restore, 0 or propagate)", s.source, s.value);
}

constexpr int kMinWbits = 2, kMaxWbits = 8;

int parse_bits_text(std::string_view text, const Setting& s) {
  const long long bits = parse_int_text(text, s.source, s.value);
  DQ_CHECK(bits >= kMinWbits && bits <= kMaxWbits, usage, "{}: {} weight bits in '{}' is out of range ({} to {})",
           s.source, bits, s.value, kMinWbits, kMaxWbits);
  return static_cast<int>(bits);
}

// "name:bits,name:bits" (the runtime's WBITS format); the name is everything before the last ':'.
std::vector<std::pair<std::string, int>> parse_wbits(const Setting& s) {
  std::vector<std::pair<std::string, int>> out;
  std::unordered_map<std::string, std::size_t> index;  // name -> its entry in out (100,000 names: no rescans)
  for (std::string_view item : split(s.value, ',')) {
    item = trim(item);
    if (item.empty()) continue;
    const std::size_t colon = item.rfind(':');
    DQ_CHECK(colon != std::string_view::npos && colon > 0, usage, "{}: '{}' is not 'layer:bits' (in '{}')", s.source,
             item, s.value);
    const std::string name(trim(item.substr(0, colon)));
    const int bits = parse_bits_text(item.substr(colon + 1), s);
    const auto [same, added] = index.try_emplace(name, out.size());
    DQ_CHECK(added || out[same->second].second == bits, usage, "{}: layer '{}' is given {} and {} bits", s.source, name,
             added ? 0 : out[same->second].second, bits);
    if (added) out.emplace_back(name, bits);
  }
  return out;
}

// "REGEX=bits"; the expression is everything before the last '='.
std::pair<std::string, int> parse_wbits_rule(const Setting& s) {
  const std::size_t eq = s.value.rfind('=');
  DQ_CHECK(eq != std::string::npos && eq > 0, usage, "{}: '{}' is not 'REGEX=bits'", s.source, s.value);
  std::string pattern = s.value.substr(0, eq);
  Regex check(pattern, s.source);  // reject a bad expression now, naming its source
  return {std::move(pattern), parse_bits_text(std::string_view(s.value).substr(eq + 1), s)};
}

// A name prefix: printable ASCII without spaces (an empty one is allowed: --strip-prefix '' keeps
// the stored names).
std::string check_prefix(const Setting& s) {
  for (const char ch : s.value)
    DQ_CHECK(ch > ' ' && ch < 0x7f, usage, "{}: '{}' is not a name prefix (printable ASCII without spaces)", s.source,
             s.value);
  DQ_CHECK(s.value.size() <= 1000, usage, "{}: a prefix of {} characters is too long", s.source, s.value.size());
  return s.value;
}

// Every value ends up in JSON output (the manifest's configuration, `list-linears --json`) and is
// matched against names that are UTF-8: text that is not UTF-8 is refused before any work.
void check_utf8(const Setting& s) {
  if (const auto at = formats::invalid_utf8_offset(s.value))
    fail(ErrorKind::usage,
         "{}: the value is not valid UTF-8 (byte 0x{:02x} at offset {}); names, scopes and "
         "expressions must be UTF-8 text",
         s.source, static_cast<unsigned char>(s.value[*at]), *at);
}

}  // namespace

const std::vector<KnobInfo>& knob_table() {
  static const std::vector<KnobInfo> table{
      {Knob::scope, "SCOPE", "--scope"},
      {Knob::include, "INCLUDE", "--include"},
      {Knob::exclude, "EXCLUDE", "--exclude"},
      {Knob::layers, "LAYERS", "--layers"},
      {Knob::include_action_head, "INCLUDE_ACTION_HEAD", "--include-action-head"},
      {Knob::wbits_default, "WBITS_DEFAULT", "--wbits-default"},
      {Knob::wbits, "WBITS", "--wbits"},
      {Knob::wbits_rules, "", "--wbits-rule"},
      {Knob::abits, "ABITS", "--abits"},
      {Knob::block, "BLOCK", "--block"},
      {Knob::block_out, "BLOCK_OUT", "--block-out"},
      {Knob::permute, "PERMUTE", "--permute"},
      {Knob::row_rot, "ROW_ROT", "--row-rot"},
      {Knob::lambda_smooth, "LS", "--lambda-smooth"},
      {Knob::act_pct, "ACT_PCT", "--act-pct"},
      {Knob::calib_steps, "CALIB_STEPS", "--calib-steps"},
      {Knob::strip_prefix, "", "--strip-prefix"},
      {Knob::add_prefix, "", "--add-prefix"},
      {Knob::not_linear, "", "--not-linear"},
  };
  return table;
}

const KnobInfo& knob_info(Knob knob) {
  for (const auto& k : knob_table())
    if (k.knob == knob) return k;
  fail(ErrorKind::internal, "knob {} missing from the table", static_cast<int>(knob));
}

void Settings::set(Knob knob, std::string value, std::string source) {
  values_[knob] = Setting{std::move(value), std::move(source)};
}

void Settings::add_wbits_rule(std::string rule, std::string source) {
  wbits_rules_.push_back(Setting{std::move(rule), std::move(source)});
}

void Settings::add_not_linear(std::string pattern, std::string source) {
  not_linear_.push_back(Setting{std::move(pattern), std::move(source)});
}

void Settings::claim_runtime(Runtime runtime, RuntimeSource rank, std::string source) {
  runtime_claims_.push_back(RuntimeClaim{runtime, rank, std::move(source)});
}

Runtime parse_runtime(std::string_view text, const std::string& source) {
  if (text == "openpi") return Runtime::openpi;
  if (text == "gr00t") return Runtime::gr00t;
  fail(ErrorKind::usage, "{}: '{}' is not a runtime (openpi or gr00t)", source, text);
}

namespace {

// The strongest claim; the first of equal strength (a later one of equal strength is the same source).
const RuntimeClaim* strongest_claim(const Settings& settings) {
  const RuntimeClaim* best = nullptr;
  for (const RuntimeClaim& c : settings.runtime_claims())
    if (best == nullptr || c.rank > best->rank) best = &c;
  return best;
}

}  // namespace

std::vector<std::string> overridden_runtime_claims(const Settings& settings) {
  std::vector<std::string> out;
  const RuntimeClaim* best = strongest_claim(settings);
  if (best == nullptr) return out;
  for (const RuntimeClaim& c : settings.runtime_claims())
    if (c.runtime != best->runtime)
      out.push_back(fmt::format("{} implies the {} runtime; {} sets {}, which wins (name one with --runtime)", c.source,
                                runtime_name(c.runtime), best->source, runtime_name(best->runtime)));
  return out;
}

const Setting* Settings::get(Knob knob) const {
  const auto it = values_.find(knob);
  return it == values_.end() ? nullptr : &it->second;
}

std::vector<std::string> apply_environment(std::string_view prefix, char** env, Settings& settings) {
  if (prefix == runtime_env_prefix(Runtime::openpi)) {
    settings.claim_runtime(Runtime::openpi, RuntimeSource::env_prefix, fmt::format("--env-prefix {}", prefix));
  } else if (prefix == runtime_env_prefix(Runtime::gr00t)) {
    settings.claim_runtime(Runtime::gr00t, RuntimeSource::env_prefix, fmt::format("--env-prefix {}", prefix));
  } else {
    fail(ErrorKind::usage, "--env-prefix: '{}' is not a runtime's prefix (OPENPI_DUQUANT_ or GR00T_DUQUANT_)", prefix);
  }
  std::vector<std::string> warnings;
  std::vector<std::string> entries;
  for (char** e = env; e != nullptr && *e != nullptr; ++e) entries.emplace_back(*e);
  std::sort(entries.begin(), entries.end());  // deterministic order of warnings
  for (const std::string& entry : entries) {
    if (entry.compare(0, prefix.size(), prefix) != 0) continue;
    const std::size_t eq = entry.find('=');
    if (eq == std::string::npos) continue;
    const std::string name = entry.substr(0, eq);
    const std::string suffix = name.substr(prefix.size());
    const std::string value = entry.substr(eq + 1);
    const auto known = std::find_if(knob_table().begin(), knob_table().end(),
                                    [&](const KnobInfo& k) { return !k.env.empty() && k.env == suffix; });
    if (known != knob_table().end()) {
      // An empty LAYERS or BLOCK_OUT means "not given", as in the runtime.
      if (value.empty() && (known->knob == Knob::layers || known->knob == Knob::block_out)) continue;
      settings.set(known->knob, value, name);
    } else if (std::find(std::begin(kRuntimeOnly), std::end(kRuntimeOnly), suffix) == std::end(kRuntimeOnly)) {
      warnings.push_back(fmt::format("{} is not a variable the runtime reads; ignored", name));
    }
  }
  return warnings;
}

void apply_config_file(const std::string& path, Settings& settings) {
  // Never blocks: a FIFO, a device or a folder is refused (io), naming what it is.
  const formats::RegularFile file = formats::RegularFile::open(path, "--config " + path);
  DQ_CHECK(file.size() <= 100'000'000, format, "--config {}: larger than 100 MB", path);
  apply_config_text(file.read_all(100'000'000), path, settings);
}

void apply_config_text(std::string_view text, const std::string& path, Settings& settings) {
  nlohmann::json root = formats::parse_strict_json(text, path, 64);
  DQ_CHECK(root.is_object(), format, "{}: a configuration must be a JSON object", path);
  const nlohmann::json& c = root.contains("config") ? root["config"] : root;
  DQ_CHECK(c.is_object(), format, "{}: \"config\" must be an object", path);
  auto text_of = [&](const nlohmann::json& v, const std::string& key) -> std::string {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_boolean()) return v.get<bool>() ? "1" : "0";
    if (v.is_number_integer() || v.is_number_unsigned()) return std::to_string(v.get<long long>());
    if (v.is_number_float()) return fmt::format("{}", v.get<double>());
    fail(ErrorKind::format, "{}: \"{}\" must be a string, number or boolean, found {}", path, key,
         formats::json_kind(v));
  };
  static const std::map<std::string, Knob> keys{{"scope", Knob::scope},
                                                {"include", Knob::include},
                                                {"exclude", Knob::exclude},
                                                {"include_action_head", Knob::include_action_head},
                                                {"wbits_default", Knob::wbits_default},
                                                {"abits", Knob::abits},
                                                {"block", Knob::block},
                                                {"block_out", Knob::block_out},
                                                {"permute", Knob::permute},
                                                {"row_rot", Knob::row_rot},
                                                {"lambda_smooth", Knob::lambda_smooth},
                                                {"act_pct", Knob::act_pct},
                                                {"calib_steps", Knob::calib_steps}};
  for (const auto& [key, value] : c.items()) {
    const std::string source = path + ": " + key;
    if (const auto k = keys.find(key); k != keys.end()) {
      settings.set(k->second, text_of(value, key), source);
    } else if (key == "layers") {
      DQ_CHECK(value.is_array(), format, "{}: must be an array of names", source);
      std::string joined;
      for (const auto& v : value) joined.append(joined.empty() ? "" : ",").append(text_of(v, key));
      if (!joined.empty()) settings.set(Knob::layers, joined, source);
    } else if (key == "wbits") {
      DQ_CHECK(value.is_object(), format, "{}: must be an object of layer: bits", source);
      std::string joined;
      for (const auto& [name, bits] : value.items())
        joined.append(joined.empty() ? "" : ",").append(name).append(":").append(text_of(bits, key));
      if (!joined.empty()) settings.set(Knob::wbits, joined, source);
    } else if (key == "wbits_rules") {
      DQ_CHECK(value.is_array(), format, "{}: must be an array of {{pattern, bits}}", source);
      for (const auto& r : value) {
        DQ_CHECK(r.is_object() && r.contains("pattern") && r.contains("bits"), format,
                 "{}: each rule needs pattern and bits", source);
        settings.add_wbits_rule(text_of(r["pattern"], key) + "=" + text_of(r["bits"], key), source);
      }
    } else if (key == "runtime") {
      const std::string v = text_of(value, key);
      DQ_CHECK(v == "openpi" || v == "gr00t", format, "{}: '{}' is not openpi or gr00t", source, v);
      settings.claim_runtime(parse_runtime(v, source), RuntimeSource::config, source);
    } else if (key == "strip_prefix" || key == "add_prefix") {
      if (!value.is_null())
        settings.set(key == "strip_prefix" ? Knob::strip_prefix : Knob::add_prefix, text_of(value, key), source);
    } else if (key == "not_linear") {
      DQ_CHECK(value.is_array(), format, "{}: must be an array of regular expressions", source);
      for (const auto& v : value) settings.add_not_linear(text_of(v, key), source);
    } else if (key == "preset") {
      if (!value.is_null()) settings.preset = text_of(value, key);  // informational: its knobs are listed too
    } else {
      fail(ErrorKind::usage, "{}: unknown configuration key '{}'", path, key);
    }
  }
}

RunConfig resolve(const Settings& settings) {
  for (const KnobInfo& k : knob_table())
    if (const Setting* s = settings.get(k.knob)) check_utf8(*s);
  for (const Setting& s : settings.wbits_rules()) check_utf8(s);
  for (const Setting& s : settings.not_linear()) check_utf8(s);
  check_utf8(Setting{settings.preset, "preset"});
  RunConfig config;
  for (const RuntimeClaim& a : settings.runtime_claims())
    for (const RuntimeClaim& b : settings.runtime_claims())
      DQ_CHECK(a.runtime == b.runtime || a.rank < RuntimeSource::config || b.rank < RuntimeSource::config, usage,
               "{} says {} and {} says {}: name one runtime", a.source, runtime_name(a.runtime), b.source,
               runtime_name(b.runtime));
  if (const RuntimeClaim* best = strongest_claim(settings)) config.runtime = best->runtime;
  config.preset = settings.preset;
  SelectionConfig& sel = config.selection;
  QuantConfig& q = config.quant;

  sel.include = default_include(config.runtime);
  sel.exclude = default_exclude(config.runtime);
  if (const Setting* s = settings.get(Knob::scope)) sel.scope = s->value;
  if (const Setting* s = settings.get(Knob::include)) sel.include = s->value;
  if (const Setting* s = settings.get(Knob::exclude)) sel.exclude = s->value;
  Regex include_check(sel.include,
                      settings.get(Knob::include) ? settings.get(Knob::include)->source : "default include");
  Regex exclude_check(sel.exclude,
                      settings.get(Knob::exclude) ? settings.get(Knob::exclude)->source : "default exclude");
  for (const Setting& s : settings.not_linear()) {
    Regex check(s.value, s.source);
    sel.not_linear.push_back(s.value);
  }
  if (const Setting* s = settings.get(Knob::strip_prefix)) config.naming.strip_prefix = check_prefix(*s);
  if (const Setting* s = settings.get(Knob::add_prefix)) {
    config.naming.add_prefix = check_prefix(*s);
    DQ_CHECK(!config.naming.add_prefix->empty(), usage, "{}: the prefix is empty", s->source);
  }
  if (const Setting* s = settings.get(Knob::layers)) {
    for (std::string_view name : split(s->value, ','))
      if (!trim(name).empty()) sel.layers.emplace_back(trim(name));
  }
  if (const Setting* s = settings.get(Knob::include_action_head)) sel.include_action_head = parse_bool(*s);
  if (const Setting* s = settings.get(Knob::wbits)) sel.wbits = parse_wbits(*s);
  for (const Setting& rule : settings.wbits_rules()) sel.wbits_rules.push_back(parse_wbits_rule(rule));

  if (const Setting* s = settings.get(Knob::wbits_default)) q.wbits_default = parse_int(*s, kMinWbits, kMaxWbits);
  if (const Setting* s = settings.get(Knob::abits)) q.abits = parse_int(*s, 2, 16);
  if (const Setting* s = settings.get(Knob::block)) q.block = parse_int(*s, 1, 4096);
  q.block_out = q.block;
  if (const Setting* s = settings.get(Knob::block_out)) q.block_out = parse_int(*s, 1, 4096);
  if (const Setting* s = settings.get(Knob::permute)) q.permute = parse_bool(*s);
  if (const Setting* s = settings.get(Knob::row_rot)) q.row_rot = parse_row_rot(*s);
  if (const Setting* s = settings.get(Knob::lambda_smooth)) q.lambda_smooth = parse_float(*s, 0.0, 1.0, false);
  if (const Setting* s = settings.get(Knob::act_pct)) q.act_pct = parse_float(*s, 0.0, 100.0, true);
  if (const Setting* s = settings.get(Knob::calib_steps)) q.calib_steps = parse_int(*s, 1, 1'000'000);
  return config;
}

}  // namespace duquant

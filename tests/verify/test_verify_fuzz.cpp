// No input crashes verify: seeded random mutations of every file of a good pack (each npz, both as
// raw bytes and as a valid ZIP holding mutated .npy members; manifest.json, as bytes and as JSON
// with values of the wrong kind; quantized.safetensors, as bytes and with a mutated header), each
// verified with and without the checkpoint. Every run must end with 0, 1 (a report on standard
// output that parses as JSON), 3 or 4 (a `duquant: error:` message) — never a signal, a sanitizer
// report or 70 (internal error).
//
// DUQUANT_VERIFY_FUZZ_ITERATIONS sets the mutations per test (default 250; 40 under sanitizers),
// DUQUANT_VERIFY_FUZZ_SEED the seed. A failing input is kept in the test's temp folder and the
// message names the seed, the iteration and the mutations, so it can be replayed.
#include <gtest/gtest.h>

#include <cstdlib>
#include <random>

#include "verify/verify_test_util.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define DUQUANT_TEST_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DUQUANT_TEST_SANITIZED 1
#endif
#endif

namespace duquant {
namespace {

using namespace vtest;
using Rng = std::mt19937_64;

const std::string kCkpt = test::tiny_checkpoint().string();

int iterations() {
  if (const char* e = std::getenv("DUQUANT_VERIFY_FUZZ_ITERATIONS"); e != nullptr && *e != '\0') return std::atoi(e);
#ifdef DUQUANT_TEST_SANITIZED
  return 40;
#else
  return 250;
#endif
}

std::uint64_t base_seed() {
  if (const char* e = std::getenv("DUQUANT_VERIFY_FUZZ_SEED"); e != nullptr && *e != '\0')
    return std::strtoull(e, nullptr, 0);
  return 0x5eed0f7e57ULL;
}

std::size_t pick(Rng& rng, std::size_t n) {
  return n == 0 ? 0 : std::uniform_int_distribution<std::size_t>(0, n - 1)(rng);
}

// ---------------------------------------------------------------------------------------------
// Byte mutations

// One random byte-level mutation of `s`, biased to [lo, hi) when that range is not empty;
// appends what it did to `log`.
void mutate_bytes(std::string& s, Rng& rng, std::string& log, std::size_t lo = 0, std::size_t hi = 0) {
  if (hi <= lo || hi > s.size()) lo = 0, hi = s.size();
  auto pos = [&]() { return hi > lo ? lo + pick(rng, hi - lo) : 0; };
  static const std::vector<std::string> interesting{std::string("\x00\x00\x00\x00", 4),
                                                    std::string("\xff\xff\xff\xff", 4),
                                                    std::string("\xff\xff\xff\x7f", 4),
                                                    std::string("\x00\x00\x00\x80", 4),
                                                    std::string("\x01\x00\x00\x00", 4),
                                                    std::string("\xff\xff", 2),
                                                    std::string("\x00\x00", 2),
                                                    std::string("\xff\xff\xff\xff\xff\xff\xff\xff", 8),
                                                    std::string("\x00\x00\x00\x00\x00\x00\x00\x80", 8),
                                                    std::string("\x00\x00\xc0\x7f", 4) /* NaN */,
                                                    std::string("\x00\x00\x80\x7f", 4) /* Inf */};
  switch (pick(rng, 7)) {
    case 0: {  // flip bits
      const std::size_t n = 1 + pick(rng, 8);
      for (std::size_t k = 0; k < n && !s.empty(); ++k) {
        const std::size_t p = pos();
        s[p] = static_cast<char>(s[p] ^ (1 << pick(rng, 8)));
      }
      log.append(fmt::format(" flip{}", n));
      break;
    }
    case 1: {  // random bytes
      const std::size_t n = 1 + pick(rng, 4);
      for (std::size_t k = 0; k < n && !s.empty(); ++k) s[pos()] = static_cast<char>(pick(rng, 256));
      log.append(fmt::format(" set{}", n));
      break;
    }
    case 2: {  // an interesting value over the bytes at a position
      const std::string& v = interesting[pick(rng, interesting.size())];
      const std::size_t p = pos();
      for (std::size_t k = 0; k < v.size() && p + k < s.size(); ++k) s[p + k] = v[k];
      log.append(fmt::format(" value@{}", p));
      break;
    }
    case 3: {  // truncate
      const std::size_t n = pick(rng, s.size() + 1);
      s.resize(n);
      log.append(fmt::format(" truncate{}", n));
      break;
    }
    case 4: {  // insert random bytes
      const std::size_t n = 1 + pick(rng, 64), p = s.empty() ? 0 : pos();
      std::string ins(n, '\0');
      for (char& c : ins) c = static_cast<char>(pick(rng, 256));
      s.insert(std::min(p, s.size()), ins);
      log.append(fmt::format(" insert{}@{}", n, p));
      break;
    }
    case 5: {  // delete a range
      if (s.empty()) break;
      const std::size_t p = pos(), n = 1 + pick(rng, 64);
      s.erase(p, n);
      log.append(fmt::format(" erase{}@{}", n, p));
      break;
    }
    default: {  // copy a chunk over another place
      if (s.size() < 2) break;
      const std::size_t from = pick(rng, s.size()), to = pos(), n = 1 + pick(rng, 128);
      const std::string chunk = s.substr(from, n);
      for (std::size_t k = 0; k < chunk.size() && to + k < s.size(); ++k) s[to + k] = chunk[k];
      log.append(fmt::format(" copy{}@{}->{}", n, from, to));
      break;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// JSON mutations

json random_value(Rng& rng) {
  switch (pick(rng, 14)) {
    case 0: return nullptr;
    case 1: return true;
    case 2: return -1;
    case 3: return 0;
    case 4: return 1e308;
    case 5: return std::numeric_limits<std::uint64_t>::max();
    case 6: return std::numeric_limits<std::int64_t>::min();
    case 7: return 0.5;
    case 8: return "";
    case 9: return "../../etc/passwd";
    case 10: return json::array();
    case 11: return json::object();
    case 12: return json::array({1, 2, 3});
    default: return std::string(300, 'x');
  }
}

// Collects pointers to every node of `j`.
void nodes(json& j, std::vector<json*>& out) {
  out.push_back(&j);
  if (j.is_object() || j.is_array())
    for (auto& c : j) nodes(c, out);
}

void mutate_json(json& j, Rng& rng, std::string& log) {
  std::vector<json*> all;
  nodes(j, all);
  json* n = all[pick(rng, all.size())];
  switch (pick(rng, 4)) {
    case 0:
    case 1:
      *n = random_value(rng);
      log.append(" json-replace");
      break;
    case 2:  // remove a key or element
      if (n->is_object() && !n->empty()) {
        auto it = n->begin();
        std::advance(it, static_cast<std::ptrdiff_t>(pick(rng, n->size())));
        n->erase(it);
        log.append(" json-erase");
      } else if (n->is_array() && !n->empty()) {
        n->erase(pick(rng, n->size()));
        log.append(" json-erase");
      }
      break;
    default:  // a number nudged
      if (n->is_number_integer()) {
        *n = n->get<std::int64_t>() + static_cast<std::int64_t>(pick(rng, 5)) - 2;
        log.append(" json-nudge");
      } else if (n->is_array()) {
        n->push_back(random_value(rng));
        log.append(" json-append");
      }
      break;
  }
}

// ---------------------------------------------------------------------------------------------
// The harness

struct Target {
  std::string file;   // file name in the pack
  std::string label;  // for messages
};

class Fuzz {
 public:
  Fuzz(fs::path pack, std::vector<std::string> verify_extra, std::uint64_t salt)
      : pack_(std::move(pack)), extra_(std::move(verify_extra)), rng_(base_seed() ^ salt), salt_(salt) {}

  // Runs `n` iterations; `mutate(bytes, rng, log)` changes the chosen file's bytes (repeated until
  // they differ). `checksummed`: the manifest holds the files' digests, so any change must fail.
  void run(const std::vector<std::string>& files, int n,
           const std::function<void(const std::string& file, std::string& bytes, Rng& rng, std::string& log)>& mutate,
           bool checksummed = false) {
    std::map<std::string, std::string> original;
    for (const auto& f : files) original[f] = read_file(pack_ / f);
    std::map<int, int> codes;
    for (int i = 0; i < n; ++i) {
      const std::string& f = files[static_cast<std::size_t>(i) % files.size()];
      std::string bytes = original[f];
      std::string log;
      for (int attempt = 0; attempt < 20 && bytes == original[f]; ++attempt) mutate(f, bytes, rng_, log);
      if (bytes == original[f]) continue;
      write_file(pack_ / f, bytes);
      std::vector<std::string> args{"verify", pack_.string(), "-j", "1"};
      if (i % 2 == 0) args.insert(args.end(), {"-c", kCkpt});
      if (i % 3 != 2) args.push_back("--json");
      args.insert(args.end(), extra_.begin(), extra_.end());
      const test::CliResult r = test::run_cli(args);
      ++codes[r.exit_code];
      const bool code_ok = r.exit_code == 0 || r.exit_code == 1 || r.exit_code == 3 || r.exit_code == 4;
      bool ok =
          code_ok && r.err.find("Sanitizer") == std::string::npos && r.err.find("runtime error:") == std::string::npos;
      if (ok && (r.exit_code == 3 || r.exit_code == 4)) ok = r.err.find("duquant: error:") != std::string::npos;
      if (ok && (r.exit_code == 0 || r.exit_code == 1) && i % 3 != 2)
        ok = !json::parse(r.out, nullptr, false).is_discarded();
      if (ok && checksummed) ok = r.exit_code != 0;  // a changed file whose digest the manifest holds
      if (!ok) {
        const fs::path keep = pack_.parent_path() / fmt::format("failure-{}-{}", i, f);
        write_file(keep, bytes);
        std::string cmd = "duquant";
        for (const auto& a : args) cmd.append(" ").append(a);
        ADD_FAILURE() << "seed " << base_seed() << " salt " << salt_ << " iteration " << i << ": " << f << " mutated by"
                      << log << " (kept as " << keep << ")\n"
                      << cmd << "\nexit " << r.exit_code << "\n"
                      << r.out.substr(0, 4000) << r.err.substr(0, 4000);
        if (++failures_ >= 5) break;
      }
      write_file(pack_ / f, original[f]);
    }
    std::string summary;
    for (const auto& [code, count] : codes) summary.append(fmt::format(" exit {}: {}", code, count));
    std::printf("%d mutations:%s\n", n, summary.c_str());
    // The mutations must reach past the first check: some runs end with a report (0/1).
    EXPECT_GT(codes[0] + codes[1], 0) << summary;
  }

 private:
  fs::path pack_;
  std::vector<std::string> extra_;
  Rng rng_;
  std::uint64_t salt_;
  int failures_ = 0;
};

const std::vector<std::string> kLayers{layer(0, "self_attn.k_proj"), layer(0, "mlp.down_proj"),
                                       layer(1, "self_attn.o_proj")};

// A small pack of ours: three layers (one at 5 bits, I8 codes), verified clean.
fs::path small_pack() {
  const fs::path dir = vtest::temp_dir() / "pack";
  std::string layers;
  for (const auto& l : kLayers) layers.append(layers.empty() ? "" : ",").append(l);
  std::string wbits = kLayers[1];
  wbits.append(":5");
  const auto p = pack(kCkpt, dir, {"--layers", layers, "--wbits", wbits});
  EXPECT_EQ(p.exit_code, 0) << p.out << p.err;
  expect_clean(verify(dir, {"-c", kCkpt}), kLayers);
  return dir;
}

std::vector<std::string> npz_files() {
  std::vector<std::string> out;
  for (const auto& l : kLayers) out.push_back(npz_name(l));
  return out;
}

// A valid ZIP whose members were mutated: reaches the .npy parser and the semantic checks.
void mutate_npz_members(std::string& bytes, Rng& rng, std::string& log) {
  std::vector<Member> members;
  {
    const std::vector<std::byte> b = to_bytes(bytes);
    for (const formats::ZipMember& m : formats::parse_zip(b, "fuzz")) {
      std::string key = m.name.substr(0, m.name.size() - 4);
      members.push_back({key, std::string(reinterpret_cast<const char*>(m.data.data()), m.data.size())});
    }
  }
  const std::size_t rounds = 1 + pick(rng, 2);
  for (std::size_t k = 0; k < rounds; ++k) {
    Member& m = members[pick(rng, members.size())];
    switch (pick(rng, 6)) {
      case 0:
      case 1:  // the npy header
        mutate_bytes(m.npy, rng, log, 0, std::min<std::size_t>(m.npy.size(), 128));
        log.append("[").append(m.key).append(" header]");
        break;
      case 2:
      case 3:  // anywhere in the member
        mutate_bytes(m.npy, rng, log);
        log.append("[").append(m.key).append("]");
        break;
      case 4:  // drop a member
        log.append(" drop[").append(m.key).append("]");
        members.erase(members.begin() + static_cast<std::ptrdiff_t>(&m - members.data()));
        if (members.empty()) return;
        break;
      default: {  // add a copy under another rotation name, or swap two members
        if (pick(rng, 2) == 0) {
          Member c = m;
          c.key = pick(rng, 2) ? "Rin_" : "Rout_";
          c.key.append(std::to_string(pick(rng, 40)));
          bool dup = false;
          for (const auto& x : members) dup = dup || x.key == c.key;
          if (!dup) members.push_back(c), log.append(" add[").append(c.key).append("]");
        } else {
          std::swap(m, members[pick(rng, members.size())]);
          log.append(" swap");
        }
        break;
      }
    }
  }
  const fs::path tmp = fs::temp_directory_path() / fmt::format("duquant-fuzz-{}.npz", ::getpid());
  write_members(tmp, members);
  bytes = read_file(tmp);
  fs::remove(tmp);
}

void mutate_npz(const std::string&, std::string& bytes, Rng& rng, std::string& log) {
  if (pick(rng, 2) == 0) {
    mutate_npz_members(bytes, rng, log);
  } else {
    const std::size_t rounds = 1 + pick(rng, 3);
    for (std::size_t k = 0; k < rounds; ++k) mutate_bytes(bytes, rng, log);
  }
}

TEST(VerifyFuzz, OursNpz) {
  const fs::path dir = small_pack();
  ASSERT_TRUE(fs::exists(dir / "manifest.json"));
  Fuzz(dir, {}, 1).run(npz_files(), iterations(), mutate_npz, true);
}

// The runtime's npz files (no manifest, no checksums: every mutation reaches the decoder and the
// checks), with the selection known.
TEST(VerifyFuzz, PythonNpz) {
  const fs::path dir = vtest::temp_dir() / "b16";
  fs::create_directories(dir);
  for (const auto& f : npz_files()) {
    fs::copy_file(fixture_pack("b16") / f, dir / f);
    fs::permissions(dir / f, fs::perms::owner_write, fs::perm_options::add);
  }
  expect_clean(verify(dir, {"-c", kCkpt}), kLayers);
  std::string layers;
  for (const auto& l : kLayers) layers.append(layers.empty() ? "" : ",").append(l);
  Fuzz(dir, {"--layers", layers}, 2).run(npz_files(), iterations(), mutate_npz);
}

TEST(VerifyFuzz, Manifest) {
  const fs::path dir = small_pack();
  ASSERT_TRUE(fs::exists(dir / "manifest.json"));
  Fuzz(dir, {}, 3)
      .run({"manifest.json"}, iterations(), [](const std::string&, std::string& bytes, Rng& rng, std::string& log) {
        if (pick(rng, 3) != 0) {
          json j = json::parse(bytes);
          const std::size_t rounds = 1 + pick(rng, 2);
          for (std::size_t k = 0; k < rounds; ++k) mutate_json(j, rng, log);
          bytes = j.dump(1);
        } else {
          mutate_bytes(bytes, rng, log);
        }
      });
}

TEST(VerifyFuzz, QuantizedSafetensors) {
  const fs::path dir = small_pack();
  ASSERT_TRUE(fs::exists(dir / "manifest.json"));
  Fuzz(dir, {}, 4)
      .run(
          {"quantized.safetensors"}, iterations(),
          [](const std::string&, std::string& bytes, Rng& rng, std::string& log) {
            std::uint64_t n = 0;
            std::memcpy(&n, bytes.data(), 8);
            switch (pick(rng, 3)) {
              case 0: {  // the JSON header as JSON (the length prefix follows it)
                json h = json::parse(bytes.substr(8, n));
                const std::size_t rounds = 1 + pick(rng, 2);
                for (std::size_t k = 0; k < rounds; ++k) mutate_json(h, rng, log);
                const std::string text = h.dump();
                const std::uint64_t len = text.size();
                std::string out(8, '\0');
                std::memcpy(out.data(), &len, 8);
                out.append(text).append(bytes.substr(8 + n));
                bytes = std::move(out);
                break;
              }
              case 1:  // the header's bytes, length prefix included
                mutate_bytes(bytes, rng, log, 0, 8 + n);
                break;
              default: mutate_bytes(bytes, rng, log); break;
            }
          },
          true);
}

}  // namespace
}  // namespace duquant

// Helpers of the verify tests: making good packs (ours with `duquant pack`, copies of the Python
// runtime's fixture packs), running `duquant verify --json`, reading its verdicts, and editing pack
// files byte by byte: npz members (rewritten as valid ZIPs), .npy arrays and headers, and tensors
// of quantized.safetensors located through its header.
#pragma once

#include <gtest/gtest.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "formats/npy.hpp"
#include "formats/npz.hpp"

namespace duquant::vtest {

namespace fs = std::filesystem;
using json = nlohmann::json;

inline const std::string kScope = "paligemma_with_expert.gemma_expert.model.";

// "paligemma_with_expert.gemma_expert.model.layers.<i>.<leaf>", e.g. layer(0, "self_attn.q_proj").
inline std::string layer(int i, const char* leaf) {
  std::string s = kScope;
  s.append("layers.").append(std::to_string(i)).append(".").append(leaf);
  return s;
}
inline std::string npz_name(const std::string& layer_name) {
  std::string s = layer_name;
  s.append(".npz");
  return s;
}

// The 14 action-expert layers every good pack of these tests holds.
inline std::vector<std::string> expert_layers() {
  std::vector<std::string> out;
  for (int i = 0; i < 2; ++i)
    for (const char* leaf : {"mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
                             "self_attn.q_proj", "self_attn.v_proj"})
      out.push_back(layer(i, leaf));
  return out;
}

inline fs::path fixture_pack(const std::string& config) {
  std::string name = "openpi-pack-";
  name.append(config);
  return test::fixtures() / name;
}

// ---------------------------------------------------------------------------------------------
// Files

using test::temp_dir;  // tests/common/test_paths.hpp

inline std::string read_file(const fs::path& p) { return test::read_text(p); }

inline void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << "cannot write " << p;
}

// Copies a pack folder (the fixtures are read-only: the copies are made writable).
inline void copy_pack(const fs::path& from, const fs::path& to) {
  fs::create_directories(to);
  for (const auto& e : fs::directory_iterator(from)) {
    if (!e.is_regular_file()) continue;
    const fs::path dst = to / e.path().filename();
    fs::copy_file(e.path(), dst, fs::copy_options::overwrite_existing);
    fs::permissions(dst, fs::perms::owner_read | fs::perms::owner_write, fs::perm_options::add);
  }
}

// ---------------------------------------------------------------------------------------------
// Running the binary

// Fails the current test if the run was ended by a signal or a sanitizer reported anything
// (ASan exits with 1, the code verify uses for "problems found", so the code alone cannot tell).
inline void expect_no_crash(const test::CliResult& r, const std::string& what) {
  EXPECT_LT(r.exit_code, 128) << what << ": ended by signal " << r.exit_code - 128 << "\n" << r.err;
  EXPECT_NE(r.exit_code, 70) << what << ": internal error\n" << r.err;
  EXPECT_EQ(r.err.find("Sanitizer"), std::string::npos) << what << "\n" << r.err;
  EXPECT_EQ(r.err.find("runtime error:"), std::string::npos) << what << "\n" << r.err;
}

// One thread for pack and verify: the output does not depend on it (checked in test_verify_good),
// and on a loaded machine OpenMP's waiting makes 2-thread runs of these tiny packs 10x slower.
inline test::CliResult pack(const fs::path& ckpt, const fs::path& out, const std::vector<std::string>& extra = {}) {
  std::vector<std::string> args{"pack", ckpt.string(), "-o", out.string(), "--preset", "openpi-dit", "--threads", "1"};
  args.insert(args.end(), extra.begin(), extra.end());
  return test::run_cli(args);
}

struct VerifyRun {
  test::CliResult cli;
  json j;             // the --json document (null when stdout was not JSON)
  std::string label;  // command line, for messages
  int exit_code() const { return cli.exit_code; }
};

// `duquant verify DIR --json --threads N [extra...]`; checks that it did not crash and that, when it
// ends with 0 or 1, standard output is one JSON document.
inline VerifyRun verify(const fs::path& pack_dir, const std::vector<std::string>& extra = {}, int threads = 1) {
  std::vector<std::string> args{"verify", pack_dir.string(), "--json", "--threads", std::to_string(threads)};
  args.insert(args.end(), extra.begin(), extra.end());
  VerifyRun v;
  v.label = "duquant";
  for (const auto& a : args) v.label.append(" ").append(a);
  v.cli = test::run_cli(args);
  expect_no_crash(v.cli, v.label);
  if (v.cli.exit_code == 0 || v.cli.exit_code == 1) {
    v.j = json::parse(v.cli.out, nullptr, false);
    EXPECT_FALSE(v.j.is_discarded()) << v.label << ": stdout is not JSON:\n" << v.cli.out << v.cli.err;
    if (v.j.is_discarded()) v.j = nullptr;
  }
  return v;
}

inline std::string describe(const VerifyRun& v) {
  std::string s = v.label;
  s.append("\nexit ").append(std::to_string(v.cli.exit_code)).append("\n");
  s.append(v.cli.out.size() > 20000 ? v.cli.out.substr(0, 20000) : v.cli.out).append(v.cli.err);
  return s;
}

inline const json* find_layer(const VerifyRun& v, const std::string& name) {
  if (!v.j.is_object() || !v.j.contains("layers")) return nullptr;
  for (const json& l : v.j["layers"])
    if (l.value("name", "") == name) return &l;
  return nullptr;
}

// Reason codes of the findings at `level` ("FAIL", "WARN", ...).
inline std::set<std::string> reasons(const json& findings, const std::string& level = "FAIL") {
  std::set<std::string> out;
  for (const json& f : findings)
    if (f.value("level", "") == level) out.insert(f.value("reason", ""));
  return out;
}

inline std::string join(const std::set<std::string>& s) {
  std::string out;
  for (const auto& x : s) out.append(out.empty() ? "" : ", ").append(x);
  return out;
}

// Layer `name` is FAIL with a FAIL finding of reason `reason` (others may come with it).
inline void expect_layer_fail(const VerifyRun& v, const std::string& name, const std::string& reason) {
  const json* l = find_layer(v, name);
  ASSERT_NE(l, nullptr) << "no verdict for layer " << name << "\n" << describe(v);
  EXPECT_EQ(l->value("result", ""), "FAIL") << name << "\n" << describe(v);
  const auto r = reasons((*l)["findings"]);
  EXPECT_TRUE(r.count(reason)) << name << ": expected reason '" << reason << "' among FAIL reasons [" << join(r)
                               << "]\n"
                               << describe(v);
}

// Layer `name` is FAIL and one of `any_of` is among its FAIL reasons.
inline void expect_layer_fail_any(const VerifyRun& v, const std::string& name, const std::set<std::string>& any_of) {
  const json* l = find_layer(v, name);
  ASSERT_NE(l, nullptr) << "no verdict for layer " << name << "\n" << describe(v);
  EXPECT_EQ(l->value("result", ""), "FAIL") << name << "\n" << describe(v);
  const auto r = reasons((*l)["findings"]);
  bool found = false;
  for (const auto& x : any_of) found = found || r.count(x) != 0;
  EXPECT_TRUE(found) << name << ": expected one of [" << join(any_of) << "] among FAIL reasons [" << join(r) << "]\n"
                     << describe(v);
}

// Every layer of the report not in `touched` is OK; `expected_layers` of them at least.
inline void expect_others_ok(const VerifyRun& v, const std::set<std::string>& touched,
                             std::size_t expected_layers = 14) {
  ASSERT_TRUE(v.j.is_object()) << describe(v);
  std::size_t n = 0;
  for (const json& l : v.j["layers"]) {
    const std::string name = l.value("name", "");
    if (touched.count(name)) continue;
    ++n;
    EXPECT_EQ(l.value("result", ""), "OK")
        << "untouched layer " << name << " is not OK: FAIL [" << join(reasons(l["findings"])) << "] WARN ["
        << join(reasons(l["findings"], "WARN")) << "]\n"
        << describe(v);
  }
  EXPECT_EQ(n + touched.size(), expected_layers) << describe(v);
}

// A pack-level finding of `reason` at `level`.
inline void expect_pack_finding(const VerifyRun& v, const std::string& reason, const std::string& level = "FAIL") {
  ASSERT_TRUE(v.j.is_object()) << describe(v);
  const auto r = reasons(v.j["pack_findings"], level);
  EXPECT_TRUE(r.count(reason)) << "expected pack-level " << level << " '" << reason << "' among [" << join(r) << "]\n"
                               << describe(v);
}

inline void expect_no_pack_failures(const VerifyRun& v) {
  ASSERT_TRUE(v.j.is_object()) << describe(v);
  EXPECT_TRUE(reasons(v.j["pack_findings"]).empty()) << describe(v);
  EXPECT_TRUE(reasons(v.j["pack_findings"], "WARN").empty()) << describe(v);
}

// exit 0, result OK, every one of `layers` present and OK without warnings, no pack-level FAIL/WARN.
inline void expect_clean(const VerifyRun& v, const std::vector<std::string>& layers = expert_layers()) {
  EXPECT_EQ(v.exit_code(), 0) << describe(v);
  ASSERT_TRUE(v.j.is_object()) << describe(v);
  EXPECT_EQ(v.j.value("result", ""), "OK") << describe(v);
  EXPECT_EQ(v.j["layers"].size(), layers.size()) << describe(v);
  for (const auto& name : layers) {
    const json* l = find_layer(v, name);
    ASSERT_NE(l, nullptr) << name << "\n" << describe(v);
    EXPECT_EQ(l->value("result", ""), "OK") << name << "\n" << describe(v);
    EXPECT_TRUE(reasons((*l)["findings"], "WARN").empty()) << name << "\n" << describe(v);
  }
  expect_no_pack_failures(v);
}

// ---------------------------------------------------------------------------------------------
// npz members

struct Member {
  std::string key;  // without ".npy"
  std::string npy;  // the complete .npy bytes
};

inline std::vector<std::byte> to_bytes(const std::string& s) {
  std::vector<std::byte> b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

inline std::vector<Member> read_members(const fs::path& npz) {
  const std::vector<std::byte> bytes = to_bytes(read_file(npz));
  std::vector<Member> out;
  for (const formats::ZipMember& m : formats::parse_zip(bytes, npz.string())) {
    std::string key = m.name;
    if (key.size() > 4 && key.compare(key.size() - 4, 4, ".npy") == 0) key.resize(key.size() - 4);
    out.push_back({key, std::string(reinterpret_cast<const char*>(m.data.data()), m.data.size())});
  }
  return out;
}

// Rewrites `npz` as a valid ZIP (fresh CRCs) holding `members`.
inline void write_members(const fs::path& npz, const std::vector<Member>& members) {
  formats::NpzWriter w(npz);
  for (const Member& m : members) w.add(m.key, m.npy);
  w.commit();
}

inline Member* find_member(std::vector<Member>& members, const std::string& key) {
  for (Member& m : members)
    if (m.key == key) return &m;
  return nullptr;
}

// Edits member `key` of `npz` (the rest is kept byte for byte; the ZIP stays valid).
inline void edit_member(const fs::path& npz, const std::string& key, const std::function<void(std::string&)>& edit) {
  std::vector<Member> members = read_members(npz);
  Member* m = find_member(members, key);
  ASSERT_NE(m, nullptr) << npz << " has no member " << key;
  edit(m->npy);
  write_members(npz, members);
}

// Edits the elements of an .npy array of type T in place (the header is kept).
template <typename T>
void edit_npy_values(std::string& npy, const std::function<void(std::vector<T>&)>& edit) {
  const formats::NpyArray a =
      formats::parse_npy(std::span(reinterpret_cast<const std::byte*>(npy.data()), npy.size()), "edit");
  ASSERT_EQ(a.itemsize, sizeof(T)) << a.descr;
  const auto offset = static_cast<std::size_t>(a.data.data() - reinterpret_cast<const std::byte*>(npy.data()));
  std::vector<T> v(a.numel);
  std::memcpy(v.data(), npy.data() + offset, v.size() * sizeof(T));
  edit(v);
  std::memcpy(npy.data() + offset, v.data(), v.size() * sizeof(T));
}

// .npy bytes with a raw header text (padded as numpy does) and raw data.
inline std::string raw_npy(const std::string& header, const std::string& data) {
  std::string h = header;
  const std::size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back('\x01');
  out.push_back('\x00');
  out.push_back(static_cast<char>(h.size() & 0xff));
  out.push_back(static_cast<char>(h.size() >> 8));
  out.append(h).append(data);
  return out;
}

// The data bytes (after the header) of an .npy.
inline std::string npy_data(const std::string& npy) {
  const formats::NpyArray a =
      formats::parse_npy(std::span(reinterpret_cast<const std::byte*>(npy.data()), npy.size()), "data");
  return std::string(reinterpret_cast<const char*>(a.data.data()), a.data.size());
}

// ---------------------------------------------------------------------------------------------
// quantized.safetensors

struct StTensor {
  std::string dtype;
  std::vector<std::uint64_t> shape;
  std::size_t begin = 0, end = 0;  // absolute offsets in the file
};

inline std::map<std::string, StTensor> safetensors_index(const std::string& bytes) {
  std::map<std::string, StTensor> out;
  if (bytes.size() < 8) {
    ADD_FAILURE() << "safetensors file of " << bytes.size() << " bytes";
    return out;
  }
  std::uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const json h = json::parse(bytes.substr(8, n));
  for (const auto& [name, t] : h.items()) {
    if (name == "__metadata__") continue;
    StTensor s;
    s.dtype = t["dtype"].get<std::string>();
    s.shape = t["shape"].get<std::vector<std::uint64_t>>();
    s.begin = 8 + n + t["data_offsets"][0].get<std::size_t>();
    s.end = 8 + n + t["data_offsets"][1].get<std::size_t>();
    out[name] = s;
  }
  return out;
}

// Edits tensor `name` of the safetensors file `path` through `edit(bytes, tensor)`.
inline void edit_tensor(const fs::path& path, const std::string& name,
                        const std::function<void(std::string& bytes, const StTensor& t)>& edit) {
  std::string bytes = read_file(path);
  const auto index = safetensors_index(bytes);
  const auto it = index.find(name);
  ASSERT_NE(it, index.end()) << path << " has no tensor " << name;
  edit(bytes, it->second);
  write_file(path, bytes);
}

}  // namespace duquant::vtest

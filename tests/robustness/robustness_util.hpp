// Helpers of the robustness suite: snapshot and compare pack folders, write small hand-made
// checkpoints (child processes: common/child_process.hpp).
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "formats/safetensors_writer.hpp"

namespace duquant::test {

namespace fs = std::filesystem;

inline constexpr int kKilledBySigkill = 128 + SIGKILL;  // run_cli's exit code of a SIGKILLed run

// Every regular file under `dir` (hidden ones too), relative path -> bytes.
inline std::map<std::string, std::string> snapshot(const fs::path& dir) {
  std::map<std::string, std::string> files;
  if (!fs::exists(dir)) return files;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file()) files[fs::relative(e.path(), dir).string()] = read_text(e.path());
  return files;
}

// Names under `dir`, folders too (relative paths).
inline std::vector<std::string> listing(const fs::path& dir) {
  std::vector<std::string> names;
  if (!fs::exists(dir)) return names;
  for (const auto& e : fs::recursive_directory_iterator(dir)) names.push_back(fs::relative(e.path(), dir).string());
  std::sort(names.begin(), names.end());
  return names;
}

// True when both folders hold the same files with the same bytes; otherwise false and `why`.
inline bool same_folder(const fs::path& a, const fs::path& b, std::string* why) {
  const auto fa = snapshot(a), fb = snapshot(b);
  for (const auto& [name, bytes] : fa) {
    const auto it = fb.find(name);
    if (it == fb.end()) return *why = name + " only in " + a.string(), false;
    if (it->second != bytes) return *why = name + " differs", false;
  }
  for (const auto& [name, bytes] : fb)
    if (!fa.count(name)) return *why = name + " only in " + b.string(), false;
  return true;
}

inline bool contains(const std::string& text, const std::string& what) { return text.find(what) != std::string::npos; }

// A one-layer (optionally more) float32 checkpoint: tensor NAME.weight of shape rows x cols.
struct HandLayer {
  std::string name;
  std::uint64_t rows = 0, cols = 0;
  std::vector<float> values;  // rows * cols
};

inline fs::path write_f32_checkpoint(const fs::path& path, const std::vector<HandLayer>& layers) {
  std::vector<formats::TensorSpec> specs;
  std::string data;
  for (const HandLayer& l : layers) {
    specs.push_back({l.name + ".weight", formats::DType::F32, {l.rows, l.cols}});
    data.append(reinterpret_cast<const char*>(l.values.data()), l.values.size() * sizeof(float));
  }
  formats::SafetensorsWriter w(path, specs, {});
  w.write(std::as_bytes(std::span(data.data(), data.size())));
  w.commit();
  return path;
}

// Deterministic values in [-1, 1) with a few larger outlier columns (what DuQuant is for).
inline std::vector<float> pattern_values(std::uint64_t rows, std::uint64_t cols, std::uint32_t seed) {
  std::vector<float> v(rows * cols);
  std::uint32_t x = seed * 2654435761u + 12345u;
  for (std::uint64_t r = 0; r < rows; ++r)
    for (std::uint64_t c = 0; c < cols; ++c) {
      x = x * 1664525u + 1013904223u;
      float f = static_cast<float>(x >> 8) / static_cast<float>(1u << 24) * 2.0f - 1.0f;
      if (c % 7 == 3) f *= 6.0f;
      v[r * cols + c] = f;
    }
  return v;
}

// ---------------------------------------------------------------------------------------------
// A tiny hand-made model for the hostile-input suites: one norm and q/k/v projections [32, 64] (F32),
// a one-call dump for them, a watchdog runner and a view of a folder that opens nothing but files.

inline constexpr auto kHangLimit = std::chrono::seconds(20);
inline constexpr const char* kNorm = "model.layers.0.input_layernorm";
inline const std::vector<std::string> kLayers{"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                                              "model.layers.0.self_attn.v_proj"};

struct Outcome {
  int code = -1;
  bool hung = false;
  std::string out, err;
};

// Runs `duquant ARGS` with a watchdog: a child still running after 20 s is killed and reported hung.
inline Outcome run_dq(const std::vector<std::string>& args, const fs::path& log_stem) {
  Child child(args, ChildSetup{}, log_stem);
  Outcome r;
  if (!child.started()) return r;
  if (!child.wait_until(std::chrono::steady_clock::now() + kHangLimit)) {
    child.kill();
    r.hung = true;
  }
  r.code = child.wait();
  r.out = child.out();
  r.err = child.err();
  return r;
}

inline void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << bytes;
}

// The one-layer-group checkpoint of these tests: a norm and q/k/v projections of 64 inputs, F32.
inline void write_tensors(const fs::path& path, const std::vector<std::string>& layers, bool norm) {
  std::vector<formats::TensorSpec> specs;
  std::string data;
  if (norm) {
    specs.push_back({std::string(kNorm) + ".weight", formats::DType::F32, {64}});
    const std::vector<float> ones(64, 1.0f);
    data.append(reinterpret_cast<const char*>(ones.data()), ones.size() * sizeof(float));
  }
  std::uint32_t seed = 1;
  for (const std::string& l : layers) {
    specs.push_back({l + ".weight", formats::DType::F32, {32, 64}});
    const std::vector<float> v = pattern_values(32, 64, seed++);
    data.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  }
  formats::SafetensorsWriter w(path, specs, {});
  w.write(std::as_bytes(std::span(data.data(), data.size())));
  w.commit();
}

inline void write_dump(const fs::path& path) {
  std::vector<formats::TensorSpec> specs;
  std::string data;
  std::uint32_t seed = 11;
  for (const std::string& l : kLayers) {
    specs.push_back({l + ".x_0000", formats::DType::F32, {16, 64}});
    const std::vector<float> v = pattern_values(16, 64, seed++);
    data.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  }
  formats::SafetensorsWriter w(path, specs, {});
  w.write(std::as_bytes(std::span(data.data(), data.size())));
  w.commit();
}

// What a folder holds, without following links or opening anything but regular files: relative
// path -> "file:<bytes>", "link:<target>", "dir", "fifo", ...
inline std::map<std::string, std::string> tree(const fs::path& dir) {
  std::map<std::string, std::string> out;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::none, ec), end; !ec && it != end;
       it.increment(ec)) {
    const fs::path p = it->path();
    const std::string rel = fs::relative(p, dir, ec).string();
    const fs::file_type t = fs::symlink_status(p, ec).type();
    if (t == fs::file_type::regular)
      out[rel] = "file:" + read_text(p);
    else if (t == fs::file_type::symlink)
      out[rel] = "link:" + fs::read_symlink(p, ec).string();
    else if (t == fs::file_type::directory)
      out[rel] = "dir";
    else
      out[rel] = "other:" + std::to_string(static_cast<int>(t));
  }
  return out;
}

// The entries of `tree` outside the outputs (relative prefixes).
inline std::map<std::string, std::string> outside(const std::map<std::string, std::string>& t,
                                                  const std::set<std::string>& outputs) {
  std::map<std::string, std::string> r;
  for (const auto& [k, v] : t) {
    bool mine = false;
    for (const std::string& o : outputs) mine = mine || k == o || k.rfind(o + "/", 0) == 0;
    if (!mine) r[k] = v;
  }
  return r;
}

}  // namespace duquant::test

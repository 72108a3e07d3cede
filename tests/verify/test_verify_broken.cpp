// Good packs broken in every way verify must catch. Each test starts from a pack that verifies
// clean (test_verify_good.cpp), breaks one thing, and checks: exit code 1, the broken layer FAIL
// with the expected reason code among its findings (others may come along, e.g. `checksum` for an
// npz of ours whose bytes changed), and every untouched layer still OK. Unusable input ends with
// the documented exit codes (docs/cli.md), never a crash.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "verify/verify_test_util.hpp"

namespace duquant {
namespace {

using namespace vtest;

const std::string kCkpt = test::tiny_checkpoint().string();

const std::string kQ0 = layer(0, "self_attn.q_proj");
const std::string kK0 = layer(0, "self_attn.k_proj");
const std::string kV0 = layer(0, "self_attn.v_proj");
const std::string kO0 = layer(0, "self_attn.o_proj");
const std::string kDown0 = layer(0, "mlp.down_proj");
const std::string kGate0 = layer(0, "mlp.gate_proj");
const std::string kUp0 = layer(0, "mlp.up_proj");
const std::string kQ1 = layer(1, "self_attn.q_proj");
const std::string kK1 = layer(1, "self_attn.k_proj");
const std::string kV1 = layer(1, "self_attn.v_proj");
const std::string kDown1 = layer(1, "mlp.down_proj");
const std::string kUp1 = layer(1, "mlp.up_proj");

// A fresh good pack of ours in the test's temp folder (verified clean first).
fs::path good_ours(const std::vector<std::string>& extra = {}) {
  const fs::path dir = vtest::temp_dir() / "ours";
  const auto p = pack(kCkpt, dir, extra);
  EXPECT_EQ(p.exit_code, 0) << p.out << p.err;
  expect_clean(verify(dir, {"-c", kCkpt}));
  return dir;
}

// A writable copy of one of the runtime's fixture packs (verified clean first).
fs::path good_python(const std::string& config = "b16") {
  const fs::path dir = vtest::temp_dir() / config;
  copy_pack(fixture_pack(config), dir);
  expect_clean(verify(dir, {"-c", kCkpt}));
  return dir;
}

void expect_broken(const VerifyRun& v, const std::string& name, const std::string& reason) {
  EXPECT_EQ(v.exit_code(), 1) << describe(v);
  EXPECT_EQ(v.j.value("result", ""), "FAIL") << describe(v);
  expect_layer_fail(v, name, reason);
}

// ---------------------------------------------------------------------------------------------
// npz decoding

TEST(VerifyBroken, NpzTruncated) {
  for (const bool ours : {true, false}) {
    SCOPED_TRACE(ours ? "ours" : "python b16");
    const fs::path dir = ours ? good_ours() : good_python();
    const fs::path f = dir / npz_name(kDown0);
    const std::string bytes = read_file(f);
    write_file(f, bytes.substr(0, bytes.size() / 2));
    const VerifyRun v = verify(dir, {"-c", kCkpt});
    expect_broken(v, kDown0, "npz");
    if (ours) expect_layer_fail(v, kDown0, "checksum");
    expect_others_ok(v, {kDown0});
  }
}

// An empty file and a file of a few bytes are npz failures too, not crashes.
TEST(VerifyBroken, NpzEmptyOrTiny) {
  const fs::path dir = good_python();
  write_file(dir / npz_name(kQ0), "");
  write_file(dir / npz_name(kK0), "PK\x03\x04");
  write_file(dir / npz_name(kV0), "not a zip at all");
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 1) << describe(v);
  for (const auto& name : {kQ0, kK0, kV0}) expect_layer_fail(v, name, "npz");
  expect_others_ok(v, {kQ0, kK0, kV0});
}

// Broken .npy headers inside a valid ZIP (the npz is rewritten with fresh CRCs), one variant per
// layer of the same pack.
TEST(VerifyBroken, NpzBadNpyHeader) {
  for (const bool ours : {true, false}) {
    SCOPED_TRACE(ours ? "ours" : "python b16");
    const fs::path dir = ours ? good_ours() : good_python();
    struct Variant {
      std::string layer;
      std::string what;
      std::function<void(std::string&)> edit;
    };
    const std::vector<Variant> variants{
        {kQ0, "header dict cut short",
         [](std::string& npy) {
           const std::string data = npy_data(npy);
           npy = raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (128, ", data);
         }},
        {kK0, "shape does not match the data size",
         [](std::string& npy) {
           const std::string data = npy_data(npy);
           npy = raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (100000,), }", data);
         }},
        {kV0, "big-endian dtype",
         [](std::string& npy) {
           const std::string data = npy_data(npy);
           npy = raw_npy(fmt::format("{{'descr': '>f4', 'fortran_order': False, 'shape': ({},), }}", data.size() / 4),
                         data);
         }},
        {kO0, "header length past the member",
         [](std::string& npy) {
           npy[8] = '\xff';
           npy[9] = '\xff';
         }},
        {kGate0, "bad magic", [](std::string& npy) { npy[1] = 'X'; }},
        {kUp0, "unsupported version", [](std::string& npy) { npy[6] = '\x09'; }},
        {kQ1, "non-printable byte in the header", [](std::string& npy) { npy[20] = '\x01'; }},
        {kK1, "shape with a negative dimension",
         [](std::string& npy) {
           const std::string data = npy_data(npy);
           npy = raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (-16,), }", data);
         }},
        {kV1, "header lacks 'shape'",
         [](std::string& npy) {
           const std::string data = npy_data(npy);
           npy = raw_npy("{'descr': '<f4', 'fortran_order': False, }", data);
         }},
        {kDown1, "2-D shape whose product overflows 64 bits",
         [](std::string& npy) {
           const std::string data = npy_data(npy);
           npy = raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", data);
         }},
    };
    std::set<std::string> touched;
    for (const Variant& x : variants) {
      edit_member(dir / npz_name(x.layer), "weight_scale", x.edit);
      touched.insert(x.layer);
    }
    const VerifyRun v = verify(dir, {"-c", kCkpt});
    EXPECT_EQ(v.exit_code(), 1) << describe(v);
    for (const Variant& x : variants) {
      SCOPED_TRACE(x.what);
      expect_layer_fail(v, x.layer, "npz");
    }
    expect_others_ok(v, touched);
  }
}

// A bad header in other members than weight_scale: meta, perm, a rotation, the block list.
TEST(VerifyBroken, NpzBadHeaderInEveryMemberKind) {
  const fs::path dir = good_python();
  const std::vector<std::pair<std::string, std::string>> cases{
      {kQ0, "meta"}, {kK0, "perm"}, {kV0, "Rin_0"}, {kO0, "R_in_blocks"}, {kDown0, "Rout_1"}, {kUp0, "R_out_blocks"}};
  std::set<std::string> touched;
  for (const auto& [name, member] : cases) {
    edit_member(dir / npz_name(name), member, [](std::string& npy) {
      const std::string data = npy_data(npy);
      npy = raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (3, ", data);
    });
    touched.insert(name);
  }
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 1) << describe(v);
  for (const auto& [name, member] : cases) {
    SCOPED_TRACE(member);
    expect_layer_fail(v, name, "npz");
  }
  expect_others_ok(v, touched);
}

// Object arrays (descr '|O', pickled Python objects) are never read.
TEST(VerifyBroken, NpzObjectDtypeMember) {
  for (const bool ours : {true, false}) {
    SCOPED_TRACE(ours ? "ours" : "python b16");
    const fs::path dir = ours ? good_ours() : good_python();
    edit_member(dir / npz_name(kQ0), "weight_scale", [](std::string& npy) {
      npy = raw_npy("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", std::string(8, '\0'));
    });
    edit_member(dir / npz_name(kK0), "perm", [](std::string& npy) {
      const std::string data = npy_data(npy);
      npy = raw_npy(fmt::format("{{'descr': '|O', 'fortran_order': False, 'shape': ({},), }}", data.size() / 8), data);
    });
    edit_member(dir / npz_name(kV0), "meta", [](std::string& npy) {
      npy = raw_npy("{'descr': '|O', 'fortran_order': False, 'shape': (), }", std::string(8, '\0'));
    });
    const VerifyRun v = verify(dir, {"-c", kCkpt});
    EXPECT_EQ(v.exit_code(), 1) << describe(v);
    for (const auto& name : {kQ0, kK0, kV0}) expect_layer_fail(v, name, "npz");
    expect_others_ok(v, {kQ0, kK0, kV0});
  }
}

// A member the runtime needs is missing (the ZIP stays valid).
TEST(VerifyBroken, NpzMemberMissing) {
  const fs::path dir = good_python();
  auto drop = [&](const std::string& name, const std::string& key) {
    std::vector<Member> m = read_members(dir / npz_name(name));
    std::erase_if(m, [&](const Member& x) { return x.key == key; });
    write_members(dir / npz_name(name), m);
  };
  drop(kQ0, "weight_scale");
  drop(kK0, "meta");
  drop(kV0, "R_in_blocks");
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 1) << describe(v);
  for (const auto& name : {kQ0, kK0, kV0}) expect_layer_fail(v, name, "npz");
  expect_others_ok(v, {kQ0, kK0, kV0});
}

// ---------------------------------------------------------------------------------------------
// perm, rotations, meta

TEST(VerifyBroken, PermWithADuplicate) {
  for (const bool ours : {true, false}) {
    SCOPED_TRACE(ours ? "ours" : "python b16");
    const fs::path dir = ours ? good_ours() : good_python();
    edit_member(dir / npz_name(kUp1), "perm", [](std::string& npy) {
      edit_npy_values<std::int64_t>(npy, [](std::vector<std::int64_t>& p) { p[5] = p[0]; });
    });
    // And one out of range.
    edit_member(dir / npz_name(kQ0), "perm", [](std::string& npy) {
      edit_npy_values<std::int64_t>(
          npy, [](std::vector<std::int64_t>& p) { p.back() = static_cast<std::int64_t>(p.size()); });
    });
    const VerifyRun v = verify(dir, {"-c", kCkpt});
    expect_broken(v, kUp1, "perm");
    expect_layer_fail(v, kQ0, "perm");
    if (ours) expect_layer_fail(v, kUp1, "checksum");
    expect_others_ok(v, {kUp1, kQ0});
  }
}

// A valid permutation, but not this weight's zigzag order: fine structurally; against the
// checkpoint it does not fit (ours: `fit`, the digest matches; the runtime's pack: `stale`).
TEST(VerifyBroken, PermValidButSwapped) {
  for (const bool ours : {true, false}) {
    SCOPED_TRACE(ours ? "ours" : "python b16");
    const fs::path dir = ours ? good_ours() : good_python();
    edit_member(dir / npz_name(kQ0), "perm", [](std::string& npy) {
      edit_npy_values<std::int64_t>(npy, [](std::vector<std::int64_t>& p) { std::swap(p[0], p[1]); });
    });
    const VerifyRun v = verify(dir, {"-c", kCkpt});
    expect_broken(v, kQ0, ours ? "fit" : "stale");
    expect_others_ok(v, {kQ0});
  }
}

TEST(VerifyBroken, RotationNotOrthogonal) {
  for (const bool ours : {true, false}) {
    SCOPED_TRACE(ours ? "ours" : "python b16");
    const fs::path dir = ours ? good_ours() : good_python();
    edit_member(dir / npz_name(kGate0), "Rin_0", [](std::string& npy) {
      edit_npy_values<float>(npy, [](std::vector<float>& r) {
        for (float& x : r) x *= 1.1f;
      });
    });
    // A NaN in an output rotation.
    edit_member(dir / npz_name(kO0), "Rout_2", [](std::string& npy) {
      edit_npy_values<float>(npy, [](std::vector<float>& r) { r[3] = std::numeric_limits<float>::quiet_NaN(); });
    });
    const VerifyRun v = verify(dir, {"-c", kCkpt});
    expect_broken(v, kGate0, "rotation");
    expect_layer_fail(v, kO0, "rotation");
    if (ours) expect_layer_fail(v, kGate0, "checksum");
    expect_others_ok(v, {kGate0, kO0});
  }
}

// A rotation of the wrong size, and a block list that does not match the members.
TEST(VerifyBroken, RotationBlocksAndShapes) {
  const fs::path dir = good_python();
  // Rin_1 of q_proj (16x16) replaced by an 8x8 identity.
  edit_member(dir / npz_name(kQ0), "Rin_1", [](std::string& npy) {
    std::vector<float> eye(64, 0.0f);
    for (int k = 0; k < 8; ++k) eye[static_cast<std::size_t>(k * 9)] = 1.0f;
    npy = formats::npy_f32({8, 8}, eye);
  });
  // R_in_blocks of k_proj lists one block too few.
  edit_member(dir / npz_name(kK0), "R_in_blocks", [](std::string& npy) {
    const std::vector<std::int64_t> blocks{0, 1, 2};
    npy = formats::npy_i64({3}, blocks);
  });
  // Rin_2 of v_proj removed (the list still names it).
  {
    std::vector<Member> m = read_members(dir / npz_name(kV0));
    std::erase_if(m, [](const Member& x) { return x.key == "Rin_2"; });
    write_members(dir / npz_name(kV0), m);
  }
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, kQ0, "shape");
  expect_layer_fail(v, kK0, "rotation-blocks");
  expect_layer_fail(v, kV0, "rotation-blocks");
  expect_others_ok(v, {kQ0, kK0, kV0});
}

std::string replace_once(std::string s, const std::string& from, const std::string& to) {
  const auto p = s.find(from);
  EXPECT_NE(p, std::string::npos) << "'" << from << "' not in '" << s << "'";
  if (p != std::string::npos) s.replace(p, from.size(), to);
  return s;
}

void edit_meta(const fs::path& npz, const std::string& from, const std::string& to) {
  edit_member(npz, "meta", [&](std::string& npy) {
    const formats::NpyArray a =
        formats::parse_npy(std::span(reinterpret_cast<const std::byte*>(npy.data()), npy.size()), "meta");
    npy = formats::npy_unicode_scalar(replace_once(formats::npy_unicode_to_utf8(a, "meta"), from, to));
  });
}

// meta block_size 16 -> 8. Ours: the manifest says 16 -> `meta`. The runtime's pack (no manifest):
// the block lists and rotation shapes no longer fit the block size -> `rotation-blocks` or `shape`.
TEST(VerifyBroken, MetaBlockSizeChanged) {
  for (const bool ours : {true, false}) {
    SCOPED_TRACE(ours ? "ours" : "python b16");
    const fs::path dir = ours ? good_ours() : good_python();
    edit_meta(dir / npz_name(kDown1), "\"block_size\": 16", "\"block_size\": 8");
    const VerifyRun v = verify(dir, {"-c", kCkpt});
    EXPECT_EQ(v.exit_code(), 1) << describe(v);
    if (ours) {
      expect_layer_fail(v, kDown1, "meta");
      expect_layer_fail(v, kDown1, "checksum");
    } else {
      expect_layer_fail_any(v, kDown1, {"rotation-blocks", "shape"});
    }
    expect_others_ok(v, {kDown1});
  }
}

// Other meta changes: features that contradict the checkpoint, enable_permute that contradicts the
// members, meta that is not the runtime's JSON.
TEST(VerifyBroken, MetaOtherFields) {
  const fs::path dir = good_python();
  edit_meta(dir / npz_name(kQ0), "\"out_features\": 128", "\"out_features\": 64");
  edit_meta(dir / npz_name(kK0), "\"enable_permute\": true", "\"enable_permute\": false");
  edit_meta(dir / npz_name(kV0), "\"block_size\": 16", "\"block_size\": \"16\"");
  edit_meta(dir / npz_name(kO0), "{", "[");
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, kQ0, "meta");
  expect_layer_fail(v, kK0, "members");
  expect_layer_fail(v, kV0, "npz");
  expect_layer_fail(v, kO0, "npz");
  expect_others_ok(v, {kQ0, kK0, kV0, kO0});
}

// ---------------------------------------------------------------------------------------------
// Checksums and quantized.safetensors

// One data byte of quantized.safetensors flipped: the file's checksum (pack level) fails.
TEST(VerifyBroken, QuantizedSafetensorsChecksum) {
  const fs::path dir = good_ours();
  edit_tensor(dir / "quantized.safetensors", kK1 + ".qweight", [](std::string& bytes, const StTensor& t) {
    bytes[t.begin + 7] = static_cast<char>(bytes[t.begin + 7] ^ 0x11);
  });
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 1) << describe(v);
  EXPECT_EQ(v.j.value("result", ""), "FAIL") << describe(v);
  expect_pack_finding(v, "checksum");
  // The layer whose codes changed no longer matches its conformance vectors and quality claim.
  expect_layer_fail(v, kK1, "conformance");
  expect_others_ok(v, {kK1});
}

// quantized.safetensors cut short: not a readable safetensors file any more.
TEST(VerifyBroken, QuantizedSafetensorsTruncated) {
  const fs::path dir = good_ours();
  const fs::path f = dir / "quantized.safetensors";
  const std::string bytes = read_file(f);
  write_file(f, bytes.substr(0, bytes.size() - 1));
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 1) << describe(v);
  expect_pack_finding(v, "checksum");
  for (const auto& name : expert_layers()) expect_layer_fail(v, name, "quantized");
}

// An npz of ours changed in a way that is still a valid npz: its checksum fails, nothing else.
TEST(VerifyBroken, NpzChecksum) {
  const fs::path dir = good_ours();
  edit_member(dir / npz_name(kV1), "weight_scale", [](std::string& npy) {
    edit_npy_values<float>(npy, [](std::vector<float>& s) { s[0] = std::nextafter(s[0], 1.0f); });
  });
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, kV1, "checksum");
  expect_others_ok(v, {kV1});
}

TEST(VerifyBroken, NanScale) {
  const fs::path dir = good_ours();
  edit_tensor(dir / "quantized.safetensors", kO0 + ".scales", [](std::string& bytes, const StTensor& t) {
    ASSERT_EQ(t.dtype, "F32");
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::memcpy(bytes.data() + t.begin + 4 * 3, &nan, 4);
  });
  // And a zero scale in another layer.
  edit_tensor(dir / "quantized.safetensors", kQ1 + ".scales", [](std::string& bytes, const StTensor& t) {
    const float zero = 0.0f;
    std::memcpy(bytes.data() + t.begin, &zero, 4);
  });
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, kO0, "scales");
  expect_layer_fail(v, kQ1, "scales");
  expect_pack_finding(v, "checksum");
  expect_others_ok(v, {kO0, kQ1});
}

// weight_scale in the npz (what the runtime reads) NaN or negative.
TEST(VerifyBroken, NpzWeightScaleNotPositive) {
  const fs::path dir = good_python();
  edit_member(dir / npz_name(kQ0), "weight_scale", [](std::string& npy) {
    edit_npy_values<float>(npy, [](std::vector<float>& s) { s[1] = std::numeric_limits<float>::quiet_NaN(); });
  });
  edit_member(dir / npz_name(kK0), "weight_scale",
              [](std::string& npy) { edit_npy_values<float>(npy, [](std::vector<float>& s) { s[0] = -s[0]; }); });
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, kQ0, "weight-scale");
  expect_layer_fail(v, kK0, "weight-scale");
  expect_others_ok(v, {kQ0, kK0});
}

// 5-bit codes (I8) hold [-16, 15]; 7-bit codes [-64, 63].
TEST(VerifyBroken, CodeOutOfRange) {
  const fs::path dir = good_ours({"--wbits-rule", "down_proj=5", "--wbits-rule", "up_proj=7"});
  const fs::path q = dir / "quantized.safetensors";
  auto set_code = [&](const std::string& name, std::size_t k, std::int8_t code) {
    edit_tensor(q, name + ".qweight", [&](std::string& bytes, const StTensor& t) {
      ASSERT_EQ(t.dtype, "I8") << name;
      bytes[t.begin + k] = static_cast<char>(code);
    });
  };
  set_code(kDown0, 0, 100);   // far above 15
  set_code(kDown1, 17, -17);  // just below -16
  set_code(kUp0, 5, 64);      // just above 63 at 7 bits
  set_code(kUp1, 9, 63);      // at the edge of the range: a changed code, but not out of range
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, kDown0, "codes");
  expect_layer_fail(v, kDown1, "codes");
  expect_layer_fail(v, kUp0, "codes");
  const json* edge = find_layer(v, kUp1);
  ASSERT_NE(edge, nullptr);
  EXPECT_EQ(reasons((*edge)["findings"]).count("codes"), 0u) << describe(v);
  expect_layer_fail(v, kUp1, "conformance");
  expect_pack_finding(v, "checksum");
  expect_others_ok(v, {kDown0, kDown1, kUp0, kUp1});
}

// 3-bit codes are stored as 4-bit nibbles (q + 8) and hold [-4, 3]; nibble 15 is code 7.
// Regression: verify once read every U8 qweight as 4 bits and checked nibble codes against [-8, 7]
// whatever the layer's wbits, so this code was only caught indirectly (`conformance`, `quality`).
TEST(VerifyBroken, CodeOutOfRangeBelowFourBits) {
  const fs::path dir = good_ours({"--wbits-rule", "k_proj=3"});
  edit_tensor(dir / "quantized.safetensors", kK0 + ".qweight", [](std::string& bytes, const StTensor& t) {
    ASSERT_EQ(t.dtype, "U8");
    bytes[t.begin] = static_cast<char>((bytes[t.begin] & 0xf0) | 15);  // column 0: code 7
  });
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, kK0, "codes");
  expect_others_ok(v, {kK0});
}

// ---------------------------------------------------------------------------------------------
// Staleness: a pack of another checkpoint with the same names and shapes

fs::path synth_checkpoint(const fs::path& dir) {
  const fs::path out = dir / "synth.safetensors";
  const auto r = test::run_cli({"synth", "-o", out.string(), "--factor", "16", "--layers", "2"});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  return out;
}

TEST(VerifyBroken, StaleOursFromAnotherCheckpoint) {
  const fs::path dir = vtest::temp_dir();
  const fs::path synth = synth_checkpoint(dir);
  const fs::path p = dir / "from-synth";
  const auto r = pack(synth, p);
  ASSERT_EQ(r.exit_code, 0) << r.out << r.err;
  expect_clean(verify(p, {"-c", synth.string()}));
  const VerifyRun v = verify(p, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 1) << describe(v);
  for (const auto& name : expert_layers()) expect_layer_fail(v, name, "stale");
}

TEST(VerifyBroken, StalePythonPackAgainstAnotherCheckpoint) {
  const fs::path synth = synth_checkpoint(vtest::temp_dir());
  // With perm (judged from perm and rotations) and without (rotations alone).
  for (const char* config : {"b16", "b8-noperm-ls0", "b32-out16"}) {
    SCOPED_TRACE(config);
    const VerifyRun v = verify(fixture_pack(config), {"-c", synth.string()});
    EXPECT_EQ(v.exit_code(), 1) << describe(v);
    for (const auto& name : expert_layers()) expect_layer_fail(v, name, "stale");
  }
}

// One layer of ours swapped for the same layer of a pack of another checkpoint (its npz and the
// manifest entry stay consistent with each other, so only the weight digest can tell).
TEST(VerifyBroken, StaleSingleLayer) {
  const fs::path dir = vtest::temp_dir();
  const fs::path synth = synth_checkpoint(dir);
  const fs::path other = dir / "from-synth";
  ASSERT_EQ(pack(synth, other).exit_code, 0);
  const fs::path p = dir / "ours";
  ASSERT_EQ(pack(kCkpt, p).exit_code, 0);
  // The runtime's view (npz only): take away the manifest so the npz is judged from perm/rotations.
  fs::remove(p / "manifest.json");
  fs::remove(p / "quantized.safetensors");
  fs::copy_file(other / npz_name(kGate0), p / npz_name(kGate0), fs::copy_options::overwrite_existing);
  const VerifyRun v = verify(p, {"-c", kCkpt});
  expect_broken(v, kGate0, "stale");
  expect_others_ok(v, {kGate0});
}

// ---------------------------------------------------------------------------------------------
// Missing and unlisted layers

TEST(VerifyBroken, OursNpzMissing) {
  const fs::path dir = good_ours();
  fs::remove(dir / npz_name(kV1));
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, kV1, "missing-file");
  expect_others_ok(v, {kV1});
  // Without the checkpoint too.
  const VerifyRun w = verify(dir);
  expect_broken(w, kV1, "missing-file");
  expect_others_ok(w, {kV1});
}

TEST(VerifyBroken, OursQuantizedSafetensorsMissing) {
  const fs::path dir = good_ours();
  fs::remove(dir / "quantized.safetensors");
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 1) << describe(v);
  expect_pack_finding(v, "missing-file");
  for (const auto& name : expert_layers()) expect_layer_fail(v, name, "quantized");
}

TEST(VerifyBroken, PythonPackMissingLayer) {
  const fs::path dir = good_python();
  fs::remove(dir / npz_name(kDown1));
  const VerifyRun v = verify(dir, {"-c", kCkpt, "--preset", "openpi-dit"});
  expect_broken(v, kDown1, "missing-layer");
  expect_others_ok(v, {kDown1});
  // With the scope alone, the same.
  const VerifyRun s = verify(dir, {"-c", kCkpt, "--scope", kScope});
  expect_broken(s, kDown1, "missing-layer");
  expect_others_ok(s, {kDown1});
  // Without a selection, nothing says the layer should be there: 13 OK and an INFO saying so.
  const VerifyRun n = verify(dir, {"-c", kCkpt});
  EXPECT_EQ(n.exit_code(), 0) << describe(n);
  expect_pack_finding(n, "selection-unknown", "INFO");
  EXPECT_EQ(find_layer(n, kDown1), nullptr) << describe(n);
  expect_others_ok(n, {kDown1});
}

TEST(VerifyBroken, UnlistedNpz) {
  const fs::path dir = good_ours();
  const std::string extra = layer(2, "mlp.down_proj");
  fs::copy_file(dir / npz_name(kDown1), dir / npz_name(extra));
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  expect_broken(v, extra, "unlisted");
  expect_others_ok(v, {extra}, 15);
}

// A reference pack that lacks one of our layers, or has one we lack.
TEST(VerifyBroken, ReferenceMissingAndExtra) {
  const fs::path dir = good_ours();
  const fs::path ref = dir.parent_path() / "ref";
  copy_pack(fixture_pack("b16"), ref);
  fs::remove(ref / npz_name(kQ1));
  const std::string extra = layer(2, "mlp.up_proj");
  fs::copy_file(ref / npz_name(kUp1), ref / npz_name(extra));
  const VerifyRun v = verify(dir, {"-c", kCkpt, "--reference", ref.string()});
  expect_broken(v, kQ1, "reference-missing");
  expect_layer_fail(v, extra, "reference-extra");
  expect_others_ok(v, {kQ1, extra}, 15);
}

// ---------------------------------------------------------------------------------------------
// manifest.json

// Each variant replaces manifest.json; verify reports a pack-level `manifest` FAIL and exits 1.
void expect_manifest_fail(const fs::path& dir, const std::string& text, const std::string& what) {
  SCOPED_TRACE(what);
  write_file(dir / "manifest.json", text);
  const VerifyRun v = verify(dir, {"-c", kCkpt});
  EXPECT_EQ(v.exit_code(), 1) << what << "\n" << describe(v);
  expect_pack_finding(v, "manifest");
}

TEST(VerifyBroken, ManifestWrongTypes) {
  const fs::path dir = good_ours();
  const json good = json::parse(read_file(dir / "manifest.json"));
  struct Variant {
    const char* what;
    std::function<void(json&)> edit;
  };
  const std::vector<Variant> variants{
      {"format_version is a string", [](json& m) { m["format_version"] = "1"; }},
      {"format is another", [](json& m) { m["format"] = "something-else"; }},
      {"layers is an object", [](json& m) { m["layers"] = json::object(); }},
      {"a layer's shape is a string", [](json& m) { m["layers"][0]["shape"] = "128x64"; }},
      {"a layer's shape has three entries",
       [](json& m) {
         m["layers"][0]["shape"] = {1, 2, 3};
       }},
      {"a layer's wbits is a string", [](json& m) { m["layers"][0]["wbits"] = "4"; }},
      {"a layer's wbits is 99", [](json& m) { m["layers"][0]["wbits"] = 99; }},
      {"a layer's npz is null", [](json& m) { m["layers"][0]["npz"] = nullptr; }},
      {"a layer's name is a number", [](json& m) { m["layers"][0]["name"] = 7; }},
      {"a layer's block is negative", [](json& m) { m["layers"][0]["block"] = -16; }},
      {"config.block is a float", [](json& m) { m["config"]["block"] = 16.5; }},
      {"config.permute is a string", [](json& m) { m["config"]["permute"] = "yes"; }},
      {"config is an array", [](json& m) { m["config"] = json::array(); }},
      {"files[0].size is a string", [](json& m) { m["files"][0]["size"] = "big"; }},
      {"files[0].name escapes the folder", [](json& m) { m["files"][0]["name"] = "../x.safetensors"; }},
      {"files is missing", [](json& m) { m.erase("files"); }},
      {"layers is missing", [](json& m) { m.erase("layers"); }},
      {"a layer is listed twice", [](json& m) { m["layers"].push_back(m["layers"][0]); }},
      {"a layer's npz name is not the runtime's", [](json& m) { m["layers"][0]["npz"]["name"] = "x.npz"; }},
      {"a layer's weight digest is a number", [](json& m) { m["layers"][0]["weight_xxh128"] = 12; }},
      {"a quality figure is a string", [](json& m) { m["layers"][0]["quality"]["duquant"]["rel_fro_error"] = "low"; }},
  };
  for (const Variant& x : variants) {
    json m = good;
    x.edit(m);
    expect_manifest_fail(dir, m.dump(1), x.what);
  }
}

// Well-typed manifest values that contradict the pack, its checkpoint or the documented ranges.
// A runtime trusting them would read the pack wrongly (wbits 5 means I8 codes, but the qweight is
// U8 nibbles; a bias the layer does not have; a shard that does not exist), so verify must FAIL.
// Regression: every variant but `abits` verified clean (exit 0) before verify checked the
// manifest's values against the pack (found by the fuzz test and a field-by-field sweep).
TEST(VerifyBroken, ManifestValuesContradictingThePack) {
  const fs::path dir = good_ours();
  const json good = json::parse(read_file(dir / "manifest.json"));
  struct Variant {
    const char* what;
    std::function<void(json&)> edit;
  };
  const std::vector<Variant> variants{
      {"a 4-bit (U8) layer's wbits says 5", [](json& m) { m["layers"][0]["wbits"] = 5; }},
      {"a layer without bias says bias true", [](json& m) { m["layers"][0]["bias"] = true; }},
      {"a layer's dtype is no dtype", [](json& m) { m["layers"][0]["dtype"] = "BF17"; }},
      {"a layer's dtype is not the checkpoint's", [](json& m) { m["layers"][0]["dtype"] = "F32"; }},
      {"a layer's npz size is wrong",
       [](json& m) { m["layers"][0]["npz"]["size"] = m["layers"][0]["npz"]["size"].get<int>() + 1; }},
      {"a layer's quantized shard does not exist",
       [](json& m) { m["layers"][0]["quantized"]["shard"] = "quantized-x.safetensors"; }},
      {"a layer's quantized digest is wrong",
       [](json& m) { m["layers"][0]["quantized"]["xxh128"] = std::string(32, '0'); }},
      {"a layer's quantized byte count is wrong", [](json& m) { m["layers"][0]["quantized"]["bytes"] = 1; }},
      {"config.block contradicts every layer's block", [](json& m) { m["config"]["block"] = 32; }},
      {"config.act_pct outside (0, 100]", [](json& m) { m["config"]["act_pct"] = 150.0; }},
      {"config.abits outside 2..16", [](json& m) { m["config"]["abits"] = 99; }},
      {"conformance.rows is not the vectors' row count", [](json& m) { m["layers"][0]["conformance"]["rows"] = 5; }},
      {"the conformance figure is not the vectors'",
       [](json& m) { m["layers"][0]["conformance"]["rel_error_q_vs_fp"] = 0.5; }},
      {"the selection no longer picks the pack's layers", [](json& m) { m["config"]["include"] = ".*q_proj.*"; }},
      {"sqnr_db contradicts rel_fro_error", [](json& m) { m["layers"][0]["quality"]["duquant"]["sqnr_db"] = 30.0; }},
      {"the round-to-nearest figure is not recomputable",
       [](json& m) {
         m["layers"][0]["quality"]["rtn"]["rel_fro_error"] = 0.9;
         m["layers"][0]["quality"]["rtn"]["sqnr_db"] = -20.0 * std::log10(0.9);
       }},
  };
  for (const Variant& x : variants) {
    SCOPED_TRACE(x.what);
    json m = good;
    x.edit(m);
    write_file(dir / "manifest.json", m.dump(1));
    const VerifyRun v = verify(dir, {"-c", kCkpt});
    EXPECT_EQ(v.exit_code(), 1) << x.what << "\n" << describe(v);
  }
}

// Not JSON at all, or JSON of the wrong kind: a pack-level `manifest` FAIL (exit 1), never a crash.
// Regression: these once ended with exit 3 and no report (PackDirectory::open threw on them).
TEST(VerifyBroken, ManifestInvalidJson) {
  const fs::path dir = good_ours();
  const std::string good = read_file(dir / "manifest.json");
  expect_manifest_fail(dir, good.substr(0, good.size() / 2), "truncated");
  expect_manifest_fail(dir, "", "empty");
  expect_manifest_fail(dir, "[]", "an array");
  expect_manifest_fail(dir, "{\"format\": \"duquant-pack\",}", "trailing comma");
  expect_manifest_fail(dir, good + "{}", "two documents");
}

// ---------------------------------------------------------------------------------------------
// Unusable input: documented exit codes, a message, no report

void expect_exit(const std::vector<std::string>& args, int code, const std::string& what, bool own_message = true) {
  SCOPED_TRACE(what);
  std::vector<std::string> a{"verify"};
  a.insert(a.end(), args.begin(), args.end());
  const auto r = test::run_cli(a);
  expect_no_crash(r, what);
  EXPECT_EQ(r.exit_code, code) << what << "\n" << r.out << r.err;
  EXPECT_TRUE(r.out.empty()) << what << ": no report on standard output\n" << r.out;
  if (own_message) {
    EXPECT_NE(r.err.find("duquant: error:"), std::string::npos) << what << "\n" << r.err;
  }
  EXPECT_FALSE(r.err.empty()) << what;
}

TEST(VerifyUnusable, ExitCodes) {
  const fs::path dir = vtest::temp_dir();
  const fs::path empty = dir / "empty";
  fs::create_directories(empty);
  const fs::path other = dir / "other";
  fs::create_directories(other);
  write_file(other / "README.txt", "not a pack");
  const fs::path good = fixture_pack("b16");

  expect_exit({(dir / "no-such-folder").string()}, 4, "missing pack directory");
  expect_exit({(dir / "no-such-folder").string(), "--json"}, 4, "missing pack directory, --json");
  expect_exit({empty.string()}, 3, "empty folder");
  expect_exit({other.string(), "--json"}, 3, "folder with neither manifest nor npz");
  expect_exit({kCkpt}, 4, "a file, not a folder");
  expect_exit({good.string(), "-c", (dir / "missing.safetensors").string()}, 4, "missing checkpoint");
  expect_exit({good.string(), "--reference", (dir / "no-such-ref").string()}, 4, "missing reference");
  expect_exit({good.string(), "--reference", empty.string()}, 3, "reference without npz");
  // A checkpoint that is not a safetensors file: a format error.
  write_file(dir / "bad.safetensors", "this is not safetensors");
  expect_exit({good.string(), "-c", (dir / "bad.safetensors").string()}, 3, "corrupt checkpoint");
  // Usage errors.
  expect_exit({}, 2, "no pack argument", false);  // the command-line parser's own message
  expect_exit({good.string(), "--threads", "-1"}, 2, "negative thread count");
}

}  // namespace
}  // namespace duquant

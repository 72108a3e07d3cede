// The safetensors reader and writer: the shared fixture, writer round trips (padding, zero-size
// tensors, empty files), data at odd addresses, sharded checkpoints, folder resolution, AtomicFile
// and the errors of read_f32.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "base/elementwise.hpp"
#include "common/child_process.hpp"
#include "common/test_paths.hpp"
#include "duquant/error.hpp"
#include "formats/atomic_file.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/safetensors_header.hpp"
#include "formats/safetensors_writer.hpp"

namespace {

namespace fs = std::filesystem;
using duquant::ErrorKind;
using duquant::formats::Checkpoint;
using duquant::formats::DType;
using duquant::formats::SafetensorsWriter;
using duquant::formats::TensorSpec;
using duquant::test::read_text;
using duquant::test::temp_dir;

void write_file(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string le_u64(std::uint64_t v) {
  std::string s(8, '\0');
  std::memcpy(s.data(), &v, 8);
  return s;
}
std::string le_f32(float f) {
  std::string s(4, '\0');
  std::memcpy(s.data(), &f, 4);
  return s;
}
std::string le_u16(std::uint16_t v) { return {static_cast<char>(v & 0xff), static_cast<char>(v >> 8)}; }

std::vector<float> read_f32(const Checkpoint& ckpt, const std::string& name) {
  const auto* t = ckpt.find(name);
  EXPECT_NE(t, nullptr) << name;
  if (t == nullptr) return {};
  std::vector<float> out(t->numel);
  ckpt.read_f32(*t, out);
  return out;
}

// Runs `f`, expecting a duquant::Error of `kind` whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, ErrorKind kind, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const duquant::Error& e) {
    EXPECT_EQ(duquant::kind_name(e.kind()), std::string(duquant::kind_name(kind))) << e.what();
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << p << " | " << e.what();
  }
}

std::string as_string(std::span<const std::byte> bytes) {
  return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
}

// --- The shared fixture (ground truth read with Python's json module and numpy) ---------------

TEST(SafetensorsFixture, OpensWithItsTensorsAndMetadata) {
  const Checkpoint ckpt = Checkpoint::open(duquant::test::tiny_checkpoint());
  ASSERT_EQ(ckpt.tensors().size(), 82u);
  ASSERT_EQ(ckpt.files().size(), 1u);
  EXPECT_EQ(ckpt.files()[0].size, 2473628u);
  EXPECT_EQ(ckpt.files()[0].header_bytes, 12208u);
  EXPECT_EQ(ckpt.files()[0].metadata, (std::map<std::string, std::string>{{"format", "pt"}}));

  const auto* w = ckpt.find("action_in_proj.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::BF16);
  EXPECT_EQ(w->shape, (std::vector<std::uint64_t>{64, 32}));
  EXPECT_EQ(w->numel, 2048u);
  EXPECT_EQ(w->nbytes, 4096u);
  EXPECT_EQ(w->offset, 8u + 12208u + 2436388u);
  EXPECT_EQ(w->file, 0u);

  const auto* patch =
      ckpt.find("paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight");
  ASSERT_NE(patch, nullptr);
  EXPECT_EQ(patch->shape, (std::vector<std::uint64_t>{72, 3, 14, 14}));
  EXPECT_EQ(patch->offset, 8u + 12208u + 2091904u);
  EXPECT_EQ(ckpt.find("action_in_proj.weight.missing"), nullptr);
  EXPECT_EQ(ckpt.find("__metadata__"), nullptr);
}

TEST(SafetensorsFixture, TensorsAreInStorageOrderBackToBack) {
  const Checkpoint ckpt = Checkpoint::open(duquant::test::tiny_checkpoint());
  const auto& t = ckpt.tensors();
  ASSERT_EQ(t.size(), 82u);
  EXPECT_EQ(t.front().name, "paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.q_proj.weight");
  EXPECT_EQ(t.front().offset, 8u + 12208u);
  EXPECT_EQ(t[1].name, "paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.k_proj.weight");
  EXPECT_EQ(t.back().name, "time_mlp_out.bias");
  for (std::size_t i = 1; i < t.size(); ++i) EXPECT_EQ(t[i].offset, t[i - 1].offset + t[i - 1].nbytes) << t[i].name;
  EXPECT_EQ(t.back().offset + t.back().nbytes, 2473628u);
}

TEST(SafetensorsFixture, ReadF32MatchesAnIndependentDecode) {
  const Checkpoint ckpt = Checkpoint::open(duquant::test::tiny_checkpoint());
  const std::vector<float> w = read_f32(ckpt, "action_in_proj.weight");
  ASSERT_EQ(w.size(), 2048u);
  // Values computed with numpy from the raw bytes (0x3c56, 0x3cf1, 0xb932 ... 0x3ab1).
  EXPECT_EQ(w[0], 0.0130615234375f);
  EXPECT_EQ(w[1], 0.0294189453125f);
  EXPECT_EQ(w[2], -0.0001697540283203125f);
  EXPECT_EQ(w[2047], 0.00135040283203125f);
  EXPECT_EQ(w[107], -1.1796875f);  // largest magnitude
  double sum = 0;
  for (float v : w) sum += v;
  EXPECT_NEAR(sum, -1.6848966777324677, 1e-12);

  // And element by element against the bytes, decoded here without the library.
  const auto bytes = ckpt.bytes(*ckpt.find("action_in_proj.weight"));
  ASSERT_EQ(bytes.size(), 4096u);
  for (std::size_t i = 0; i < w.size(); ++i) {
    const auto lo = static_cast<std::uint32_t>(bytes[2 * i]);
    const auto hi = static_cast<std::uint32_t>(bytes[2 * i + 1]);
    const std::uint32_t bits = (hi << 24) | (lo << 16);
    float expected;
    std::memcpy(&expected, &bits, 4);
    ASSERT_EQ(w[i], expected) << i;
  }

  const std::vector<float> patch = read_f32(
      ckpt, "paligemma_with_expert.paligemma.model.vision_tower.vision_model.embeddings.patch_embedding.weight");
  ASSERT_EQ(patch.size(), 72u * 3 * 14 * 14);
  EXPECT_EQ(patch[0], 0.01519775390625f);
  EXPECT_EQ(patch[6075], 0.10009765625f);
  EXPECT_EQ(patch.back(), -0.039306640625f);
}

// --- Writer round trips -------------------------------------------------------------------------

struct Sample {
  TensorSpec spec;
  std::string data;
};

std::vector<Sample> samples() {
  return {
      {{"w.f32", DType::F32, {2, 3}},
       le_f32(1) + le_f32(-2) + le_f32(0.5f) + le_f32(3e-3f) + le_f32(-0.0f) + le_f32(1e30f)},
      {{"w.f16", DType::F16, {5}}, le_u16(0x3c00) + le_u16(0xc500) + le_u16(0x0001) + le_u16(0x7bff) + le_u16(0x8000)},
      {{"empty.i32", DType::I32, {0, 7}}, ""},
      {{"w.bf16", DType::BF16, {3}}, le_u16(0x3f80) + le_u16(0xc120) + le_u16(0x0080)},
      {{"scalar.u8", DType::U8, {}}, "\x2a"},
      {{"packed.f4", DType::F4, {2, 2}}, "\x12\x34"},
      {{"empty.f16", DType::F16, {0}}, ""},
  };
}

TEST(SafetensorsWriter, RoundTripKeepsEveryByte) {
  const fs::path path = temp_dir() / "model.safetensors";
  const std::map<std::string, std::string> metadata{{"format", "pt"}, {"note", "round trip"}};
  std::vector<TensorSpec> specs;
  std::string data;
  for (const auto& s : samples()) {
    specs.push_back(s.spec);
    data += s.data;
  }
  {
    SafetensorsWriter writer(path, specs, metadata);
    EXPECT_EQ(writer.data_bytes(), data.size());
    for (std::size_t i = 0; i < data.size(); i += 3)  // chunks that straddle tensors
      writer.write(std::as_bytes(std::span(data.data() + i, std::min<std::size_t>(3, data.size() - i))));
    writer.commit();
  }
  const std::string file = read_text(path);
  const std::string header = duquant::formats::safetensors_header_bytes(specs, metadata);
  ASSERT_EQ(file.size(), header.size() + data.size());
  EXPECT_EQ(file.substr(0, header.size()), header);
  EXPECT_EQ(file.substr(header.size()), data);

  const Checkpoint ckpt = Checkpoint::open(path);
  EXPECT_EQ(ckpt.files()[0].header_bytes % 8, 0u);
  EXPECT_EQ(ckpt.files()[0].header_bytes + 8, header.size());
  EXPECT_EQ(ckpt.files()[0].metadata, metadata);
  ASSERT_EQ(ckpt.tensors().size(), samples().size());
  for (const auto& s : samples()) {
    SCOPED_TRACE(s.spec.name);
    const auto* t = ckpt.find(s.spec.name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, s.spec.dtype);
    EXPECT_EQ(t->shape, s.spec.shape);
    EXPECT_EQ(t->nbytes, s.data.size());
    EXPECT_EQ(as_string(ckpt.bytes(*t)), s.data);
  }
  EXPECT_EQ(read_f32(ckpt, "w.f32"), (std::vector<float>{1, -2, 0.5f, 3e-3f, -0.0f, 1e30f}));
  EXPECT_EQ(read_f32(ckpt, "w.f16"), (std::vector<float>{1, -5, std::ldexp(1.0f, -24), 65504, -0.0f}));
  EXPECT_EQ(read_f32(ckpt, "w.bf16"), (std::vector<float>{1, -10, std::ldexp(1.0f, -126)}));
  EXPECT_TRUE(read_f32(ckpt, "empty.f16").empty());
}

TEST(SafetensorsWriter, HeaderIsPaddedWithSpacesToAMultipleOfEight) {
  for (std::size_t name_len = 1; name_len <= 9; ++name_len) {
    const std::vector<TensorSpec> specs{{std::string(name_len, 'n'), DType::U8, {1}}};
    const std::string h = duquant::formats::safetensors_header_bytes(specs, {});
    std::uint64_t n = 0;
    std::memcpy(&n, h.data(), 8);
    EXPECT_EQ(n % 8, 0u) << name_len;
    EXPECT_EQ(h.size(), 8 + n);
    const std::string json = h.substr(8);
    const auto close = json.rfind('}');
    ASSERT_NE(close, std::string::npos);
    EXPECT_LT(json.size() - close - 1, 8u);
    EXPECT_EQ(json.find_first_not_of(' ', close + 1), std::string::npos) << "'" << json << "'";
  }
}

TEST(SafetensorsWriter, EmptyCheckpointIsAnEmptyObject) {
  const fs::path path = temp_dir() / "empty.safetensors";
  {
    SafetensorsWriter writer(path, {}, {});
    writer.commit();
  }
  EXPECT_EQ(read_text(path), le_u64(8) + "{}      ");
  const Checkpoint ckpt = Checkpoint::open(path);
  EXPECT_TRUE(ckpt.tensors().empty());
  EXPECT_TRUE(ckpt.files()[0].metadata.empty());
}

// A pack splits its tensors over shards so that every header stays under the readers' limit, by
// these bounds: never below what an entry really takes.
TEST(SafetensorsWriter, HeaderEntryBoundIsNeverBelowTheEntry) {
  std::vector<TensorSpec> specs = {
      {"a", DType::U8, {1}},
      {"layer.with.\"quotes\"\x01\xff.qweight", DType::BF16, {3, 5}},
      {std::string(300, 'n'), DType::I64, {}},
      {"big", DType::F32, {4000000000ull, 1000, 1}},  // offsets of many digits follow it
      {"after", DType::F64, {2, 2, 2}},
  };
  std::uint64_t bound = 0;
  for (const TensorSpec& t : specs) bound += duquant::formats::header_entry_bound(t);
  const std::string header = duquant::formats::safetensors_header_bytes(specs, {});
  EXPECT_LE(header.size() - 8, 2 + bound + 7);  // "{}" and the padding
  for (const TensorSpec& t : specs) {
    const std::string one = duquant::formats::safetensors_header_bytes({t}, {});
    EXPECT_LE(one.size() - 8, 2 + duquant::formats::header_entry_bound(t) + 7) << t.name;
  }
}

TEST(SafetensorsWriter, MisuseIsRejected) {
  const fs::path dir = temp_dir();
  const std::vector<TensorSpec> one{{"a", DType::F32, {2}}};
  expect_error(
      [&] {
        SafetensorsWriter w(dir / "dup.safetensors", {{"a", DType::U8, {1}}, {"a", DType::U8, {1}}}, {});
      },
      ErrorKind::usage, {"tensor 'a' written twice"});
  expect_error(
      [&] {
        SafetensorsWriter w(dir / "odd.safetensors", {{"p", DType::F4, {3}}}, {});
      },
      ErrorKind::usage, {"tensor 'p'", "3 elements of F4"});
  expect_error(
      [&] {
        SafetensorsWriter w(dir / "over.safetensors", one, {});
        const std::string nine(9, 'x');
        w.write(std::as_bytes(std::span(nine.data(), nine.size())));
      },
      ErrorKind::internal, {"over.safetensors", "1 bytes written past the 8-byte data region"});
  expect_error(
      [&] {
        SafetensorsWriter w(dir / "short.safetensors", one, {});
        const std::string four(4, 'x');
        w.write(std::as_bytes(std::span(four.data(), four.size())));
        w.commit();
      },
      ErrorKind::internal, {"short.safetensors", "4 of 8 data bytes written"});
  // None of the failed writers left a file behind, temporary or final.
  EXPECT_TRUE(fs::is_empty(dir));
}

// --- Data at any alignment ----------------------------------------------------------------------

TEST(SafetensorsUnaligned, OddDataStartReadsCorrectly) {
  // The header length is odd, so the data region (and every tensor) starts at an odd address;
  // the F32 tensor after the 10-byte F16 one sits at data offset 22 (2 mod 4) as well.
  std::string json = R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                     R"("h":{"dtype":"F16","shape":[5],"data_offsets":[12,22]},)"
                     R"("c":{"dtype":"F32","shape":[2],"data_offsets":[22,30]},)"
                     R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[30,36]}})";
  if (json.size() % 2 == 0) json += ' ';
  const std::string data = le_f32(1.5f) + le_f32(-2.25f) + le_f32(1e-40f) +                                      // a
                           le_u16(0x3c00) + le_u16(0xc500) + le_u16(0x0001) + le_u16(0x7c00) + le_u16(0x3555) +  // h
                           le_f32(3.0f) + le_f32(-1e20f) +                                                       // c
                           le_u16(0x3f80) + le_u16(0xc120) + le_u16(0x4049);                                     // b
  const fs::path path = temp_dir() / "odd.safetensors";
  write_file(path, le_u64(json.size()) + json + data);

  const Checkpoint ckpt = Checkpoint::open(path);
  ASSERT_EQ(ckpt.files()[0].header_bytes % 2, 1u);
  EXPECT_EQ(ckpt.find("a")->offset % 2, 1u);
  EXPECT_EQ(ckpt.find("c")->offset, 8 + json.size() + 22);
  EXPECT_EQ(read_f32(ckpt, "a"), (std::vector<float>{1.5f, -2.25f, 1e-40f}));
  EXPECT_EQ(read_f32(ckpt, "h"),
            (std::vector<float>{1, -5, std::ldexp(1.0f, -24), INFINITY, duquant::elementwise::f16_to_f32(0x3555)}));
  EXPECT_EQ(read_f32(ckpt, "h")[4], 0.333251953125f);
  EXPECT_EQ(read_f32(ckpt, "c"), (std::vector<float>{3.0f, -1e20f}));
  EXPECT_EQ(read_f32(ckpt, "b"), (std::vector<float>{1, -10, 3.140625f}));
  EXPECT_EQ(as_string(ckpt.bytes(*ckpt.find("b"))), data.substr(30));
}

TEST(SafetensorsHeader, ParsesABufferAndIgnoresUnknownFields) {
  const std::string json = R"({"__metadata__":null,"t":{"dtype":"I8","shape":[2],"data_offsets":[0,2],"extra":[1]}})";
  const std::string file = le_u64(json.size()) + json + "\x01\x02";
  const auto h = duquant::formats::parse_safetensors_header(std::as_bytes(std::span(file.data(), file.size())), "buf");
  EXPECT_EQ(h.header_bytes, json.size());
  EXPECT_EQ(h.data_start, 8 + json.size());
  EXPECT_TRUE(h.metadata.empty());
  ASSERT_EQ(h.tensors.size(), 1u);
  EXPECT_EQ(h.tensors[0].name, "t");
  EXPECT_EQ(h.tensors[0].numel, 2u);
  EXPECT_EQ(h.tensors[0].begin, 0u);
  EXPECT_EQ(h.tensors[0].end, 2u);
}

TEST(SafetensorsHeader, ZeroSizeTensorsMayShareAnOffset) {
  const std::string json =
      R"({"z1":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
      R"("z0":{"dtype":"BF16","shape":[3,0],"data_offsets":[0,0]},"z2":{"dtype":"U8","shape":[0],"data_offsets":[4,4]}})";
  const std::string file = le_u64(json.size()) + json + "abcd";
  const auto h = duquant::formats::parse_safetensors_header(std::as_bytes(std::span(file.data(), file.size())), "buf");
  ASSERT_EQ(h.tensors.size(), 4u);
  EXPECT_EQ(h.tensors[0].name, "z0");
  EXPECT_EQ(h.tensors[1].name, "x");
  EXPECT_EQ(h.tensors[2].name, "z1");
  EXPECT_EQ(h.tensors[3].name, "z2");
}

// The reader takes a header of plain entries in one SAX pass and anything else (an unknown field, a
// key twice, a wrong type) through the DOM: both give the same entries, and the same messages.
TEST(SafetensorsHeader, FastPathAndDomPathAgree) {
  const auto parse = [](const std::string& json, const std::string& data) {
    const std::string file = le_u64(json.size()) + json + data;
    return duquant::formats::parse_safetensors_header(std::as_bytes(std::span(file.data(), file.size())), "buf");
  };
  const std::string plain =
      R"({"b.w":{"dtype":"F32","shape":[1,2],"data_offsets":[4,12]},"__metadata__":{"format":"pt","k":"v"},)"
      R"("a.w":{"shape":[2],"dtype":"BF16","data_offsets":[0,4]},"s":{"dtype":"I8","shape":[],"data_offsets":[12,13]}})";
  std::string dom = plain;  // one unknown field sends it to the DOM
  dom.insert(dom.find(R"("data_offsets":[12,13])"), R"("extra":[1],)");
  const auto fast = parse(plain, std::string(13, 'x'));
  const auto slow = parse(dom, std::string(13, 'x'));
  ASSERT_EQ(fast.tensors.size(), 3u);
  ASSERT_EQ(slow.tensors.size(), 3u);
  for (std::size_t k = 0; k < 3; ++k) {
    EXPECT_EQ(fast.tensors[k].name, slow.tensors[k].name);
    EXPECT_EQ(fast.tensors[k].dtype, slow.tensors[k].dtype);
    EXPECT_EQ(fast.tensors[k].shape, slow.tensors[k].shape);
    EXPECT_EQ(fast.tensors[k].numel, slow.tensors[k].numel);
    EXPECT_EQ(fast.tensors[k].begin, slow.tensors[k].begin);
    EXPECT_EQ(fast.tensors[k].end, slow.tensors[k].end);
  }
  EXPECT_EQ(fast.tensors[0].name, "a.w");
  EXPECT_EQ(fast.tensors[2].numel, 1u);
  EXPECT_EQ(fast.metadata, slow.metadata);
  EXPECT_EQ(fast.metadata.at("format"), "pt");
  // What the fast path gives up on is refused with the DOM path's message.
  const auto message = [&](const std::string& json, const std::string& data) {
    try {
      parse(json, data);
    } catch (const duquant::Error& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const std::string entry = R"("dtype":"F32","shape":[1],"data_offsets":[0,4])";
  EXPECT_NE(message("{\"t\":{" + entry + "},\"t\":{" + entry + "}}", "abcd").find("duplicate key 't'"),
            std::string::npos);
  EXPECT_NE(message(R"({"t":{"dtype":"F32","dtype":"F32","shape":[1],"data_offsets":[0,4]}})", "abcd")
                .find("duplicate key 'dtype' in 't'"),
            std::string::npos);
  EXPECT_NE(message(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "abcd").find("non-negative integers"),
            std::string::npos);
  EXPECT_NE(message(R"({"t":{"dtype":"F33","shape":[1],"data_offsets":[0,4]}})", "abcd").find("unknown dtype 'F33'"),
            std::string::npos);
  EXPECT_NE(message(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", "abcd").find("needs 8 bytes"),
            std::string::npos);
  EXPECT_NE(message(R"({"__metadata__":{"a":"1","a":"2"}})", "").find("duplicate key 'a'"), std::string::npos);
  EXPECT_NE(message(R"({"__metadata__":{"a":1}})", "").find("must be a string"), std::string::npos);
  EXPECT_NE(message(R"({"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}} x)", "abcd").find("not valid JSON"),
            std::string::npos);
}

// --- Sharded checkpoints and folders --------------------------------------------------------------

void write_checkpoint(const fs::path& path, const std::vector<Sample>& tensors) {
  std::vector<TensorSpec> specs;
  std::string data;
  for (const auto& s : tensors) {
    specs.push_back(s.spec);
    data += s.data;
  }
  SafetensorsWriter writer(path, specs, {{"format", "pt"}});
  writer.write(std::as_bytes(std::span(data.data(), data.size())));
  writer.commit();
}

constexpr const char* kShard1 = "model-00001-of-00002.safetensors";
constexpr const char* kShard2 = "model-00002-of-00002.safetensors";

fs::path make_sharded(const fs::path& dir, const std::string& index_name) {
  // Shard 2 is written first and shard 1 lists its tensors out of name order: the reader must
  // order shards by file name and tensors by data offset.
  write_checkpoint(dir / kShard2, {{{"c", DType::BF16, {2}}, le_u16(0x3f80) + le_u16(0x4000)}});
  write_checkpoint(dir / kShard1,
                   {{{"b", DType::F32, {2}}, le_f32(1) + le_f32(2)}, {{"a", DType::F16, {1}}, le_u16(0x3c00)}});
  write_file(dir / index_name, std::string(R"({"metadata":{"total_size":14},"weight_map":{"a":")") + kShard1 +
                                   R"(","b":")" + kShard1 + R"(","c":")" + kShard2 + R"("}})");
  return dir / index_name;
}

void expect_sharded(const Checkpoint& ckpt, const fs::path& dir) {
  ASSERT_EQ(ckpt.files().size(), 2u);
  EXPECT_EQ(ckpt.files()[0].path, dir / kShard1);
  EXPECT_EQ(ckpt.files()[1].path, dir / kShard2);
  ASSERT_EQ(ckpt.tensors().size(), 3u);
  EXPECT_EQ(ckpt.tensors()[0].name, "b");
  EXPECT_EQ(ckpt.tensors()[1].name, "a");
  EXPECT_EQ(ckpt.tensors()[2].name, "c");
  EXPECT_EQ(ckpt.tensors()[0].file, 0u);
  EXPECT_EQ(ckpt.tensors()[2].file, 1u);
  EXPECT_EQ(ckpt.files()[1].metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  EXPECT_EQ(read_f32(ckpt, "b"), (std::vector<float>{1, 2}));
  EXPECT_EQ(read_f32(ckpt, "a"), (std::vector<float>{1}));
  EXPECT_EQ(read_f32(ckpt, "c"), (std::vector<float>{1, 2}));
}

TEST(SafetensorsSharded, OpensThroughTheFolderAndTheIndex) {
  const fs::path dir = temp_dir();
  const fs::path index = make_sharded(dir, "model.safetensors.index.json");
  {
    SCOPED_TRACE("folder");
    const Checkpoint ckpt = Checkpoint::open(dir);
    EXPECT_EQ(ckpt.source(), dir);
    expect_sharded(ckpt, dir);
  }
  {
    SCOPED_TRACE("index");
    const Checkpoint ckpt = Checkpoint::open(index);
    EXPECT_EQ(ckpt.source(), index);
    expect_sharded(ckpt, dir);
  }
  {
    SCOPED_TRACE("one shard alone");
    const Checkpoint ckpt = Checkpoint::open(dir / kShard2);
    ASSERT_EQ(ckpt.tensors().size(), 1u);
    EXPECT_EQ(ckpt.tensors()[0].name, "c");
  }
}

TEST(SafetensorsSharded, FolderWithAnotherIndexNameUsesIt) {
  const fs::path dir = temp_dir();
  make_sharded(dir, "pytorch_model.safetensors.index.json");
  expect_sharded(Checkpoint::open(dir), dir);
}

TEST(SafetensorsSharded, ParseIndexReturnsTheWeightMap) {
  const auto map = duquant::formats::parse_safetensors_index(
      R"({"metadata":{"total_size":1},"weight_map":{"x":"a.safetensors","y":"sub/b.safetensors"}})", "idx");
  EXPECT_EQ(map, (std::map<std::string, std::string>{{"x", "a.safetensors"}, {"y", "sub/b.safetensors"}}));
}

TEST(SafetensorsFolder, PrefersModelSafetensorsThenTheOnlyFile) {
  const fs::path dir = temp_dir();
  write_checkpoint(dir / "weights.safetensors", {{{"only", DType::U8, {1}}, "\x07"}});
  EXPECT_EQ(Checkpoint::open(dir).tensors().at(0).name, "only");
  write_checkpoint(dir / "model.safetensors", {{{"main", DType::U8, {1}}, "\x08"}});
  const Checkpoint ckpt = Checkpoint::open(dir);
  EXPECT_EQ(ckpt.files().at(0).path, dir / "model.safetensors");
  EXPECT_EQ(ckpt.tensors().at(0).name, "main");
}

TEST(SafetensorsFolder, NeitherIndexNorFileIsAnIoError) {
  const fs::path dir = temp_dir();
  write_file(dir / "notes.txt", "nothing");
  expect_error([&] { Checkpoint::open(dir); }, ErrorKind::io,
               {dir.string(), "0 *.safetensors.index.json and 0 *.safetensors files"});
  expect_error([&] { Checkpoint::open(dir / "absent.safetensors"); }, ErrorKind::io,
               {"absent.safetensors", "no such file or folder"});
  expect_error([&] { Checkpoint::open(dir / "absent"); }, ErrorKind::io, {"absent", "no such file or folder"});
}

// --- AtomicFile ---------------------------------------------------------------------------------

TEST(AtomicFile, UncommittedLeavesNothingBehind) {
  const fs::path dir = temp_dir();
  {
    duquant::formats::AtomicFile f(dir / "out.bin");
    f.write(std::string_view("partial"));
    EXPECT_EQ(f.bytes_written(), 7u);
    EXPECT_FALSE(fs::exists(dir / "out.bin"));
  }
  EXPECT_TRUE(fs::is_empty(dir));
}

TEST(AtomicFile, UncommittedKeepsThePreviousFile) {
  const fs::path dir = temp_dir();
  write_file(dir / "out.bin", "old content");
  try {
    duquant::formats::AtomicFile f(dir / "out.bin");
    f.write(std::string_view("new"));
    throw std::runtime_error("interrupted");
  } catch (const std::runtime_error&) {}
  EXPECT_EQ(read_text(dir / "out.bin"), "old content");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(AtomicFile, CommittedAppearsComplete) {
  const fs::path dir = temp_dir();
  write_file(dir / "out.bin", "old content that is longer");
  std::string expected;
  {
    duquant::formats::AtomicFile f(dir / "out.bin");
    for (int i = 0; i < 1000; ++i) {
      const std::string line = "line " + std::to_string(i) + "\n";
      f.write(std::string_view(line));
      expected += line;
    }
    EXPECT_EQ(read_text(dir / "out.bin"), "old content that is longer");
    f.commit();
    expect_error([&] { f.commit(); }, ErrorKind::internal, {"committed twice"});
  }
  EXPECT_EQ(read_text(dir / "out.bin"), expected);
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(AtomicFile, MissingFolderIsAnIoError) {
  const fs::path dir = temp_dir();
  expect_error([&] { duquant::formats::AtomicFile f(dir / "no" / "such" / "out.bin"); }, ErrorKind::io,
               {"out.bin", "cannot create"});
}

// --- read_f32 errors ----------------------------------------------------------------------------

TEST(SafetensorsReadF32, NonFloatTensorIsAFormatErrorNamingIt) {
  const fs::path path = temp_dir() / "ints.safetensors";
  write_checkpoint(path, {{{"counts", DType::I32, {2}}, std::string("\x01\0\0\0\x02\0\0\0", 8)},
                          {{"codes", DType::F8_E4M3, {1}}, "\x38"}});
  const Checkpoint ckpt = Checkpoint::open(path);
  std::vector<float> out(2);
  expect_error([&] { ckpt.read_f32(*ckpt.find("counts"), out); }, ErrorKind::format,
               {"ints.safetensors", "tensor 'counts' is I32", "only F32, F16 and BF16"});
  std::vector<float> one(1);
  expect_error([&] { ckpt.read_f32(*ckpt.find("codes"), one); }, ErrorKind::format, {"tensor 'codes' is F8_E4M3"});
  // The raw bytes stay available.
  EXPECT_EQ(as_string(ckpt.bytes(*ckpt.find("counts"))), std::string("\x01\0\0\0\x02\0\0\0", 8));
}

TEST(SafetensorsReadF32, WrongOutputSizeIsAnInternalError) {
  const Checkpoint ckpt = Checkpoint::open(duquant::test::tiny_checkpoint());
  std::vector<float> out(10);
  expect_error([&] { ckpt.read_f32(*ckpt.find("action_in_proj.weight"), out); }, ErrorKind::internal,
               {"action_in_proj.weight", "output holds 10 floats, tensor has 2048"});
}

}  // namespace

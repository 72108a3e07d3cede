// The pack format in one place (docs/pack-format.md): its name and version, the files of a pack
// directory and their names, how codes are stored per weight bit width, the tensors a layer puts
// in quantized.safetensors and the members of its npz, the size of each, and the limits readers
// apply to manifest.json and the pack's files. The writer (src/pack), the readers (pack_reader,
// manifest), inspect and list-linears take names, storage and sizes from here.
//
//   <module>.npz                 one per layer, the runtime's own format (reference sections 1-2)
//   quantized.safetensors        codes, scales, perm, rotations, bias and conformance vectors of
//                                every layer (or shards quantized-0000i-of-0000n.safetensors +
//                                quantized.safetensors.index.json)
//   manifest.json                configuration, checkpoint identity, files, checksums, quality
//
// The code storage and the passes over codes are header-only: the CUDA module, which links none
// of duquant's libraries, uses them too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "base/elementwise.hpp"
#include "config/quant_config.hpp"
#include "duquant/error.hpp"
#include "formats/dtype.hpp"
#include "formats/safetensors_writer.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"

namespace duquant {

// ---- the format -----------------------------------------------------------------------------

inline constexpr std::string_view kPackFormatName = "duquant-pack";
inline constexpr int kPackFormatVersion = 1;

// The algorithm that computed the stored values (docs/determinism.md): the CPU reference, or the
// CUDA engine (within tolerances of it). The version moves with any change of a stored value
// (perm, rotations, codes, scales, conformance vectors) and is recorded in the manifest and in
// each layer's work-folder record: --resume never mixes layers of two algorithms.
inline constexpr std::string_view kAlgorithmCpu = "duquant-cpu";
inline constexpr std::string_view kAlgorithmCuda = "duquant-cuda";
inline constexpr int kAlgorithmVersion = 1;

// ---- files ----------------------------------------------------------------------------------

inline constexpr std::string_view kManifestName = "manifest.json";
inline constexpr std::string_view kQuantizedName = "quantized.safetensors";
inline constexpr std::string_view kQuantizedIndexName = "quantized.safetensors.index.json";
inline constexpr std::string_view kWorkDirName = ".duquant-work";

// The runtime's file name for a layer: characters outside [A-Za-z0-9_.-] become '_', then every
// ".." becomes "." (one left-to-right pass, as Python's str.replace), then ".npz" is appended.
std::string pack_file_name(std::string_view module);

// Two layers whose names pack_file_name() maps to one file ("a/b.q_proj" and "a_b.q_proj", or
// "m..q_proj" and "m.q_proj"): the runtime could load only one of them from a pack.
struct PackFileCollision {
  std::string first, second;  // in the order given
  std::string file;
};
// Every later layer whose file name an earlier one already has, paired with that earlier one.
std::vector<PackFileCollision> pack_file_collisions(const std::vector<std::string>& layers);
// "layers 'a/b.q_proj' and 'a_b.q_proj' both map to the npz file 'a_b.q_proj.npz'"
std::string describe(const PackFileCollision& c);
// Throws duquant::Error (format, exit 3) naming the first collision, both layers and the file;
// `what` names the input ("model.safetensors").
void check_pack_file_names(const std::vector<std::string>& layers, const std::string& what);

// The `meta` member's JSON text, exactly as the runtime writes it (json.dumps of its dict).
std::string pack_meta_json(std::uint64_t in_features, std::uint64_t out_features, const QuantConfig& q);

// Python's repr of a float (shortest round-trip digits, always with a '.' or an exponent).
std::string python_float_repr(double v);

// Shard file name i (1-based) of n: "quantized-00001-of-00003.safetensors".
std::string quantized_shard_name(int i, int n);

// The metadata of quantized.safetensors (and of each shard): format pt, the pack format and version.
std::map<std::string, std::string> quantized_metadata();

// ---- limits ---------------------------------------------------------------------------------

// What a manifest may say (what `duquant pack` accepts), and what readers read of a pack's files.
inline constexpr int kMinWeightBits = 2, kMaxWeightBits = 8;
inline constexpr int kMinActivationBits = 2, kMaxActivationBits = 16;
inline constexpr int kMaxBlock = 4096;  // block and block_out
inline constexpr int kMaxCalibSteps = 1'000'000;
inline constexpr int kMaxFormatVersion = 1 << 30;                 // format_version read as an integer up to this
inline constexpr std::uint64_t kMaxLayerShape = kMaxLayerWidth;   // out and in features (selection.hpp)
inline constexpr std::uint64_t kMaxManifestBytes = 256ull << 20;  // manifest.json read whole
inline constexpr int kMaxManifestDepth = 16;                      // nesting of manifest.json
inline constexpr int kMaxMetaDepth = 2;                           // nesting of an npz's meta JSON
inline constexpr int kMaxMetaDepthRuntimePack = 8;                // inspect of a runtime pack's meta (lenient)
inline constexpr std::uint64_t kMaxMetaFeatures = 1ull << 40;     // a meta size beyond this is no layer
inline constexpr std::int64_t kMaxMetaBlock = 1 << 20;            // a runtime pack's block sizes
inline constexpr std::uint64_t kMaxDecodedCodes = 1ull << 40;     // O * I codes a reader decodes at most

static_assert(kMinWeightBits >= 2 && kMaxWeightBits == 8, "codes are signed bytes: 2 to 8 bits");
static_assert(kMaxBlock <= kMaxMetaBlock && static_cast<std::uint64_t>(kMaxMetaBlock) <= kMaxLayerShape);
static_assert(kMaxLayerShape <= kMaxDecodedCodes / 65536, "a full-width layer of 65,536 rows can be decoded");
static_assert(kMaxLayerShape <= kMaxMetaFeatures);
static_assert(kPackFormatVersion >= 1 && kPackFormatVersion <= kMaxFormatVersion);

// ---- code storage ---------------------------------------------------------------------------

// How `L.qweight` stores a layer's codes at a weight bit width: 2-4 bit codes two per byte (U8,
// the nibble order of elementwise::pack_nibbles: column 2k in bits 3..0, 2k+1 in bits 7..4, each
// as q + 8; an odd last column leaves the high nibble at 8), 5-8 bit codes one signed byte each (I8).
inline constexpr int kMaxNibbleBits = 4;

struct CodeStorage {
  formats::DType dtype;  // of L.qweight
  bool nibbles;          // two codes per byte
  constexpr std::uint64_t row_bytes(std::uint64_t cols) const noexcept {
    return nibbles ? static_cast<std::uint64_t>(elementwise::nibble_row_bytes(static_cast<long long>(cols))) : cols;
  }
  constexpr std::uint64_t bytes(std::uint64_t rows, std::uint64_t cols) const noexcept {
    return rows * row_bytes(cols);
  }
};

constexpr CodeStorage code_storage(int bits) noexcept {
  return bits <= kMaxNibbleBits ? CodeStorage{formats::DType::U8, true} : CodeStorage{formats::DType::I8, false};
}

static_assert(code_storage(2).nibbles && code_storage(4).nibbles && !code_storage(5).nibbles &&
              !code_storage(8).nibbles);
static_assert(code_storage(4).dtype == formats::DType::U8 && code_storage(8).dtype == formats::DType::I8);
static_assert(code_storage(4).row_bytes(7) == 4 && code_storage(4).row_bytes(8) == 4 &&
              code_storage(8).row_bytes(7) == 7);
static_assert(code_storage(4).bytes(3, 5) == 9 && code_storage(6).bytes(3, 5) == 15);
// Every code of 2-4 bits, q + 8, fits a nibble.
static_assert((1 << (kMaxNibbleBits - 1)) - 1 + 8 <= 15 && -(1 << (kMaxNibbleBits - 1)) + 8 >= 0);

// The stored bytes of `codes` ([rows, cols] row-major, signed codes of `bits` bits).
inline std::string pack_codes(std::span<const std::int8_t> codes, std::int64_t rows, std::int64_t cols, int bits) {
  const CodeStorage s = code_storage(bits);
  DQ_CHECK(rows >= 0 && cols >= 0 && codes.size() == static_cast<std::size_t>(rows * cols), internal,
           "{} codes for [{}, {}]", codes.size(), rows, cols);
  std::string out(static_cast<std::size_t>(s.bytes(static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols))),
                  '\0');
  if (!s.nibbles) {
    if (!out.empty()) std::memcpy(out.data(), codes.data(), out.size());
    return out;
  }
  const auto row_bytes = static_cast<std::int64_t>(s.row_bytes(static_cast<std::uint64_t>(cols)));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int8_t* c = codes.data() + r * cols;
    char* o = out.data() + r * row_bytes;
    for (std::int64_t k = 0; k < row_bytes; ++k) {
      const int high = 2 * k + 1 < cols ? c[2 * k + 1] : 0;
      o[k] = static_cast<char>(elementwise::pack_nibbles(c[2 * k], high));
    }
  }
  return out;
}

// The signed codes ([rows, cols] row-major) that `bytes` (code_storage(bits).bytes(rows, cols) of
// them, as stored) holds.
inline std::vector<std::int8_t> unpack_codes(std::span<const std::byte> bytes, std::int64_t rows, std::int64_t cols,
                                             int bits) {
  const CodeStorage s = code_storage(bits);
  DQ_CHECK(rows >= 0 && cols >= 0 &&
               bytes.size() == s.bytes(static_cast<std::uint64_t>(rows), static_cast<std::uint64_t>(cols)),
           internal, "{} bytes of {}-bit codes for [{}, {}]", bytes.size(), bits, rows, cols);
  std::vector<std::int8_t> codes(static_cast<std::size_t>(rows * cols));
  if (!s.nibbles) {
    if (!codes.empty()) std::memcpy(codes.data(), bytes.data(), codes.size());
    return codes;
  }
  const auto row_bytes = static_cast<std::int64_t>(s.row_bytes(static_cast<std::uint64_t>(cols)));
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::byte* b = bytes.data() + r * row_bytes;
    std::int8_t* c = codes.data() + r * cols;
    for (std::int64_t k = 0; k < row_bytes; ++k) {
      const auto byte = static_cast<unsigned char>(b[k]);
      c[2 * k] = static_cast<std::int8_t>(elementwise::unpack_low(byte));
      if (2 * k + 1 < cols) c[2 * k + 1] = static_cast<std::int8_t>(elementwise::unpack_high(byte));
    }
  }
  return codes;
}

// ---- a layer's tensors and npz members --------------------------------------------------------

// What decides a layer's files: its name, shape, bits, bias and whether it was calibrated / smoothed.
struct LayerLayout {
  std::string name;
  std::uint64_t out_features = 0, in_features = 0;
  formats::DType dtype = formats::DType::F32;  // the weight's stored dtype
  int wbits = 4;
  std::optional<formats::DType> bias;  // the bias's stored dtype; none without a bias
  bool act_scale = false;              // calibrated: L.act_scale and the npz member act_scale
  bool smooth_scale = false;           // smoothed: L.smooth_scale and the npz member smooth_scale
};
LayerLayout layer_layout(const LinearLayer& layer, int wbits, bool act_scale = false, bool smooth_scale = false);

// Tensors a layer contributes to quantized.safetensors (known before packing: the header is
// written first), in storage order: L.qweight (code_storage(wbits): U8 [O, ceil(I/2)] or I8
// [O, I]), L.scales [O], L.perm [I] (if permuting), L.R_in [nb, B, B], L.R_out [nbo, Bo, Bo]
// (unless row_rot is 0), L.bias [O] (if any, in its stored dtype), then the conformance vectors
// L.test_x [4, I], L.test_y_fp [4, O] and L.test_y_q [4, O] (F32); with calibration L.act_scale
// [I] (F32), and with smoothing L.smooth_scale [I] (F32).
std::vector<formats::TensorSpec> layer_tensor_specs(const LayerLayout& layer, const QuantConfig& q);
// The conformance vectors' tensors, by the part of the name after the layer's.
inline constexpr std::string_view kConformanceTensors[] = {"test_x", "test_y_fp", "test_y_q"};
bool is_conformance_tensor(const formats::TensorSpec& tensor, const LayerLayout& layer);
std::vector<formats::TensorSpec> layer_tensor_specs(const LinearLayer& layer, int wbits, const QuantConfig& q,
                                                    bool act_scale = false, bool smooth_scale = false);
// Their bytes, back to back: what the manifest records as the layer's quantized.bytes.
std::uint64_t layer_tensor_bytes(const LayerLayout& layer, const QuantConfig& q);

// One member of a layer's npz: key (without ".npy"), npy dtype and shape.
struct NpzMemberSpec {
  std::string key;
  std::string descr;  // "<f4", "<i8", "<U{n}"
  std::vector<std::uint64_t> shape;
  std::uint64_t data_bytes = 0;
};
// The members in the runtime's order (docs/pack-format.md section 1): weight_scale, meta, perm,
// Rin_0.., R_in_blocks, Rout_0.., R_out_blocks, then act_scale and smooth_scale.
std::vector<NpzMemberSpec> layer_npz_members(const LayerLayout& layer, const QuantConfig& q);
// The npz file's size in bytes (what the writer writes for these members).
std::uint64_t layer_npz_bytes(const LayerLayout& layer, const QuantConfig& q);

// ---- a pack directory's size ------------------------------------------------------------------

// What manifest.json records about the checkpoint.
struct ManifestCheckpoint {
  std::string source;  // the checkpoint's file (or folder) name
  struct File {
    std::string name;
    std::uint64_t size = 0, header_bytes = 0;
  };
  std::vector<File> files;
  nlohmann::ordered_json names = nlohmann::ordered_json::object();  // names_json() of the mapping
};

// The bytes a pack of `layers` takes, before packing. Exact: every npz and the tensors of every
// layer; quantized.safetensors with its header and padding, as one file (past --max-shard-size
// each shard adds its own header, and the index file is added). Estimated: manifest.json, see
// manifest_bytes_estimate().
struct PackSize {
  std::vector<std::uint64_t> layer_tensor_bytes;  // per layer, as `layers`
  std::vector<std::uint64_t> layer_npz_bytes;
  std::uint64_t tensor_bytes = 0;       // all layers' tensors (the data of quantized.safetensors)
  std::uint64_t npz_bytes = 0;          // all npz files
  std::uint64_t safetensors_bytes = 0;  // quantized.safetensors: header (8-byte length, JSON, padding) + data
  std::uint64_t manifest_bytes = 0;     // estimate
  std::uint64_t total() const noexcept { return npz_bytes + safetensors_bytes + manifest_bytes; }
};
PackSize pack_size(const std::vector<LayerLayout>& layers, const RunConfig& config,
                   const ManifestCheckpoint& checkpoint);

// Figures of manifest.json that are known only after packing: per layer the two figures of
// quality.duquant and of quality.rtn, and conformance.rel_error_q_vs_fp. The estimate writes each
// as kManifestFigureChars characters. nlohmann writes a double in 3 to 24 characters (shortest
// round trip: "0.0", "0.08925873041152954", "-1.2345678901234567e-300") and a null in 4, so the
// estimate is within kManifestFiguresPerLayer * kManifestFigureError bytes per layer of the file.
inline constexpr std::uint64_t kManifestFiguresPerLayer = 5;
inline constexpr std::uint64_t kManifestFigureChars = 18;  // typical: "0.0892587304115295", "21.98826217651367"
inline constexpr std::uint64_t kManifestFigureError =
    kManifestFigureChars - 3 > 24 - kManifestFigureChars ? kManifestFigureChars - 3 : 24 - kManifestFigureChars;
static_assert(kManifestFigureError == 15);

// manifest.json of an uncalibrated, unsmoothed pack of `layers` (sizes from pack_size()), written
// as `duquant pack` writes it (keys, nesting, indent 2, the configuration and the checkpoint as
// given, digests of their fixed 32 digits), with the figures above as stand-ins.
std::uint64_t manifest_bytes_estimate(const std::vector<LayerLayout>& layers, const PackSize& sizes,
                                      const RunConfig& config, const ManifestCheckpoint& checkpoint);

}  // namespace duquant

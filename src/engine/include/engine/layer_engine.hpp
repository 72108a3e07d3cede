// The compute backends of `duquant pack`: the heavy math of one layer (permutation, rotations,
// sign choice, MSE scale search, codes) behind one interface, on the CPU (the reference, which
// defines every output) or on CUDA devices (kernels/, docs/cuda-backend.md).
#pragma once

#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "config/quant_config.hpp"
#include "math/duquant_math.hpp"

namespace duquant {

// What the heavy part of packing one layer yields, whichever device computed it.
struct LayerMath {
  LayerTransform t;                 // perm, Rin, and Rout with their signs chosen
  std::vector<float> weight_scale;  // the reference's member, from W[:, perm]·Rin
  QuantizedRows quant;              // scales, codes (empty when `packed` holds them), squared error
  std::string packed;               // 4-bit codes already packed two per byte, [O, ceil(I/2)]; or empty
  double rtn_err2 = 0;              // round-to-nearest baseline on the same weight
  std::string source_npz;           // import: the runtime's npz, written to the pack as it is; else empty
};

// The CPU reference: compute_transform, rotate_column_blocks, reference_weight_scale,
// choose_row_rotation_signs, apply_output_rotation, quantize_rows and rtn_squared_error.
LayerMath compute_layer_math(const WeightView& w, const QuantConfig& q, int bits);

class LayerEngine {
 public:
  virtual ~LayerEngine() = default;
  // "cpu", "cuda:0", ...
  virtual std::string name() const = 0;
  // Throws duquant::Error naming `layer` and the stage on any failure.
  virtual LayerMath compute(const WeightView& w, const QuantConfig& q, int bits, const std::string& layer) = 0;
  // One calibration call on the engine's device: `out` = call_percentiles (calibration.hpp) of the
  // activation transform of x [rows, I] with t's perm and Rin and the smoothing scale `smooth`
  // (empty: none). t.perm is the identity when permutation is off (compute_transform stores it).
  // Returns false when the engine leaves this to the CPU reference (the CPU engine always does).
  // Called between compute()s, never during one.
  virtual bool call_percentiles(std::span<const float> x, std::int64_t rows, const LayerTransform& t,
                                std::span<const float> smooth, double q, const std::string& layer,
                                std::vector<float>& out) {
    (void)x, (void)rows, (void)t, (void)smooth, (void)q, (void)layer, (void)out;
    return false;
  }
};

std::unique_ptr<LayerEngine> make_cpu_engine();

// `--device auto|cpu|cuda[:N[,M...]]`, parsed and checked against this build and machine:
//   cpu       the CPU reference;
//   cuda      every visible GPU; cuda:0,2 the ones named (usage error on a malformed list or a
//             repeated index; device error, exit 7, without the backend or the devices);
//   auto      every visible GPU when there is one, else the CPU with a one-line notice.
struct DevicePlan {
  std::vector<std::unique_ptr<LayerEngine>> engines;  // layers go round-robin to these
  bool cuda = false;
  // Compute layers on worker threads, one per engine, while the next layer is read (CUDA). Test
  // seam: DUQUANT_TEST_PIPELINE=N runs `cpu` as N CPU engines this way (never set in normal use).
  bool overlap = false;
  std::string description;  // "cpu", "cuda:0,1"
};
DevicePlan open_devices(const std::string& spec, const std::function<void(const std::string&)>& notice);

}  // namespace duquant

// The CUDA backend of `duquant pack` (docs/cuda-backend.md): one engine per device, computing a
// layer's LayerMath with cuBLAS, cuSOLVER, CUB and the kernels of layer_kernels.cu.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "engine/layer_engine.hpp"

namespace duquant::kernels {

// An engine on CUDA device `device`; throws duquant::Error (device) when it cannot be set up.
std::unique_ptr<LayerEngine> make_cuda_engine(int device);

// Single stages on device `device` from host data, for the GPU tests: the same kernels the engine
// runs, so their results can be compared with the CPU reference's bit for bit.
std::vector<float> cuda_channel_energy(int device, const WeightView& w, double lambda_smooth);
std::vector<std::int64_t> cuda_zigzag_permutation(int device, const std::vector<float>& energy);
// The MSE scale search and codes of `w_t`; with 2-4 bits `packed` receives the nibbles and the
// returned codes are unpacked from them.
QuantizedRows cuda_quantize_rows(int device, const MatrixF& w_t, int bits, std::string* packed = nullptr);

}  // namespace duquant::kernels

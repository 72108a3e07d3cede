#include "duquant/conformance.hpp"

#include "duquant/error.hpp"

namespace duquant {

std::vector<float> conformance_inputs(std::int64_t, std::int64_t) { fail(ErrorKind::internal, "not implemented yet"); }
std::vector<float> conformance_reference_output(std::span<const float>, std::int64_t, const WeightView&, std::span<const float>) {
  fail(ErrorKind::internal, "not implemented yet");
}
std::vector<float> conformance_pack_output(std::span<const float>, std::int64_t, std::int64_t, std::int64_t,
                                           std::span<const std::int64_t>, const std::vector<MatrixF>&,
                                           std::span<const std::int8_t>, std::span<const float>,
                                           const std::vector<MatrixF>&, RowRot, std::span<const float>) {
  fail(ErrorKind::internal, "not implemented yet");
}

}  // namespace duquant

// The CPU kernels at level 'scalar' (flags in src/math/CMakeLists.txt).
#define DQ_SIMD_LEVEL scalar
#define DQ_SIMD_PLAIN 1
#define DQ_SIMD_ENUM ::duquant::CpuLevel::scalar
#include "kernels_body.inc"

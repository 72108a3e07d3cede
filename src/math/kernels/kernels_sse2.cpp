// The CPU kernels at level 'sse2' (flags in src/math/CMakeLists.txt).
#define DQ_SIMD_LEVEL sse2
#define DQ_SIMD_ENUM ::duquant::CpuLevel::sse2
#include "kernels_body.inc"

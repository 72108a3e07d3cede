// The CPU kernels at level 'avx512' (flags in src/math/CMakeLists.txt).
#define DQ_SIMD_LEVEL avx512
#define DQ_SIMD_ENUM ::duquant::CpuLevel::avx512
#include "kernels_body.inc"

// The CPU kernels at level 'avx2' (flags in src/math/CMakeLists.txt).
#define DQ_SIMD_LEVEL avx2
#define DQ_SIMD_ENUM ::duquant::CpuLevel::avx2
#include "kernels_body.inc"

#include "math/cpu_kernels.hpp"

#include "duquant/error.hpp"

namespace duquant::simd {

namespace scalar {
const Kernels& table();
}
namespace sse2 {
const Kernels& table();
}
namespace avx2 {
const Kernels& table();
}
namespace avx512 {
const Kernels& table();
}

const Kernels& kernels_for(CpuLevel level) {
  DQ_CHECK(level <= detected_cpu_level(), internal, "CPU kernels of level '{}' asked for on a CPU that runs '{}'",
           cpu_level_name(level), cpu_level_name(detected_cpu_level()));
  switch (level) {
    case CpuLevel::scalar: return scalar::table();
    case CpuLevel::sse2: return sse2::table();
    case CpuLevel::avx2: return avx2::table();
    case CpuLevel::avx512: return avx512::table();
  }
  return scalar::table();
}

const Kernels& kernels() { return kernels_for(active_cpu_level()); }

}  // namespace duquant::simd

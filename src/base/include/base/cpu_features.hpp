// The instruction-set level the CPU kernels run at (math/cpu_kernels.hpp). Every level computes
// the same bytes (docs/determinism.md): the level changes only how many lanes a loop runs side by
// side, never an order of additions, and no level fuses a multiply with an add.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace duquant {

enum class CpuLevel { scalar = 0, sse2 = 1, avx2 = 2, avx512 = 3 };

// "scalar", "sse2", "avx2", "avx512".
const char* cpu_level_name(CpuLevel level);
// The best level this CPU runs (sse2 is the x86-64 baseline; avx2 needs AVX2, avx512 AVX-512F+BW).
CpuLevel detected_cpu_level();
// The level `auto` picks: the detected one, but avx2 on a CPU that also runs avx512 (on the
// reference machine, an AMD EPYC with AVX-512, the avx512 kernels packed 4 % slower than avx2's;
// docs/benchmarks.md). avx512 stays available by name.
CpuLevel default_cpu_level();
// Every level this CPU runs, lowest first.
std::vector<CpuLevel> supported_cpu_levels();
// The level in use: default_cpu_level() unless set_cpu_level chose another, or DUQUANT_CPU_FEATURES
// names one at the first call.
CpuLevel active_cpu_level();
// Forces a level: "auto" (default_cpu_level()) or a level's name. A usage error (exit 2) naming
// `where` for an unknown name or a level this CPU does not run.
void set_cpu_level(std::string_view name, std::string_view where);

}  // namespace duquant

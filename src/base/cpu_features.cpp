#include "base/cpu_features.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>

#include "duquant/error.hpp"

namespace duquant {
namespace {

constexpr CpuLevel kLevels[] = {CpuLevel::scalar, CpuLevel::sse2, CpuLevel::avx2, CpuLevel::avx512};

CpuLevel probe() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")) return CpuLevel::avx512;
  if (__builtin_cpu_supports("avx2")) return CpuLevel::avx2;
  return CpuLevel::sse2;
#else
  return CpuLevel::scalar;
#endif
}

CpuLevel parse(std::string_view name, std::string_view where) {
  if (name == "auto") return default_cpu_level();
  for (CpuLevel l : kLevels) {
    if (name != cpu_level_name(l)) continue;
    DQ_CHECK(l <= detected_cpu_level(), usage, "{}: this CPU does not run '{}' (the best it runs is '{}')", where, name,
             cpu_level_name(detected_cpu_level()));
    return l;
  }
  fail(ErrorKind::usage, "{}: unknown CPU level '{}'; give auto, scalar, sse2, avx2 or avx512", where, name);
}

// -1 until the first use: then the environment's choice, or the detected level.
std::atomic<int> g_level{-1};

}  // namespace

const char* cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::scalar: return "scalar";
    case CpuLevel::sse2: return "sse2";
    case CpuLevel::avx2: return "avx2";
    case CpuLevel::avx512: return "avx512";
  }
  return "unknown";
}

CpuLevel detected_cpu_level() {
  static const CpuLevel level = probe();
  return level;
}

CpuLevel default_cpu_level() { return std::min(detected_cpu_level(), CpuLevel::avx2); }

std::vector<CpuLevel> supported_cpu_levels() {
  std::vector<CpuLevel> out;
  for (CpuLevel l : kLevels)
    if (l <= detected_cpu_level()) out.push_back(l);
  return out;
}

CpuLevel active_cpu_level() {
  int l = g_level.load(std::memory_order_acquire);
  if (l < 0) {
    const char* env = std::getenv("DUQUANT_CPU_FEATURES");
    const CpuLevel chosen = env != nullptr && *env != '\0' ? parse(env, "DUQUANT_CPU_FEATURES") : default_cpu_level();
    int expected = -1;
    g_level.compare_exchange_strong(expected, static_cast<int>(chosen), std::memory_order_acq_rel);
    l = g_level.load(std::memory_order_acquire);
  }
  return static_cast<CpuLevel>(l);
}

void set_cpu_level(std::string_view name, std::string_view where) {
  g_level.store(static_cast<int>(parse(name, where)), std::memory_order_release);
}

}  // namespace duquant

#include "config/quant_config.hpp"

namespace duquant {

std::string_view row_rot_name(RowRot mode) noexcept {
  switch (mode) {
    case RowRot::restore: return "restore";
    case RowRot::off: return "0";
    case RowRot::propagate: return "propagate";
  }
  return "restore";
}

std::string_view runtime_name(Runtime runtime) noexcept { return runtime == Runtime::gr00t ? "gr00t" : "openpi"; }

std::string_view default_include(Runtime runtime) noexcept {
  return runtime == Runtime::gr00t ? kGr00tDefaultInclude : kDefaultInclude;
}

std::string_view default_exclude(Runtime runtime) noexcept {
  return runtime == Runtime::gr00t ? kGr00tDefaultExclude : kDefaultExclude;
}

std::string_view runtime_env_prefix(Runtime runtime) noexcept {
  return runtime == Runtime::gr00t ? "GR00T_DUQUANT_" : "OPENPI_DUQUANT_";
}

std::string_view runtime_log_tag(Runtime runtime) noexcept {
  return runtime == Runtime::gr00t ? "GR00T-DUQUANT" : "DUQUANT";
}

}  // namespace duquant

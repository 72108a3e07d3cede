#include "duquant/quant_config.hpp"

namespace duquant {

std::string_view row_rot_name(RowRot mode) noexcept {
  switch (mode) {
    case RowRot::restore: return "restore";
    case RowRot::off: return "0";
    case RowRot::propagate: return "propagate";
  }
  return "restore";
}

std::string_view runtime_env_prefix(Runtime runtime) noexcept {
  return runtime == Runtime::gr00t ? "GR00T_DUQUANT_" : "OPENPI_DUQUANT_";
}

std::string_view runtime_log_tag(Runtime runtime) noexcept {
  return runtime == Runtime::gr00t ? "GR00T-DUQUANT" : "DUQUANT";
}

}  // namespace duquant

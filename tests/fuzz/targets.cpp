#include "fuzz/fuzz_checks.hpp"

namespace duquant::fuzz {

const std::vector<Target>& targets() {
  static const std::vector<Target> all{{"safetensors_header", check_safetensors_header},
                                       {"safetensors_index", check_safetensors_index},
                                       {"npz", check_npz},
                                       {"json_config", check_json_config},
                                       {"calib_dump", check_calib_dump}};
  return all;
}

}  // namespace duquant::fuzz

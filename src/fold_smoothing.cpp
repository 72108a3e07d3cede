#include "duquant/error.hpp"
#include "duquant/smoothing.hpp"

namespace duquant {

void write_folded_checkpoint(const formats::Checkpoint&, const std::vector<SmoothGroup>&,
                             const std::map<std::string, std::vector<float>>&, const std::filesystem::path& out) {
  fail(ErrorKind::internal, "{}: --fold-smoothing is not implemented yet", out.string());
}

}  // namespace duquant

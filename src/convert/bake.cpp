// `duquant bake` (duquant/convert.hpp).
#include "duquant/convert.hpp"
#include "duquant/error.hpp"

namespace duquant {

BakeSummary run_bake(const BakeOptions& o) {
  fail(ErrorKind::internal, "bake {}: not implemented yet", o.pack.string());
}

}  // namespace duquant

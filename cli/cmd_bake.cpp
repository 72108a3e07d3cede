// duquant bake PACK --checkpoint CKPT -o OUT [--dtype same|f32|bf16|f16]
#include "cli/commands.hpp"
#include "duquant/convert.hpp"

namespace duquant::cli {

Action register_bake(CLI::App& app) {
  CLI::App* c = app.add_subcommand("bake", "Write a checkpoint whose packed weights are their dequantized W4 values");
  return [c]() { return c->parsed() ? 0 : -1; };
}

}  // namespace duquant::cli

// duquant list-linears CKPT [selection] [--json]: the dry run.
#include <fmt/format.h>

#include <cstdio>
#include <memory>

#include "cli/commands.hpp"
#include "cli/options.hpp"
#include "duquant/error.hpp"
#include "formats/safetensors_checkpoint.hpp"
#include "formats/strict_json.hpp"
#include "packfmt/layout.hpp"
#include "report/dryrun_report.hpp"
#include "select/linear_layers.hpp"
#include "select/selection.hpp"

namespace duquant::cli {
namespace {

struct ListLinears {
  std::string checkpoint;
  ConfigFlags flags;
  bool json = false;

  int run() const {
    const RunConfig config = build_config(flags);
    const OpenedCheckpoint opened = open_named_checkpoint(checkpoint, config);
    const formats::Checkpoint& ckpt = opened.checkpoint;
    const std::vector<LinearLayer> linears = find_linear_layers(ckpt, config.selection.not_linear);
    const Selection selection = select_layers(linears, config);
    check_selected_shapes(selection, config.quant, checkpoint);  // as `pack` does: zero or absurd widths

    warn_about_selection(selection, ckpt);
    {  // the dry run lists them as the runtime would; `pack` refuses them (exit 3)
      std::vector<std::string> names;
      for (const SelectedLayer& s : selection.layers) names.push_back(s.layer->name);
      for (const PackFileCollision& c : pack_file_collisions(names))
        fmt::print(stderr,
                   "duquant: warning: {}: the runtime could load only one of them from a pack; `duquant pack` "
                   "refuses this selection (exit 3)\n",
                   describe(c));
    }

    if (json) {
      nlohmann::ordered_json j;
      j["checkpoint"] = checkpoint;
      j["names"] = names_json(opened.names);
      const nlohmann::ordered_json body = selection_json(selection, config, &opened, checkpoint);
      for (const auto& [k, v] : body.items()) j[k] = v;
      fmt::print("{}\n", formats::dump_json(j, 2));
    } else {
      fmt::print("{}", dryrun_text(selection, config));
      if (selection.layers.empty()) fmt::print("{}", no_match_text(linears, config, guess_layout(ckpt), opened.names));
    }
    if (selection.layers.empty()) {
      std::fflush(stdout);
      fail(ErrorKind::no_match, "{}: the selection matches none of its {} linear layers", checkpoint, linears.size());
    }
    return 0;
  }
};

}  // namespace

Action register_list_linears(CLI::App& app) {
  auto cmd = std::make_shared<ListLinears>();
  CLI::App* c = app.add_subcommand("list-linears", "Dry run: the linear layers a selection picks, with their bits");
  c->add_option("checkpoint", cmd->checkpoint, "safetensors file, sharded index, or folder")->required();
  c->add_flag("--json", cmd->json,
              "Machine-readable output: per layer name, shape, dtype, bits, bytes and pack bytes; totals");
  add_config_flags(*c, cmd->flags);
  return [cmd, c]() { return c->parsed() ? cmd->run() : -1; };
}

}  // namespace duquant::cli

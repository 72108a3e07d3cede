// duquant version / duquant presets: what this build is, and the named configurations.
#include <fmt/format.h>

#include <memory>

#include "cli/commands.hpp"
#include "config/presets.hpp"
#include "engine/device.hpp"

namespace duquant::cli {

Action register_version(CLI::App& app) {
  CLI::App* c = app.add_subcommand("version", "Version, build options and the devices found");
  return [c]() {
    if (!c->parsed()) return -1;
    const DeviceReport d = probe_devices();
    fmt::print("duquant {}\n", DUQUANT_VERSION);
    if (d.cuda_built)
      fmt::print("CUDA backend: built (architectures {}); devices: {}{}\n", d.cuda_archs, d.cuda_devices,
                 d.cuda_devices == 0 ? fmt::format(" ({})", d.cuda_status) : "");
    else
      fmt::print("CUDA backend: {}\n", d.cuda_status);
    return 0;
  };
}

Action register_presets(CLI::App& app) {
  CLI::App* c = app.add_subcommand("presets", "List the named configurations (--preset NAME)");
  return [c]() {
    if (!c->parsed()) return -1;
    for (const Preset& p : presets()) {
      fmt::print("{}\n  {}\n", p.name, p.description);
      fmt::print("  runtime {}, written for {} names; layers on pi0.5: {}, on GR00T N1.5: {}\n",
                 runtime_name(p.runtime), p.model, p.pi05_layers, p.gr00t_layers);
      for (const auto& [knob, value] : p.knobs) fmt::print("  {} '{}'\n", knob_info(knob).flag, value);
    }
    return 0;
  };
}

}  // namespace duquant::cli

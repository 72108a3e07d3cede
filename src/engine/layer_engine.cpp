#include "engine/layer_engine.hpp"

#include <algorithm>
#include <cstdlib>
#include <set>

#include "duquant/error.hpp"
#include "engine/device.hpp"

#include "engine/cuda_loader.hpp"

namespace duquant {

LayerMath compute_layer_math(const WeightView& w, const QuantConfig& q, int bits) {
  LayerMath m;
  MatrixF w_t;
  m.t = compute_transform(w, q, &w_t);
  rotate_column_blocks(w_t, m.t, q.block);
  m.weight_scale = reference_weight_scale(w_t);
  choose_row_rotation_signs(w_t, m.t, q.block_out, bits);  // signs that quantize best
  apply_output_rotation(w_t, m.t, q.block_out);
  m.quant = quantize_rows(w_t, bits);
  m.rtn_err2 = rtn_squared_error(w, bits);
  return m;
}

namespace {

class CpuEngine final : public LayerEngine {
 public:
  std::string name() const override { return "cpu"; }
  LayerMath compute(const WeightView& w, const QuantConfig& q, int bits, const std::string&) override {
    return compute_layer_math(w, q, bits);
  }
};

// "0,2" -> {0, 2}: non-empty decimal indices, no repeats.
std::vector<int> parse_indices(const std::string& spec, const std::string& list) {
  std::vector<int> out;
  std::set<int> seen;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = list.find(',', start);
    const std::string item = list.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    DQ_CHECK(!item.empty() && item.size() <= 4 &&
                 std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; }),
             usage, "--device {}: '{}' is not a device index (expected cuda:N[,M...])", spec, item);
    const int index = std::stoi(item);
    DQ_CHECK(seen.insert(index).second, usage, "--device {}: device {} is named twice", spec, index);
    out.push_back(index);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

}  // namespace

std::unique_ptr<LayerEngine> make_cpu_engine() { return std::make_unique<CpuEngine>(); }

DevicePlan open_devices(const std::string& spec, const std::function<void(const std::string&)>& notice) {
  DevicePlan plan;
  auto cpu = [&] {
    plan.engines.push_back(make_cpu_engine());
    plan.description = "cpu";
    return std::move(plan);
  };
  if (spec == "cpu") {
    if (const char* seam = std::getenv("DUQUANT_TEST_PIPELINE"); seam != nullptr && *seam != '\0') {
      const int n = seam[1] == '\0' ? seam[0] - '0' : 0;  // one digit, nothing else
      DQ_CHECK(n >= 1 && n <= 8, usage, "DUQUANT_TEST_PIPELINE={}: expected 1-8 engines", seam);
      for (int k = 0; k < n; ++k) plan.engines.push_back(make_cpu_engine());
      plan.overlap = true;
      plan.description = fmt::format("cpu (pipeline of {})", n);
      return plan;
    }
    return cpu();
  }
  const bool is_auto = spec == "auto";
  DQ_CHECK(is_auto || spec == "cuda" || spec.rfind("cuda:", 0) == 0, usage,
           "--device {}: expected auto, cpu, cuda or cuda:N[,M...]", spec);
  std::vector<int> wanted;
  if (spec.rfind("cuda:", 0) == 0) wanted = parse_indices(spec, spec.substr(5));
  const DeviceReport report = probe_devices();
  if (!report.cuda_built || report.cuda_devices == 0) {
    const std::string why =
        report.cuda_built ? fmt::format("no CUDA device ({})", report.cuda_status) : report.cuda_status;
    if (is_auto) {
      if (notice) notice(fmt::format("{}: packing on the CPU", why));
      return cpu();
    }
    fail(ErrorKind::device, "--device {}: {}", spec, why);
  }
  if (wanted.empty())
    for (int d = 0; d < report.cuda_devices; ++d) wanted.push_back(d);
  for (int d : wanted)
    DQ_CHECK(d < report.cuda_devices, device, "--device {}: there is no CUDA device {} ({} found)", spec, d,
             report.cuda_devices);
#if defined(DUQUANT_HAVE_CUDA)
  std::string why;
  const kernels::CudaModule* module = cuda_module(why);
  DQ_CHECK(module != nullptr, device, "--device {}: {}", spec, why);
  plan.cuda = plan.overlap = true;
  plan.description = "cuda:";
  for (std::size_t k = 0; k < wanted.size(); ++k) {
    plan.engines.push_back(module->make_engine(wanted[k]));
    plan.description += fmt::format("{}{}", k ? "," : "", wanted[k]);
  }
  return plan;
#else
  fail(ErrorKind::internal, "--device {}: CUDA devices reported by a build without the backend", spec);
#endif
}

}  // namespace duquant

#include "formats/fault_injection.hpp"

#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "duquant/error.hpp"

namespace duquant::formats {
namespace {

struct FaultPlan {
  FaultOp op = FaultOp::write;
  std::uint64_t nth = 0;
  int error = ENOSPC;
};

std::optional<FaultPlan> parse_plan(const char* value) {
  if (value == nullptr || *value == '\0') return std::nullopt;
  const std::string_view text(value);
  auto bad = [&]() -> std::optional<FaultPlan> {
    fail(ErrorKind::usage,
         "DUQUANT_TEST_FAULT={}: expected OP:N[:ERRNO] with OP write|fsync|rename|flock, N >= 1, "
         "ERRNO ENOSPC|EIO|ENOLCK",
         text);
  };
  const auto c1 = text.find(':');
  if (c1 == std::string_view::npos) return bad();
  const std::string_view op = text.substr(0, c1);
  std::string_view rest = text.substr(c1 + 1);
  std::string_view err = "ENOSPC";
  if (const auto c2 = rest.find(':'); c2 != std::string_view::npos) {
    err = rest.substr(c2 + 1);
    rest = rest.substr(0, c2);
  }
  FaultPlan plan;
  if (op == "write")
    plan.op = FaultOp::write;
  else if (op == "fsync")
    plan.op = FaultOp::fsync;
  else if (op == "rename")
    plan.op = FaultOp::rename;
  else if (op == "flock")
    plan.op = FaultOp::flock;
  else
    return bad();
  const auto [end, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), plan.nth);
  if (ec != std::errc() || end != rest.data() + rest.size() || plan.nth == 0) return bad();
  if (err == "ENOSPC")
    plan.error = ENOSPC;
  else if (err == "EIO")
    plan.error = EIO;
  else if (err == "ENOLCK")
    plan.error = ENOLCK;
  else
    return bad();
  return plan;
}

std::atomic<std::uint64_t> g_calls[4];

}  // namespace

int injected_fault(FaultOp op) {
  static const std::optional<FaultPlan> plan = parse_plan(std::getenv("DUQUANT_TEST_FAULT"));
  if (!plan || plan->op != op) return 0;
  const std::uint64_t n = g_calls[static_cast<int>(op)].fetch_add(1, std::memory_order_relaxed) + 1;
  return n == plan->nth ? plan->error : 0;
}

}  // namespace duquant::formats

// libFuzzer entry point, compiled once per target with DUQUANT_FUZZ_CHECK naming its check
// (fuzz_checks.hpp). A clean refusal or an acceptance returns; a broken invariant or any exception
// other than the reader's documented errors prints what happened and aborts: a crash to libFuzzer.
#include <cstdio>
#include <cstdlib>
#include <exception>

#include "fuzz/fuzz_checks.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    (void)duquant::fuzz::DUQUANT_FUZZ_CHECK(duquant::fuzz::Bytes(reinterpret_cast<const std::byte*>(data), size));
  } catch (const duquant::fuzz::Violation& v) {
    std::fprintf(stderr, "fuzz: invariant broken: %s\n", v.what());
    std::abort();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: unexpected exception: %s\n", e.what());
    std::abort();
  }
  return 0;
}

// Loads libduquant_cuda.so on first use (kernels/cuda_module.hpp). Looked for, in order: the file
// named by DUQUANT_CUDA_MODULE, beside the running executable, where this build tree put it, and
// by name through the dynamic linker's search path.
#include "engine/cuda_loader.hpp"

#include <dlfcn.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <vector>

#include <fmt/format.h>

namespace duquant {

#if defined(DUQUANT_HAVE_CUDA)
const kernels::CudaModule* cuda_module(std::string& why) {
  static std::once_flag once;
  static const kernels::CudaModule* module = nullptr;
  static std::string failure;
  std::call_once(once, [] {
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("DUQUANT_CUDA_MODULE"); env != nullptr && *env != '\0')
      candidates.emplace_back(env);
    std::error_code ec;
    const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (!ec) candidates.push_back((exe.parent_path() / DUQUANT_CUDA_MODULE_NAME).string());
    candidates.emplace_back(DUQUANT_CUDA_MODULE_BUILT);
    candidates.emplace_back(DUQUANT_CUDA_MODULE_NAME);
    for (const std::string& path : candidates) {
      if (path.find('/') != std::string::npos && !std::filesystem::exists(path, ec)) continue;
      void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (handle == nullptr) {
        const char* e = ::dlerror();
        failure = fmt::format("cannot load the CUDA backend {}: {}", path, e ? e : "unknown error");
        continue;
      }
      using Entry = const kernels::CudaModule* (*)();
      auto entry = reinterpret_cast<Entry>(::dlsym(handle, "duquant_cuda_module"));
      if (entry == nullptr) {
        failure = fmt::format("{} has no duquant_cuda_module entry point", path);
        continue;
      }
      const kernels::CudaModule* found = entry();
      if (found == nullptr || found->abi_version != kernels::kCudaModuleAbiVersion ||
          found->struct_size != sizeof(kernels::CudaModule)) {
        failure = fmt::format(
            "{} was built for another duquant (module interface {}, {} bytes; this duquant needs {}, "
            "{} bytes): rebuild it with this version",
            path, found ? found->abi_version : 0u, found ? found->struct_size : 0u, kernels::kCudaModuleAbiVersion,
            sizeof(kernels::CudaModule));
        continue;
      }
      module = found;
      return;
    }
    if (failure.empty()) failure = fmt::format("the CUDA backend {} was not found", DUQUANT_CUDA_MODULE_NAME);
  });
  if (module == nullptr) why = failure;
  return module;
}
#endif

}  // namespace duquant

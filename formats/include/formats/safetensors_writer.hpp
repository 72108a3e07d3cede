// Streaming safetensors writer: the header is computed from the tensor list up front, then data
// is appended tensor after tensor, in order, in chunks of any size. Memory stays bounded by the
// caller's chunk whatever the file size; the file appears only when complete (AtomicFile).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "formats/atomic_file.hpp"
#include "formats/dtype.hpp"
#include "formats/safetensors_header.hpp"  // kMaxHeaderBytes

namespace duquant::formats {

struct TensorSpec {
  std::string name;
  DType dtype{};
  std::vector<std::uint64_t> shape;
  std::uint64_t nbytes() const;  // validated: overflow and whole bytes
};

// The header bytes (8-byte length + JSON padded with spaces to a multiple of 8) for tensors
// stored back to back in the given order.
std::string safetensors_header_bytes(const std::vector<TensorSpec>& tensors,
                                     const std::map<std::string, std::string>& metadata);

// At least the bytes `tensor`'s entry adds to a header's JSON (its name as written, dtype, shape,
// data offsets of up to 20 digits, punctuation): a writer that splits tensors over files keeps each
// header under kMaxHeaderBytes, which readers (duquant's, the reference's) refuse above.
std::uint64_t header_entry_bound(const TensorSpec& tensor);

class SafetensorsWriter {
 public:
  SafetensorsWriter(std::filesystem::path path, std::vector<TensorSpec> tensors,
                    const std::map<std::string, std::string>& metadata);
  // Written into `kept` until commit (AtomicFile's second constructor: the caller's file, which a
  // failed run leaves in place).
  SafetensorsWriter(std::filesystem::path path, std::filesystem::path kept, std::vector<TensorSpec> tensors,
                    const std::map<std::string, std::string>& metadata);
  // Appends the next bytes of data (tensors in order; a chunk may span tensors).
  void write(std::span<const std::byte> chunk);
  // Checks that every tensor received exactly its bytes, then publishes the file.
  void commit();
  std::uint64_t data_bytes() const noexcept { return total_; }
  std::uint64_t data_bytes_written() const noexcept { return written_; }

 private:
  AtomicFile file_;
  std::uint64_t total_ = 0;
  std::uint64_t written_ = 0;
};

}  // namespace duquant::formats

// The checks behind the libFuzzer targets: one per reader of untrusted bytes.
//
// Each check runs its reader on arbitrary bytes. A duquant::Error of a kind the reader documents is
// a clean refusal (Outcome::refused). An input the reader accepts but that breaks its documented
// invariants (data outside the file, a shard name leaving the folder, a count that does not match
// the shape, ...) throws Violation; any other exception escapes. The fuzz targets (fuzz_main.cpp)
// abort on both, which libFuzzer reports as a crash; the corpus test (test_fuzz_corpus.cpp) runs
// every seed and every regression file through the same checks in each CTest build.
#pragma once

#include <cstddef>
#include <span>
#include <stdexcept>
#include <string_view>
#include <vector>

namespace duquant::fuzz {

struct Violation : std::logic_error {
  using std::logic_error::logic_error;
};

enum class Outcome { accepted, refused };
inline const char* outcome_name(Outcome o) { return o == Outcome::accepted ? "accepted" : "refused"; }

using Bytes = std::span<const std::byte>;
using Check = Outcome (*)(Bytes);

// parse_safetensors_header: a single-file checkpoint's header and data layout.
Outcome check_safetensors_header(Bytes input);
// parse_safetensors_index: model.safetensors.index.json of a sharded checkpoint.
Outcome check_safetensors_index(Bytes input);
// parse_npy (input starting with the .npy magic) or parse_zip + NpzFile::parse (anything else), and
// the typed accessors on every array.
Outcome check_npz(Bytes input);
// The same text as a pack's manifest.json (parse_manifest) and as a --config file
// (apply_config_text + resolve): accepted when either reader accepts it.
Outcome check_json_config(Bytes input);
// CalibDump::open on the bytes written to a file (HDF5 or safetensors dump), then every call read.
Outcome check_calib_dump(Bytes input);

struct Target {
  std::string_view name;  // fuzz_<name> is the libFuzzer binary; seeds/<name>/ its committed corpus
  Check check;
};
const std::vector<Target>& targets();

}  // namespace duquant::fuzz

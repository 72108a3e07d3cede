// Calibration activation dumps: the strict HDF5 reader and the safetensors container
// (docs/calibration-dumps.md).
//
// HDF5 1.10 is not safe on hostile files by itself; measured on 1.10.8:
//  - its deflate filter doubles its output buffer until the stream ends, so a 0.5 MB file made
//    a 1 MiB call allocate 1.1 GB;
//  - its fletcher32 filter reads far out of bounds on a stored chunk shorter than 4 bytes;
//  - a chunk whose stored (or decoded) size is smaller than the chunk is over-read on the heap,
//    filtered or not.
//  - on a corrupt chunk index, H5Dread_chunk may write more bytes than the chunk size
//    H5Dget_chunk_info_by_coord reported for the same chunk;
//  - corrupt metadata can crash or hang it (fuzzing: inside its global-heap reader).
// Built-in filters cannot be replaced (H5Zregister refuses "predefined filters"), so HDF5 reads
// only metadata here: every chunk's index entry is checked (present, inside the file, a plausible
// size, no two chunks overlapping) and its bytes are read with pread and decoded by the code below
// with buffers bounded by the validated chunk size; contiguous data is read with pread at its
// checked offset; only compact data (inside the object header, size checked) goes through
// H5Dread. The structure is scanned in a forked child first (see probe_hdf5).
#include "formats/calib_dump.hpp"

#include "calib_dump_internal.hpp"

namespace duquant::formats {
namespace fs = std::filesystem;
using namespace calib_internal;

namespace {

void open_hdf5(State& impl) {
  const std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
  quiet_hdf5(impl.label);
  probe_hdf5(impl);
  scan_hdf5(impl);
}

void open_safetensors(State& impl) {
  impl.checkpoint.emplace(Checkpoint::open(impl.path));
  const Checkpoint& ckpt = *impl.checkpoint;
  const auto& tensors = ckpt.tensors();
  std::map<std::string, Layer, std::less<>> layers;
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorRef& t = tensors[i];
    const std::string where = ckpt.files().at(t.file).path.string() + ": tensor '" + printable(t.name) + "'";
    const std::size_t dot = t.name.rfind(".x_");
    if (dot == std::string::npos || dot == 0 || !call_index(std::string_view(t.name).substr(dot + 1)))
      bad(where,
          "is not named '<layer>.x_NNNN' (a layer name, '.x_' and at least 4 decimal digits); a safetensors "
          "dump holds nothing else");
    const std::string layer = t.name.substr(0, dot);
    const std::string call = t.name.substr(dot + 1);
    check_layer_name(layer, where);
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      bad(where, "unsupported element type {}; a call is F32, F16 or BF16", dtype_name(t.dtype));
    const Shape shape = check_dims(t.shape, where);
    Layer& l = layers[layer];
    l.calls.push_back({*call_index(call), call, shape.rows, shape.cols, std::string(dtype_name(t.dtype))});
    l.refs.push_back(i);
  }
  for (auto& [name, layer] : layers) sort_calls(layer, impl.label + ": layer '" + printable(name) + "'");
  if (layers.empty()) bad(impl.label, "holds no calls (tensors named '<layer>.x_NNNN')");
  impl.layers = std::move(layers);
}

// Where the HDF5 signature sits (offset 0, or a user block of 512, 1024, ... bytes), if anywhere.
std::optional<std::uint64_t> hdf5_signature_at(int fd, std::uint64_t size, const std::string& file) {
  for (std::uint64_t offset = 0; offset + 8 <= size; offset = offset ? offset * 2 : 512) {
    unsigned char head[8] = {};
    pread_exact(fd, head, 8, offset, file, "the first bytes");
    if (std::memcmp(head, kHdf5Signature, 8) == 0) return offset;
    if (offset >= (std::uint64_t{1} << 40)) break;
  }
  return std::nullopt;
}

}  // namespace

struct CalibDump::Impl {
  State s;
};

CalibDump::CalibDump(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CalibDump::CalibDump(CalibDump&&) noexcept = default;
CalibDump& CalibDump::operator=(CalibDump&&) noexcept = default;
CalibDump::~CalibDump() = default;

CalibDump CalibDump::open(const fs::path& path) {
  auto impl = std::make_unique<Impl>();
  State& st = impl->s;
  st.path = path;
  st.label = path.string();
  const std::string& file = st.label;

  std::error_code ec;
  const auto status = fs::status(path, ec);
  DQ_CHECK(!ec || ec == std::errc::no_such_file_or_directory, io, "{}: cannot access: {}", file, ec.message());
  DQ_CHECK(fs::exists(status), io, "{}: no such file", file);
  if (fs::is_directory(status)) {  // a sharded safetensors dump: the checkpoint reader's rules
    st.container = "safetensors";
    open_safetensors(st);
    return CalibDump(std::move(impl));
  }
  DQ_CHECK(fs::is_regular_file(status), io, "{}: not a regular file", file);
  st.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // never blocks, even if swapped for a FIFO
  DQ_CHECK(st.fd >= 0, io, "{}: cannot open for reading: {}", file, std::strerror(errno));
  struct stat info {};
  DQ_CHECK(::fstat(st.fd, &info) == 0, io, "{}: cannot read the size: {}", file, std::strerror(errno));
  DQ_CHECK(S_ISREG(info.st_mode), io, "{}: not a regular file", file);
  st.file_size = static_cast<std::uint64_t>(info.st_size);
  if (st.file_size == 0) bad(file, "empty file (0 bytes); a calibration dump is an HDF5 or safetensors file");

  const auto signature = hdf5_signature_at(st.fd, st.file_size, file);
  if (signature && *signature > 0)
    bad(file, "HDF5 file with a {}-byte user block; write the dump without a user block", *signature);
  if (signature) {
    st.container = "hdf5";
    open_hdf5(st);
  } else {
    ::close(std::exchange(st.fd, -1));  // the safetensors reader maps the file itself
    st.container = "safetensors";
    open_safetensors(st);
  }
  return CalibDump(std::move(impl));
}

const fs::path& CalibDump::path() const { return impl_->s.path; }
std::string_view CalibDump::container() const { return impl_->s.container; }

std::vector<std::string> CalibDump::layers() const {
  std::vector<std::string> names;
  names.reserve(impl_->s.layers.size());
  for (const auto& entry : impl_->s.layers) names.push_back(entry.first);
  return names;
}

const std::vector<DumpCall>* CalibDump::calls(std::string_view layer) const {
  const auto it = impl_->s.layers.find(layer);
  return it == impl_->s.layers.end() ? nullptr : &it->second.calls;
}

void CalibDump::read(std::string_view layer, const DumpCall& call, std::vector<float>& out) const {
  const State& impl = impl_->s;
  const auto it = impl.layers.find(layer);
  DQ_CHECK(it != impl.layers.end(), internal, "{}: read: the dump has no layer '{}'", impl.label, printable(layer));
  const Layer& l = it->second;
  const auto pos = std::lower_bound(l.calls.begin(), l.calls.end(), call.index,
                                    [](const DumpCall& c, std::int64_t index) { return c.index < index; });
  DQ_CHECK(pos != l.calls.end() && pos->index == call.index && pos->name == call.name && pos->rows == call.rows &&
               pos->cols == call.cols && pos->dtype == call.dtype,
           internal, "{}: read: call '{}' is not a call of layer '{}' in this dump", impl.label, printable(call.name),
           printable(layer));
  const std::uint64_t ref = l.refs[static_cast<std::size_t>(pos - l.calls.begin())];

  if (impl.container == "safetensors") {
    const TensorRef& t = impl.checkpoint->tensors().at(ref);
    out.resize(t.numel);
    impl.checkpoint->read_f32(t, out);
    impl.checkpoint->release(t);
    check_finite(out, call.cols,
                 impl.checkpoint->files().at(t.file).path.string() + ": tensor '" + printable(t.name) + "'");
    return;
  }

  const std::string where = impl.label + ": /" + printable(layer) + "/" + printable(call.name);
  {
    const std::lock_guard<std::recursive_mutex> lock(hdf5_mutex());
    quiet_hdf5(where);
    const H5Object dset(h5_id(H5Oopen_by_addr(impl.h5file, static_cast<haddr_t>(ref)), where, "H5Oopen_by_addr"));
    if (H5Iget_type(dset.get()) != H5I_DATASET) bad(where, "is no longer a dataset (was the file changed?)");
    const DatasetInfo info = inspect(dset.get(), where, impl.file_size, false);
    if (info.shape.rows != call.rows || info.shape.cols != call.cols || dtype_name(info.dtype) != call.dtype)
      bad(where, "changed since the dump was opened");
    out.resize(info.shape.numel);
    if (info.layout == H5D_CHUNKED) {
      read_chunked(dset.get(), info, impl.fd, impl.file_size, where, out);
    } else if (info.layout == H5D_CONTIGUOUS) {
      read_contiguous(dset.get(), info, impl.fd, where, out);
    } else {
      read_compact(dset.get(), info, where, out);
    }
  }
  check_finite(out, call.cols, where);
}

}  // namespace duquant::formats

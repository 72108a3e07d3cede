// Calibration dumps: HDF5 plumbing, datasets and the structure scan (calib_dump.cpp).
#include "calib_dump_internal.hpp"

namespace duquant::formats::calib_internal {

// ---------------------------------------------------------------------------------------------
// HDF5 plumbing: one lock for every HDF5 call of this file, RAII for every id, and errors that
// carry HDF5's own description.

// Recursive: an Impl destroyed while an exception unwinds out of open() closes its file again.
std::recursive_mutex& hdf5_mutex() {
  static std::recursive_mutex m;
  return m;
}

struct StackText {
  std::string text;
  bool io = false;  // the system refused (open, lock or read), not the file's content
  int count = 0;
};

herr_t walk_entry(unsigned, const H5E_error2_t* e, void* data) noexcept {
  try {
    auto* s = static_cast<StackText*>(data);
    const std::string func = e->func_name ? e->func_name : "?";
    if (func.find("sec2") != std::string::npos || e->min_num == H5E_CANTLOCKFILE) s->io = true;
    if (s->count++ < 4) {
      s->text += fmt::format("{}{} ({})", s->text.empty() ? "" : "; ", printable(e->desc ? e->desc : "?"), func);
    }
  } catch (...) {}
  return 0;
}

// HDF5's error stack of the calling thread, innermost error first.
StackText hdf5_stack() {
  StackText s;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_entry, &s);
  if (s.text.empty()) s.text = "no HDF5 error description";
  return s;
}

[[noreturn]] void h5_fail(const std::string& where, std::string_view call) {
  const StackText s = hdf5_stack();
  fail(s.io ? ErrorKind::io : ErrorKind::format, "{}: {} failed: {}", where, call, s.text);
}

hid_t h5_id(hid_t id, const std::string& where, std::string_view call) {
  if (id < 0) h5_fail(where, call);
  return id;
}

void h5_ok(herr_t status, const std::string& where, std::string_view call) {
  if (status < 0) h5_fail(where, call);
}

// Per call (the setting is per thread in thread-safe builds): no printing of HDF5 errors to
// stderr, and never a filter plugin loaded from HDF5_PLUGIN_PATH.
void quiet_hdf5(const std::string& where) {
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  if (H5PLset_loading_state(0) < 0) fail(ErrorKind::internal, "{}: cannot disable HDF5 filter plugins", where);
}

// ---------------------------------------------------------------------------------------------
// HDF5 datasets

std::optional<std::string> dtype_attribute(hid_t dset, const std::string& where) {
  const htri_t exists = H5Aexists(dset, "dtype");
  if (exists < 0) h5_fail(where, "looking for the attribute 'dtype' (H5Aexists)");
  if (exists == 0) return std::nullopt;
  const H5Attr attr(h5_id(H5Aopen(dset, "dtype", H5P_DEFAULT), where, "opening the attribute 'dtype' (H5Aopen)"));
  const H5Type type(h5_id(H5Aget_type(attr.get()), where, "H5Aget_type"));
  const H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_STRING)
    bad(where, "the attribute 'dtype' is not a string (HDF5 type class {})", static_cast<int>(cls));
  const H5Space space(h5_id(H5Aget_space(attr.get()), where, "H5Aget_space"));
  const hssize_t points = H5Sget_simple_extent_npoints(space.get());
  if (points != 1) bad(where, "the attribute 'dtype' holds {} values; expected one string", points);
  const htri_t variable = H5Tis_variable_str(type.get());
  if (variable < 0) h5_fail(where, "H5Tis_variable_str");
  std::string value;
  if (variable > 0) {
    const H5Type mem(h5_id(H5Tcopy(H5T_C_S1), where, "H5Tcopy"));
    h5_ok(H5Tset_size(mem.get(), H5T_VARIABLE), where, "H5Tset_size");
    h5_ok(H5Tset_cset(mem.get(), H5Tget_cset(type.get())), where, "H5Tset_cset");
    char* text = nullptr;
    h5_ok(H5Aread(attr.get(), mem.get(), &text), where, "reading the attribute 'dtype' (H5Aread)");
    if (text) {
      value.assign(text, strnlen(text, kMaxDtypeAttrBytes + 1));
      H5free_memory(text);
    }
    if (value.size() > kMaxDtypeAttrBytes)
      bad(where, "the attribute 'dtype' is longer than {} bytes", kMaxDtypeAttrBytes);
  } else {
    const std::size_t size = H5Tget_size(type.get());
    if (size == 0 || size > kMaxDtypeAttrBytes)
      bad(where, "the attribute 'dtype' is a {}-byte string; at most {} bytes are read", size, kMaxDtypeAttrBytes);
    const H5Type mem(h5_id(H5Tcopy(type.get()), where, "H5Tcopy"));
    value.assign(size, '\0');
    h5_ok(H5Aread(attr.get(), mem.get(), value.data()), where, "reading the attribute 'dtype' (H5Aread)");
    while (!value.empty() && (value.back() == '\0' || value.back() == ' ')) value.pop_back();
    value.resize(strnlen(value.c_str(), value.size()));
  }
  return value;
}

constexpr const char* kDtypeRule =
    "a call is float32, float16, or bfloat16 stored as uint16 with the attribute dtype=\"bfloat16\"";

bool is_ieee(hid_t type, std::size_t size) {
  std::size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
  if (H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize) < 0) return false;
  const H5T_order_t order = H5Tget_order(type);
  if (order != H5T_ORDER_LE && order != H5T_ORDER_BE) return false;
  if (H5Tget_precision(type) != size * 8 || H5Tget_offset(type) != 0) return false;
  if (H5Tget_norm(type) != H5T_NORM_IMPLIED) return false;
  if (size == 4) return spos == 31 && epos == 23 && esize == 8 && mpos == 0 && msize == 23 && H5Tget_ebias(type) == 127;
  return spos == 15 && epos == 10 && esize == 5 && mpos == 0 && msize == 10 && H5Tget_ebias(type) == 15;
}

void classify_type(hid_t dset, hid_t type, const std::string& where, DatasetInfo& info) {
  const H5T_class_t cls = H5Tget_class(type);
  if (cls < 0) h5_fail(where, "H5Tget_class");
  const std::size_t size = H5Tget_size(type);
  switch (cls) {
    case H5T_FLOAT: {
      if (size == 8)
        bad(where,
            "unsupported element type: float64 (refused: it would be narrowed to float32 silently and "
            "doubles the dump; store float32); {}",
            kDtypeRule);
      if (size != 4 && size != 2) bad(where, "unsupported element type: {}-byte float; {}", size, kDtypeRule);
      if (!is_ieee(type, size)) {
        std::size_t spos = 0, epos = 0, esize = 0, mpos = 0, msize = 0;
        H5Tget_fields(type, &spos, &epos, &esize, &mpos, &msize);
        bad(where,
            "unsupported element type: a {}-byte float that is not IEEE binary{} (precision {}, sign bit {}, exponent "
            "{} bits at {}, mantissa {} bits at {}, bias {}); {}",
            size, size * 8, H5Tget_precision(type), spos, esize, epos, msize, mpos, H5Tget_ebias(type), kDtypeRule);
      }
      info.dtype = size == 4 ? DType::F32 : DType::F16;
      info.big_endian = H5Tget_order(type) == H5T_ORDER_BE;
      const auto attr = dtype_attribute(dset, where);
      if (attr && *attr == "bfloat16")
        bad(where, "the attribute dtype=\"bfloat16\" is on {} data; bfloat16 is stored as uint16",
            size == 4 ? "float32" : "float16");
      break;
    }
    case H5T_INTEGER: {
      const H5T_sign_t sign = H5Tget_sign(type);
      const H5T_order_t order = H5Tget_order(type);
      if (sign == H5T_SGN_NONE && size == 2 && H5Tget_precision(type) == 16 && H5Tget_offset(type) == 0 &&
          (order == H5T_ORDER_LE || order == H5T_ORDER_BE)) {
        const auto attr = dtype_attribute(dset, where);
        if (!attr)
          bad(where, "unsupported element type: uint16 without the attribute dtype=\"bfloat16\"; {}", kDtypeRule);
        if (*attr != "bfloat16")
          bad(where, "unsupported element type: uint16 with the attribute dtype=\"{}\"; {}", printable(*attr),
              kDtypeRule);
        info.dtype = DType::BF16;
        info.big_endian = order == H5T_ORDER_BE;
        break;
      }
      bad(where, "unsupported element type: {} {}-bit integer; {}", sign == H5T_SGN_NONE ? "unsigned" : "signed",
          size * 8, kDtypeRule);
    }
    case H5T_STRING: {
      const htri_t variable = H5Tis_variable_str(type);
      if (variable > 0) bad(where, "unsupported element type: variable-length string; {}", kDtypeRule);
      bad(where, "unsupported element type: fixed-length string ({} bytes); {}", size, kDtypeRule);
    }
    case H5T_COMPOUND: bad(where, "unsupported element type: compound (struct); {}", kDtypeRule);
    case H5T_ENUM: bad(where, "unsupported element type: enum; {}", kDtypeRule);
    case H5T_VLEN: bad(where, "unsupported element type: variable-length sequence; {}", kDtypeRule);
    case H5T_ARRAY: bad(where, "unsupported element type: array; {}", kDtypeRule);
    case H5T_REFERENCE: bad(where, "unsupported element type: reference; {}", kDtypeRule);
    case H5T_OPAQUE: bad(where, "unsupported element type: opaque; {}", kDtypeRule);
    case H5T_BITFIELD: bad(where, "unsupported element type: bitfield; {}", kDtypeRule);
    case H5T_TIME: bad(where, "unsupported element type: time; {}", kDtypeRule);
    default: bad(where, "unsupported element type: HDF5 type class {}; {}", static_cast<int>(cls), kDtypeRule);
  }
  info.esize = dtype_bits(info.dtype) / 8;
}

// Largest stored size of a deflated chunk: what deflate can emit for the chunk (and a checksum).
std::uint64_t max_deflated_bytes(const DatasetInfo& info) {
  return std::uint64_t{compressBound(static_cast<uLong>(info.chunk_bytes + 4))} + 4;
}

// Checks one chunk's index entry before any of its bytes are read.
void check_chunk(const DatasetInfo& info, const ChunkEntry& c, std::span<const hsize_t> offset, std::uint64_t file_size,
                 const std::string& where) {
  if (c.addr == HADDR_UNDEF || c.size == 0)
    bad(where, "chunk at {} was never written (the dataset is incomplete)", dims_text(offset));
  if (c.addr > file_size || c.size > file_size - c.addr)
    bad(where, "chunk at {} ({} bytes at offset {}) lies past the end of the file ({} bytes)", dims_text(offset),
        c.size, c.addr, file_size);
  const bool checksum = applied(info.fletcher_at, c.mask);
  if (applied(info.deflate_at, c.mask)) {
    if (c.size > max_deflated_bytes(info))
      bad(where, "deflated chunk at {} stores {} bytes, more than deflate emits for a {}-byte chunk ({})",
          dims_text(offset), c.size, info.chunk_bytes, max_deflated_bytes(info));
  } else {
    const std::uint64_t expected = info.chunk_bytes + (checksum ? 4 : 0);
    if (c.size != expected)
      bad(where, "chunk at {} stores {} bytes; expected {} ({} bytes of data{})", dims_text(offset), c.size, expected,
          info.chunk_bytes, checksum ? " and a 4-byte checksum" : "");
  }
}

ChunkEntry chunk_entry(hid_t dset, std::span<const hsize_t> offset, const std::string& where) {
  ChunkEntry c;
  h5_ok(H5Dget_chunk_info_by_coord(dset, offset.data(), &c.mask, &c.addr, &c.size), where,
        "reading the chunk index (H5Dget_chunk_info_by_coord)");
  return c;
}

// Everything about a dataset that decides whether and how it is read; refuses the rest.
// With check_chunks, also checks every chunk's index entry (open); read() checks them as it goes.
DatasetInfo inspect(hid_t dset, const std::string& where, std::uint64_t file_size, bool check_chunks) {
  DatasetInfo info;
  {
    const H5Space space(h5_id(H5Dget_space(dset), where, "H5Dget_space"));
    const H5S_class_t cls = H5Sget_simple_extent_type(space.get());
    if (cls == H5S_NULL) bad(where, "null dataspace (no data); {}", kCallShape);
    if (cls == H5S_SCALAR) bad(where, "wrong rank: 0 (a scalar); {}", kCallShape);
    if (cls != H5S_SIMPLE) h5_fail(where, "H5Sget_simple_extent_type");
    const int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank < 0 || rank > H5S_MAX_RANK) h5_fail(where, "H5Sget_simple_extent_ndims");
    hsize_t dims[H5S_MAX_RANK] = {};
    h5_ok(H5Sget_simple_extent_dims(space.get(), dims, nullptr), where, "H5Sget_simple_extent_dims");
    info.dims.assign(dims, dims + rank);
    info.shape = check_dims(info.dims, where);
  }
  {
    const H5Type type(h5_id(H5Dget_type(dset), where, "H5Dget_type"));
    classify_type(dset, type.get(), where, info);
  }
  const H5Plist dcpl(h5_id(H5Dget_create_plist(dset), where, "H5Dget_create_plist"));
  info.layout = H5Pget_layout(dcpl.get());
  if (info.layout == H5D_VIRTUAL)
    bad(where, "virtual dataset: its data lives in other datasets or files, which a dump may not reference");
  if (info.layout != H5D_COMPACT && info.layout != H5D_CONTIGUOUS && info.layout != H5D_CHUNKED) {
    if (info.layout < 0) h5_fail(where, "H5Pget_layout");
    bad(where, "unknown storage layout {}", static_cast<int>(info.layout));
  }
  const int external = H5Pget_external_count(dcpl.get());
  if (external < 0) h5_fail(where, "H5Pget_external_count");
  if (external > 0) {
    char name[256] = {};
    off_t offset = 0;
    hsize_t size = 0;
    H5Pget_external(dcpl.get(), 0, sizeof name - 1, name, &offset, &size);
    bad(where,
        "external storage: its data lives in {} other file(s) (first '{}'); a dump keeps its data inside the "
        "HDF5 file",
        external, printable(name));
  }
  const int nfilters = H5Pget_nfilters(dcpl.get());
  if (nfilters < 0) h5_fail(where, "H5Pget_nfilters");
  for (int i = 0; i < nfilters; ++i) {
    unsigned flags = 0;
    std::size_t ncd = 8;
    unsigned cd[8] = {};
    char name[128] = {};
    const H5Z_filter_t id =
        H5Pget_filter2(dcpl.get(), static_cast<unsigned>(i), &flags, &ncd, cd, sizeof name - 1, name, nullptr);
    if (id < 0) h5_fail(where, "H5Pget_filter2");
    if (id != H5Z_FILTER_DEFLATE && id != H5Z_FILTER_SHUFFLE && id != H5Z_FILTER_FLETCHER32)
      bad(where, "filter {} ('{}') is not allowed; a dump may use only deflate (1), shuffle (2) and fletcher32 (3)", id,
          printable(name));
    if (std::find(info.filters.begin(), info.filters.end(), id) != info.filters.end())
      bad(where, "filter {} ('{}') appears twice in the filter pipeline", id, printable(name));
    if (id == H5Z_FILTER_DEFLATE) {
      if (ncd != 1 || cd[0] > 9) bad(where, "the deflate filter has bad parameters ({} values, level {})", ncd, cd[0]);
      info.deflate_at = i;
    } else if (id == H5Z_FILTER_SHUFFLE) {
      if (ncd != 1 || cd[0] != info.esize)
        bad(where, "the shuffle filter's element size ({} values, first {}) is not the element size {}", ncd,
            ncd ? cd[0] : 0u, info.esize);
    } else {
      info.fletcher_at = i;
    }
    info.filters.push_back(id);
  }
  if (nfilters > 0 && info.layout != H5D_CHUNKED) bad(where, "has filters but is not chunked");

  const std::uint64_t call_bytes = info.shape.numel * info.esize;
  if (info.layout == H5D_CHUNKED) {
    hsize_t chunk[H5S_MAX_RANK] = {};
    const int crank = H5Pget_chunk(dcpl.get(), H5S_MAX_RANK, chunk);
    if (crank < 0) h5_fail(where, "H5Pget_chunk");
    if (static_cast<std::size_t>(crank) != info.dims.size())
      bad(where, "chunk rank {} differs from the dataset's rank {}", crank, info.dims.size());
    info.chunk.assign(chunk, chunk + crank);
    std::uint64_t bytes = info.esize;
    std::uint64_t count = 1;
    for (std::size_t k = 0; k < info.chunk.size(); ++k) {
      const std::uint64_t c = info.chunk[k];
      if (c == 0 || c > kMaxCallElements || bytes > (std::uint64_t{1} << 40) / c)
        bad(where, "chunk dims {} are invalid or too large", dims_text(std::span<const std::uint64_t>(info.chunk)));
      bytes *= c;
      count *= (info.dims[k] + c - 1) / c;  // dims <= 2^30 in total: no overflow
    }
    info.chunk_bytes = bytes;
    if (bytes > std::max(call_bytes, kChunkSlackBytes))
      bad(where, "chunks of {} bytes (chunk dims {}) are larger than both the call ({} bytes) and {} MiB", bytes,
          dims_text(std::span<const std::uint64_t>(info.chunk)), call_bytes, kChunkSlackBytes >> 20);
    if (count > kMaxChunksPerCall)
      bad(where, "split into {} chunks; at most {} are read (use larger chunks)", count, kMaxChunksPerCall);
    unsigned opts = 0;
    h5_ok(H5Pget_chunk_opts(dcpl.get(), &opts), where, "H5Pget_chunk_opts");
    if ((opts & H5D_CHUNK_DONT_FILTER_PARTIAL_CHUNKS) && nfilters > 0)
      bad(where, "uses the chunk option 'do not filter partial edge chunks', which is not supported");
    if (check_chunks) {
      // Each chunk where the index says, and no two chunks sharing bytes (a corrupt index can
      // point several chunks at one place).
      struct Extent {
        haddr_t addr;
        hsize_t size;
        std::vector<hsize_t> offset;
      };
      std::vector<Extent> extents;
      extents.reserve(static_cast<std::size_t>(count));
      for_each_chunk(info, [&](std::span<const hsize_t> offset) {
        const ChunkEntry c = chunk_entry(dset, offset, where);
        check_chunk(info, c, offset, file_size, where);
        extents.push_back({c.addr, c.size, {offset.begin(), offset.end()}});
      });
      std::sort(extents.begin(), extents.end(), [](const Extent& x, const Extent& y) { return x.addr < y.addr; });
      for (std::size_t i = 1; i < extents.size(); ++i)
        if (extents[i].addr < extents[i - 1].addr + extents[i - 1].size)
          bad(where, "chunks at {} and {} overlap in the file (offsets {} and {}): a corrupt chunk index",
              dims_text(std::span<const hsize_t>(extents[i - 1].offset)),
              dims_text(std::span<const hsize_t>(extents[i].offset)), extents[i - 1].addr, extents[i].addr);
    }
  } else {
    const hsize_t stored = H5Dget_storage_size(dset);
    if (stored != call_bytes)
      bad(where, "stores {} bytes of data, expected {} ({} elements of {} bytes){}", stored, call_bytes,
          info.shape.numel, info.esize, stored == 0 ? "; it was never written" : "");
    if (info.layout == H5D_CONTIGUOUS) {
      const haddr_t offset = H5Dget_offset(dset);
      if (offset == HADDR_UNDEF) bad(where, "contiguous data has no address in the file (never written)");
      if (offset > file_size || call_bytes > file_size - offset)
        bad(where, "data ({} bytes at offset {}) lies past the end of the file ({} bytes)", call_bytes, offset,
            file_size);
    }
  }
  return info;
}

// ---------------------------------------------------------------------------------------------
// Enumeration

struct Link {
  std::string name;
  H5L_type_t type = H5L_TYPE_ERROR;
};

struct LinkList {
  std::vector<Link> links;
  bool failed = false;
};

herr_t collect_link(hid_t, const char* name, const H5L_info_t* info, void* data) noexcept {
  auto* list = static_cast<LinkList*>(data);
  try {
    list->links.push_back({name ? name : "", info->type});
    return 0;
  } catch (...) {
    list->failed = true;
    return -1;
  }
}

std::vector<Link> list_links(hid_t group, const std::string& where) {
  LinkList list;
  hsize_t idx = 0;
  const herr_t status = H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_link, &list);
  if (list.failed) throw std::bad_alloc();
  if (status < 0) h5_fail(where, "listing the group's links (H5Literate)");
  return std::move(list.links);
}

// A link that may be followed: a hard link with a plain name.
void check_link(const Link& link, const std::string& where) {
  if (link.name.empty() || link.name == "." || link.name == ".." || link.name.find('/') != std::string::npos)
    bad(where, "invalid link name");
  switch (link.type) {
    case H5L_TYPE_HARD: return;
    case H5L_TYPE_SOFT: bad(where, "is a soft link; a dump holds only real groups and datasets (no links)");
    case H5L_TYPE_EXTERNAL:
      bad(where, "is an external link (to an object in another file); a dump holds only real groups and datasets");
    default:
      bad(where, "is a user-defined link (type {}); a dump holds only real groups and datasets",
          static_cast<int>(link.type));
  }
}

// Opens the file and checks its whole structure into `impl`. Called with the HDF5 lock held (or in
// the check process, which must not touch the lock: see probe_hdf5).
void scan_hdf5(State& impl) {
  const std::string& file = impl.label;
  quiet_hdf5(file);
  {
    const H5Plist fapl(h5_id(H5Pcreate(H5P_FILE_ACCESS), file, "H5Pcreate"));
    h5_ok(H5Pset_fapl_sec2(fapl.get()), file, "H5Pset_fapl_sec2");
    // Lock when the file system can, read anyway where locks are disabled (NFS, Lustre).
    h5_ok(H5Pset_file_locking(fapl.get(), 1, 1), file, "H5Pset_file_locking");
    impl.h5file = H5Fopen(impl.path.c_str(), H5F_ACC_RDONLY, fapl.get());
    if (impl.h5file < 0) {  // before closing fapl: any HDF5 call clears the error stack
      const StackText s = hdf5_stack();
      fail(s.io ? ErrorKind::io : ErrorKind::format, "{}: cannot open as HDF5: {}", file, s.text);
    }
  }
  hsize_t h5size = 0;
  h5_ok(H5Fget_filesize(impl.h5file, &h5size), file, "H5Fget_filesize");
  if (h5size > impl.file_size)
    bad(file, "truncated file: HDF5 expects {} bytes, the file holds {}", h5size, impl.file_size);
  {  // raw data is read at HDF5's addresses: they must be file offsets (base address 0)
    const H5Plist fcpl(h5_id(H5Fget_create_plist(impl.h5file), file, "H5Fget_create_plist"));
    hsize_t userblock = 0;
    h5_ok(H5Pget_userblock(fcpl.get(), &userblock), file, "H5Pget_userblock");
    if (userblock != 0)
      bad(file, "HDF5 file with a {}-byte user block (base address); write the dump without a user block", userblock);
  }

  const H5Group root(h5_id(H5Gopen2(impl.h5file, "/", H5P_DEFAULT), file, "opening the root group"));
  std::unordered_map<haddr_t, std::string> seen;  // object address -> its first path: one name per object
  auto note = [&](haddr_t addr, const std::string& path, const std::string& where) {
    const auto [it, fresh] = seen.emplace(addr, path);
    if (!fresh) bad(where, "is a second name for {} (hard links to one object); each call is stored once", it->second);
  };

  for (const Link& link : list_links(root.get(), file + ": /")) {
    const std::string object = std::string("/").append(
        printable(link.name));  // append: GCC 12 warns falsely (-Wrestrict) on "literal" + std::string
    const std::string where = file + ": " + object;
    check_link(link, where);
    H5O_info_t oi{};
    h5_ok(H5Oget_info_by_name2(root.get(), link.name.c_str(), &oi, H5O_INFO_BASIC, H5P_DEFAULT), where,
          "H5Oget_info_by_name");
    if (oi.type == H5O_TYPE_DATASET)
      bad(where, "dataset at the root; each call belongs inside its layer's group (/<layer>/x_NNNN)");
    if (oi.type == H5O_TYPE_NAMED_DATATYPE) bad(where, "named datatype at the root; the root holds only layer groups");
    if (oi.type != H5O_TYPE_GROUP) bad(where, "object of unknown type {} at the root", static_cast<int>(oi.type));
    check_layer_name(link.name, where);
    note(oi.addr, object, where);

    const H5Group group(h5_id(H5Gopen2(root.get(), link.name.c_str(), H5P_DEFAULT), where, "H5Gopen2"));
    Layer layer;
    for (const Link& entry : list_links(group.get(), where)) {
      const std::string path = object + "/" + printable(entry.name);
      const std::string at = file + ": " + path;
      check_link(entry, at);
      H5O_info_t ei{};
      h5_ok(H5Oget_info_by_name2(group.get(), entry.name.c_str(), &ei, H5O_INFO_BASIC, H5P_DEFAULT), at,
            "H5Oget_info_by_name");
      if (ei.type == H5O_TYPE_GROUP)
        bad(at, "group inside a layer group; a layer group holds only datasets named x_NNNN");
      if (ei.type == H5O_TYPE_NAMED_DATATYPE)
        bad(at, "named datatype inside a layer group; a layer group holds only datasets named x_NNNN");
      if (ei.type != H5O_TYPE_DATASET) bad(at, "object of unknown type {}", static_cast<int>(ei.type));
      const std::int64_t index = checked_call_index(entry.name, at);
      note(ei.addr, path, at);
      const H5Dataset dset(h5_id(H5Dopen2(group.get(), entry.name.c_str(), H5P_DEFAULT), at, "H5Dopen2"));
      const DatasetInfo info = inspect(dset.get(), at, impl.file_size, true);
      if (info.layout == H5D_COMPACT) {  // small (inside the object header): read once, so the check process does
        std::vector<float> scratch(info.shape.numel);
        read_compact(dset.get(), info, at, scratch);
      }
      layer.calls.push_back({index, entry.name, info.shape.rows, info.shape.cols, std::string(dtype_name(info.dtype))});
      layer.refs.push_back(ei.addr);
    }
    sort_calls(layer, where);
    impl.layers.emplace(link.name, std::move(layer));
  }
  if (impl.layers.empty())
    bad(file, "holds no layer groups; a dump has one group per layer, named as the module, holding x_0000, ...");
}

}  // namespace duquant::formats::calib_internal

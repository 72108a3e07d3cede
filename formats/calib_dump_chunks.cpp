// Calibration dumps: element conversion and chunk decoding, HDF5's filters redone with bounds (calib_dump.cpp).
#include "calib_dump_internal.hpp"

namespace duquant::formats::calib_internal {

// ---------------------------------------------------------------------------------------------
// Element conversion and checks

std::uint16_t load_u16(const unsigned char* p, bool big_endian) {
  return big_endian ? static_cast<std::uint16_t>((p[0] << 8) | p[1]) : static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}

std::uint32_t load_u32(const unsigned char* p, bool big_endian) {
  if (big_endian) return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) | p[3];
  return (std::uint32_t{p[3]} << 24) | (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[1]} << 8) | p[0];
}

// The one conversion of a stored element (F32, F16 or BF16 in the file's byte order) to float32.
float element_to_f32(const unsigned char* p, DType dtype, bool big_endian) {
  switch (dtype) {
    case DType::F32: return elementwise::f32_from_bits(load_u32(p, big_endian));
    case DType::F16: return elementwise::f16_to_f32(load_u16(p, big_endian));
    case DType::BF16: return elementwise::bf16_to_f32(load_u16(p, big_endian));
    default: fail(ErrorKind::internal, "calibration dump: element type {} is not a call's", dtype_name(dtype));
  }
}

// Converts `n` stored elements at `src` to float32.
void convert_run(const unsigned char* src, std::size_t n, DType dtype, bool big_endian, float* dst) {
  if (dtype == DType::F32 && !big_endian && std::endian::native == std::endian::little) {
    std::memcpy(dst, src, n * 4);
    return;
  }
  const std::size_t esize = dtype_bits(dtype) / 8;
  for (std::size_t i = 0; i < n; ++i) dst[i] = element_to_f32(src + esize * i, dtype, big_endian);
}

// `out` holds its n elements as stored (4 or 2 bytes each, in the file's byte order) in its first
// n * esize bytes: converts them to float32 in place. 16-bit values are widened from the back
// (float i overwrites the bytes of 16-bit values 2i and 2i+1, both already converted).
void decode_in_place(std::vector<float>& out, DType dtype, bool big_endian) {
  auto* base = reinterpret_cast<unsigned char*>(out.data());
  if (dtype == DType::F32 && !big_endian && std::endian::native == std::endian::little) return;
  const std::size_t esize = dtype_bits(dtype) / 8;
  auto convert = [&](std::size_t i) {
    const float f = element_to_f32(base + esize * i, dtype, big_endian);
    std::memcpy(base + 4 * i, &f, sizeof f);
  };
  if (esize == 4) {
    for (std::size_t i = 0; i < out.size(); ++i) convert(i);
  } else {
    for (std::size_t i = out.size(); i-- > 0;) convert(i);
  }
}

// Reads `size` bytes at `offset` of the dump (bounds checked by the caller).
void pread_exact(int fd, unsigned char* dst, std::uint64_t size, std::uint64_t offset, const std::string& where,
                 std::string_view what) {
  while (size > 0) {
    const std::size_t step = static_cast<std::size_t>(std::min<std::uint64_t>(size, std::uint64_t{1} << 30));
    const ssize_t n = ::pread(fd, dst, step, static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      fail(ErrorKind::io, "{}: cannot read {} ({} bytes at offset {}): {}", where, what, size, offset,
           std::strerror(errno));
    if (n == 0) bad(where, "{}: the file ends before offset {} (was it truncated meanwhile?)", what, offset);
    dst += n;
    size -= static_cast<std::uint64_t>(n);
    offset += static_cast<std::uint64_t>(n);
  }
}

void check_finite(std::span<const float> values, std::uint64_t cols, const std::string& where) {
  for (std::size_t i = 0; i < values.size(); ++i) {
    const float v = values[i];
    if (!std::isfinite(v)) {
      const char* what = std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf");
      fail(ErrorKind::numeric, "{}: row {}, column {} is {}; activations must be finite", where, i / cols, i % cols,
           what);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Chunk decoding (HDF5's filters, redone with bounds)

std::uint32_t fletcher32(const unsigned char* data, std::size_t length) {
  std::size_t words = length / 2;
  std::uint32_t sum1 = 0, sum2 = 0;
  while (words) {
    std::size_t block = words > 360 ? 360 : words;  // the most sums without overflow
    words -= block;
    do {
      sum1 += (std::uint32_t{data[0]} << 8) | data[1];
      data += 2;
      sum2 += sum1;
    } while (--block);
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  if (length % 2) {
    sum1 += std::uint32_t{*data} << 8;
    sum2 += sum1;
    sum1 = (sum1 & 0xffff) + (sum1 >> 16);
    sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  }
  sum1 = (sum1 & 0xffff) + (sum1 >> 16);
  sum2 = (sum2 & 0xffff) + (sum2 >> 16);
  return (sum2 << 16) | sum1;
}

struct Inflater {
  z_stream z{};
  bool live = false;
  ~Inflater() {
    if (live) inflateEnd(&z);
  }
};

// Inflates `in` into `out` (resized to limit + 1): more than `limit` bytes is refused, so a
// decompression bomb costs at most the chunk's size. Returns the decoded size.
std::size_t inflate_bounded(std::span<const unsigned char> in, std::vector<unsigned char>& out, std::size_t limit,
                            const std::string& where, const std::string& chunk) {
  out.resize(limit + 1);
  Inflater inf;
  if (inflateInit(&inf.z) != Z_OK) fail(ErrorKind::internal, "{}: zlib cannot start (inflateInit)", where);
  inf.live = true;
  constexpr std::size_t kStep = std::size_t{1} << 30;  // zlib counts in 32-bit units
  std::size_t in_left = in.size();
  std::size_t out_left = out.size();
  inf.z.next_in = const_cast<Bytef*>(in.data());
  inf.z.next_out = out.data();
  while (true) {
    if (inf.z.avail_in == 0 && in_left > 0) {
      const std::size_t step = std::min(in_left, kStep);
      inf.z.avail_in = static_cast<uInt>(step);
      in_left -= step;
    }
    if (inf.z.avail_out == 0 && out_left > 0) {
      const std::size_t step = std::min(out_left, kStep);
      inf.z.avail_out = static_cast<uInt>(step);
      out_left -= step;
    }
    const int status = inflate(&inf.z, Z_NO_FLUSH);
    const std::size_t produced = out.size() - out_left - inf.z.avail_out;
    if (produced > limit)
      bad(where,
          "{}: the deflate stream inflates to more than {} bytes, the most the chunk can hold (a "
          "decompression bomb or corrupt data)",
          chunk, limit);
    if (status == Z_STREAM_END) return produced;
    if (status == Z_OK) continue;
    if (status == Z_BUF_ERROR && inf.z.avail_in == 0 && in_left == 0)
      bad(where, "{}: the deflate stream ends early, after {} bytes of output", chunk, produced);
    if (status == Z_MEM_ERROR) throw std::bad_alloc();
    bad(where, "{}: corrupt deflate stream ({})", chunk, inf.z.msg ? printable(inf.z.msg) : std::to_string(status));
  }
}

void unshuffle(std::span<const unsigned char> in, std::vector<unsigned char>& out, std::size_t esize) {
  const std::size_t n = in.size() / esize;
  out.resize(in.size());
  for (std::size_t j = 0; j < esize; ++j) {
    const unsigned char* src = in.data() + j * n;
    for (std::size_t i = 0; i < n; ++i) out[i * esize + j] = src[i];
  }
  std::memcpy(out.data() + n * esize, in.data() + n * esize, in.size() - n * esize);
}

// Runs the filter pipeline backwards on one stored chunk; returns the chunk's bytes.
std::span<const unsigned char> decode_chunk(const DatasetInfo& info, unsigned mask,
                                            std::span<const unsigned char> stored, std::vector<unsigned char>& a,
                                            std::vector<unsigned char>& b, const std::string& where,
                                            const std::string& chunk) {
  std::span<const unsigned char> cur = stored;
  auto other = [&]() -> std::vector<unsigned char>& { return (!a.empty() && cur.data() == a.data()) ? b : a; };
  for (int i = static_cast<int>(info.filters.size()) - 1; i >= 0; --i) {
    if (mask & (1u << i)) continue;
    switch (info.filters[static_cast<std::size_t>(i)]) {
      case H5Z_FILTER_FLETCHER32: {
        if (cur.size() < 4) bad(where, "{}: {} bytes is too short to hold its fletcher32 checksum", chunk, cur.size());
        const std::size_t n = cur.size() - 4;
        const std::uint32_t stored_sum = load_u32(cur.data() + n, false);
        const std::uint32_t sum = fletcher32(cur.data(), n);
        // HDF5 before 1.6.3 stored the sum with the bytes of each half swapped; it accepts both.
        const std::uint32_t swapped = ((sum & 0x00ff00ffu) << 8) | ((sum >> 8) & 0x00ff00ffu);
        if (stored_sum != sum && stored_sum != swapped)
          bad(where, "{}: fletcher32 checksum mismatch (stored 0x{:08x}, computed 0x{:08x}): corrupt data", chunk,
              stored_sum, sum);
        cur = cur.first(n);
        break;
      }
      case H5Z_FILTER_DEFLATE: {
        std::vector<unsigned char>& out = other();
        const std::size_t limit = info.chunk_bytes + (info.fletcher_at >= 0 ? 4 : 0);
        const std::size_t n = inflate_bounded(cur, out, limit, where, chunk);
        cur = std::span<const unsigned char>(out.data(), n);
        break;
      }
      case H5Z_FILTER_SHUFFLE: {
        if (info.esize > 1 && cur.size() / info.esize > 1) {
          std::vector<unsigned char>& out = other();
          unshuffle(cur, out, info.esize);
          cur = std::span<const unsigned char>(out.data(), cur.size());
        }
        break;
      }
      default:
        fail(ErrorKind::internal, "{}: filter {} passed validation", where, info.filters[static_cast<std::size_t>(i)]);
    }
  }
  if (cur.size() != info.chunk_bytes)
    bad(where, "{} decodes to {} bytes; a chunk holds {}", chunk, cur.size(), info.chunk_bytes);
  return cur;
}

// Copies the part of a decoded chunk (at element offset `offset`) that lies inside the dataset.
void scatter_chunk(const DatasetInfo& info, std::span<const hsize_t> offset, const unsigned char* chunk, float* out) {
  const std::size_t rank = info.dims.size();
  std::vector<std::uint64_t> extent(rank), cstride(rank), dstride(rank);
  for (std::size_t k = 0; k < rank; ++k) extent[k] = std::min<std::uint64_t>(info.chunk[k], info.dims[k] - offset[k]);
  cstride[rank - 1] = 1;
  dstride[rank - 1] = 1;
  for (std::size_t k = rank - 1; k-- > 0;) {
    cstride[k] = cstride[k + 1] * info.chunk[k + 1];
    dstride[k] = dstride[k + 1] * info.dims[k + 1];
  }
  std::vector<std::uint64_t> pos(rank, 0);  // position inside the chunk, last dim stays 0
  while (true) {
    std::uint64_t src = 0, dst = offset[rank - 1];
    for (std::size_t k = 0; k + 1 < rank; ++k) {
      src += pos[k] * cstride[k];
      dst += (offset[k] + pos[k]) * dstride[k];
    }
    convert_run(chunk + src * info.esize, extent[rank - 1], info.dtype, info.big_endian, out + dst);
    std::size_t k = rank - 1;
    while (true) {
      if (k == 0) return;
      --k;
      if (++pos[k] < extent[k]) break;
      pos[k] = 0;
    }
  }
}

// Releases the HDF5 lock (held exactly once by the caller) while chunks are decoded, which needs
// no HDF5, so that other threads' reads proceed; takes it back on every exit, exceptions included.
class Unlocked {
 public:
  Unlocked() { hdf5_mutex().unlock(); }
  Unlocked(const Unlocked&) = delete;
  Unlocked& operator=(const Unlocked&) = delete;
  ~Unlocked() { hdf5_mutex().lock(); }
};

// Called with the HDF5 lock held once.
// The chunk's stored bytes are read with pread at the address and size the index gave (checked
// against the file), never with H5Dread_chunk: on a corrupt index HDF5 1.10.8 looks the chunk up
// again and may write more bytes than the size it reported for it.
void read_chunked(hid_t dset, const DatasetInfo& info, int fd, std::uint64_t file_size, const std::string& where,
                  std::vector<float>& out) {
  std::vector<unsigned char> stored, a, b;
  for_each_chunk(info, [&](std::span<const hsize_t> offset) {
    const ChunkEntry c = chunk_entry(dset, offset, where);
    check_chunk(info, c, offset, file_size, where);
    const Unlocked unlocked;
    const std::string chunk = fmt::format("chunk at {}", dims_text(offset));
    stored.resize(c.size);
    pread_exact(fd, stored.data(), c.size, c.addr, where, chunk);
    const auto data = decode_chunk(info, c.mask, stored, a, b, where, chunk);
    scatter_chunk(info, offset, data.data(), out.data());
  });
}

// Compact data (inside the object header; its size was checked by inspect): read by HDF5, as
// stored, then converted. open() reads it once too, so the check process goes through this.
void read_compact(hid_t dset, const DatasetInfo& info, const std::string& where, std::vector<float>& out) {
  const H5Type file_type(h5_id(H5Dget_type(dset), where, "H5Dget_type"));
  const H5Type mem(h5_id(H5Tcopy(file_type.get()), where, "H5Tcopy"));
  h5_ok(H5Dread(dset, mem.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()), where, "reading data (H5Dread)");
  decode_in_place(out, info.dtype, info.big_endian);
}

// Contiguous data: its offset and size inside the file were checked by inspect; read directly.
void read_contiguous(hid_t dset, const DatasetInfo& info, int fd, const std::string& where, std::vector<float>& out) {
  const haddr_t offset = H5Dget_offset(dset);
  if (offset == HADDR_UNDEF) bad(where, "contiguous data has no address in the file (never written)");
  pread_exact(fd, reinterpret_cast<unsigned char*>(out.data()), info.shape.numel * info.esize, offset, where,
              "the data");
  decode_in_place(out, info.dtype, info.big_endian);
}

}  // namespace duquant::formats::calib_internal

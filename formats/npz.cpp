#include "formats/npz.hpp"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>

#include "duquant/error.hpp"
#include "formats/regular_file.hpp"

namespace duquant::formats {
namespace {

constexpr std::uint32_t kLocalSig = 0x04034b50, kCentralSig = 0x02014b50, kEndSig = 0x06054b50;
constexpr std::uint32_t kZip64EndSig = 0x06064b50, kZip64LocatorSig = 0x07064b50;
constexpr std::uint16_t kDosTime = 0, kDosDate = (0 << 9) | (1 << 5) | 1;  // 1980-01-01 00:00:00
// Fixed parts of what NpzWriter writes: a local header and a central entry per member (each
// followed by the member's name), one end record.
constexpr std::uint64_t kLocalHeaderBytes = 30, kCentralEntryBytes = 46, kEndRecordBytes = 22;

void put16(std::string& s, std::uint16_t v) {
  s += static_cast<char>(v & 0xff);
  s += static_cast<char>(v >> 8);
}
void put32(std::string& s, std::uint32_t v) {
  put16(s, static_cast<std::uint16_t>(v & 0xffff));
  put16(s, static_cast<std::uint16_t>(v >> 16));
}

std::uint32_t crc32_of(std::span<const std::byte> data) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* p = reinterpret_cast<const Bytef*>(data.data());
  std::size_t left = data.size();
  while (left > 0) {  // zlib takes uInt lengths
    const uInt n = static_cast<uInt>(std::min<std::size_t>(left, 1u << 30));
    crc = crc32(crc, p, n);
    p += n;
    left -= n;
  }
  return static_cast<std::uint32_t>(crc);
}

// Bounds-checked little-endian reads from the archive.
class Reader {
 public:
  Reader(std::span<const std::byte> b, const std::string& label) : b_(b), label_(label) {}
  void need(std::uint64_t at, std::uint64_t n, const char* what) const {
    if (at > b_.size() || n > b_.size() - at)
      fail(ErrorKind::format, "{}: {} at byte {} ({} bytes) runs past the end of the {}-byte archive", label_, what, at,
           n, b_.size());
  }
  template <typename T>
  T get(std::uint64_t at, const char* what) const {
    need(at, sizeof(T), what);
    T v;
    std::memcpy(&v, b_.data() + at, sizeof(T));
    return v;
  }
  std::span<const std::byte> bytes() const { return b_; }

 private:
  std::span<const std::byte> b_;
  const std::string& label_;
};

}  // namespace

std::uint64_t npz_size(const std::vector<std::pair<std::string, std::uint64_t>>& members) {
  std::uint64_t n = kEndRecordBytes;
  for (const auto& [key, npy] : members) n += kLocalHeaderBytes + kCentralEntryBytes + 2 * (key.size() + 4) + npy;
  return n;
}

NpzWriter::NpzWriter(std::filesystem::path path) : file_(std::move(path)) {}

void NpzWriter::add(const std::string& key, const std::string& npy) {
  const std::string name = key + ".npy";
  DQ_CHECK(npy.size() < 0xffffffffull &&
               file_.bytes_written() + npy.size() + kLocalHeaderBytes + name.size() < 0xffffffffull,
           usage, "{}: member '{}' would pass 4 GB (ZIP64 output is not supported)", file_.target().string(), name);
  DQ_CHECK(entries_.size() < kMaxNpzMembers, usage,
           "{}: member '{}' would be member {}, more than the {} a ZIP end record counts", file_.target().string(),
           name, entries_.size() + 1, kMaxNpzMembers);
  Entry e;
  e.name = name;
  e.crc = crc32_of(std::as_bytes(std::span(npy.data(), npy.size())));
  e.size = static_cast<std::uint32_t>(npy.size());
  e.offset = static_cast<std::uint32_t>(file_.bytes_written());
  std::string h;
  put32(h, kLocalSig);
  put16(h, 20);  // version needed: 2.0
  put16(h, 0);   // flags
  put16(h, 0);   // method: stored
  put16(h, kDosTime);
  put16(h, kDosDate);
  put32(h, e.crc);
  put32(h, e.size);
  put32(h, e.size);
  put16(h, static_cast<std::uint16_t>(name.size()));
  put16(h, 0);  // extra length
  h += name;
  file_.write(h);
  file_.write(npy);
  entries_.push_back(std::move(e));
}

void NpzWriter::commit() {
  const std::uint64_t cd_offset = file_.bytes_written();
  std::string cd;
  for (const Entry& e : entries_) {
    put32(cd, kCentralSig);
    put16(cd, (3 << 8) | 20);  // made by: Unix, 2.0
    put16(cd, 20);
    put16(cd, 0);
    put16(cd, 0);
    put16(cd, kDosTime);
    put16(cd, kDosDate);
    put32(cd, e.crc);
    put32(cd, e.size);
    put32(cd, e.size);
    put16(cd, static_cast<std::uint16_t>(e.name.size()));
    put16(cd, 0);               // extra
    put16(cd, 0);               // comment
    put16(cd, 0);               // disk
    put16(cd, 0);               // internal attributes
    put32(cd, 0100644u << 16);  // external attributes: regular file, rw-r--r--
    put32(cd, e.offset);
    cd += e.name;
  }
  DQ_CHECK(cd_offset + cd.size() < 0xffffffffull, usage, "{}: archive would pass 4 GB", file_.target().string());
  const auto cd_size = static_cast<std::uint32_t>(cd.size());
  put32(cd, kEndSig);
  put16(cd, 0);
  put16(cd, 0);
  put16(cd, static_cast<std::uint16_t>(entries_.size()));
  put16(cd, static_cast<std::uint16_t>(entries_.size()));
  put32(cd, cd_size);
  put32(cd, static_cast<std::uint32_t>(cd_offset));
  put16(cd, 0);
  file_.write(cd);
  file_.commit();
}

std::vector<ZipMember> parse_zip(std::span<const std::byte> bytes, const std::string& label) {
  const Reader r(bytes, label);
  DQ_CHECK(bytes.size() >= 22, format, "{}: {} bytes is too short for a ZIP archive", label, bytes.size());
  // The end record is the last 22 bytes plus a comment of up to 65535 bytes.
  std::uint64_t end = bytes.size() - 22;
  const std::uint64_t lowest = bytes.size() >= 22 + 65535 ? bytes.size() - 22 - 65535 : 0;
  while (true) {
    if (r.get<std::uint32_t>(end, "end record") == kEndSig &&
        end + 22 + r.get<std::uint16_t>(end + 20, "comment length") == bytes.size())
      break;
    DQ_CHECK(end > lowest, format, "{}: no ZIP end-of-central-directory record (truncated, or not an npz)", label);
    --end;
  }
  std::uint64_t count = r.get<std::uint16_t>(end + 10, "entry count");
  std::uint64_t cd_size = r.get<std::uint32_t>(end + 12, "directory size");
  std::uint64_t cd_offset = r.get<std::uint32_t>(end + 16, "directory offset");
  std::uint64_t cd_limit = end;
  // 0xffff entries may be a plain count (what a writer of exactly 65535 members stores, and numpy
  // reads) or the ZIP64 marker: the ZIP64 locator before the end record decides.
  const bool zip64_locator = end >= 20 && r.get<std::uint32_t>(end - 20, "ZIP64 locator") == kZip64LocatorSig;
  if ((count == 0xffff && zip64_locator) || cd_size == 0xffffffff || cd_offset == 0xffffffff) {
    DQ_CHECK(end >= 20 && r.get<std::uint32_t>(end - 20, "ZIP64 locator") == kZip64LocatorSig, format,
             "{}: ZIP64 sizes without a ZIP64 locator", label);
    const auto z = r.get<std::uint64_t>(end - 12, "ZIP64 end offset");
    DQ_CHECK(z < end - 20 && r.get<std::uint32_t>(z, "ZIP64 end record") == kZip64EndSig, format,
             "{}: ZIP64 end record missing at byte {}", label, z);
    count = r.get<std::uint64_t>(z + 32, "ZIP64 entry count");
    cd_size = r.get<std::uint64_t>(z + 40, "ZIP64 directory size");
    cd_offset = r.get<std::uint64_t>(z + 48, "ZIP64 directory offset");
    cd_limit = z;
  }
  DQ_CHECK(cd_offset <= cd_limit && cd_size <= cd_limit - cd_offset, format,
           "{}: central directory [{}, +{}) lies outside the archive's {} bytes before its end record", label,
           cd_offset, cd_size, cd_limit);
  DQ_CHECK(count <= cd_size / 46, format, "{}: {} entries cannot fit a {}-byte central directory", label, count,
           cd_size);

  std::vector<ZipMember> members;
  std::set<std::string> names;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> extents;  // [local header, data end) of every member
  std::uint64_t at = cd_offset;
  for (std::uint64_t i = 0; i < count; ++i) {
    DQ_CHECK(r.get<std::uint32_t>(at, "central header") == kCentralSig, format,
             "{}: central directory entry {} has a bad signature at byte {}", label, i, at);
    const auto flags = r.get<std::uint16_t>(at + 8, "flags");
    const auto method = r.get<std::uint16_t>(at + 10, "method");
    const auto crc = r.get<std::uint32_t>(at + 16, "crc");
    std::uint64_t csize = r.get<std::uint32_t>(at + 20, "size");
    std::uint64_t usize = r.get<std::uint32_t>(at + 24, "size");
    const auto name_len = r.get<std::uint16_t>(at + 28, "name length");
    const auto extra_len = r.get<std::uint16_t>(at + 30, "extra length");
    const auto comment_len = r.get<std::uint16_t>(at + 32, "comment length");
    std::uint64_t offset = r.get<std::uint32_t>(at + 42, "local offset");
    r.need(at + 46, std::uint64_t{name_len} + extra_len + comment_len, "central entry");
    std::string name(reinterpret_cast<const char*>(bytes.data() + at + 46), name_len);
    DQ_CHECK(at + 46 + name_len + extra_len + comment_len <= cd_offset + cd_size, format,
             "{}: central entry '{}' runs past the directory", label, name);
    // ZIP64 extra field: the 8-byte values replace those stored as 0xFFFFFFFF, in this order.
    for (std::uint64_t e = at + 46 + name_len; e + 4 <= at + 46 + name_len + extra_len;) {
      const auto id = r.get<std::uint16_t>(e, "extra id");
      const auto len = r.get<std::uint16_t>(e + 2, "extra length");
      DQ_CHECK(e + 4 + len <= at + 46 + name_len + extra_len, format, "{}: member '{}': extra field overruns", label,
               name);
      if (id == 0x0001) {
        std::uint64_t p = e + 4;
        auto take = [&](std::uint64_t& field) {
          if (field != 0xffffffff) return;
          DQ_CHECK(p + 8 <= e + 4 + len, format, "{}: member '{}': ZIP64 field too short", label, name);
          field = r.get<std::uint64_t>(p, "ZIP64 value");
          p += 8;
        };
        take(usize);
        take(csize);
        take(offset);
      }
      e += 4 + len;
    }
    at += 46 + std::uint64_t{name_len} + extra_len + comment_len;

    DQ_CHECK((flags & 0x1) == 0, format, "{}: member '{}' is encrypted", label, name);
    DQ_CHECK(method == 0, format, "{}: member '{}' is compressed (method {}); npz members must be stored", label, name,
             method);
    DQ_CHECK(csize == usize, format, "{}: member '{}': stored sizes differ ({} and {})", label, name, csize, usize);
    DQ_CHECK(names.insert(name).second, format, "{}: member '{}' appears twice", label, name);
    DQ_CHECK(r.get<std::uint32_t>(offset, "local header") == kLocalSig, format,
             "{}: member '{}': no local header at byte {}", label, name, offset);
    const auto local_name_len = r.get<std::uint16_t>(offset + 26, "local name length");
    const auto local_extra_len = r.get<std::uint16_t>(offset + 28, "local extra length");
    r.need(offset + 30, local_name_len, "local name");
    DQ_CHECK(std::string_view(reinterpret_cast<const char*>(bytes.data() + offset + 30), local_name_len) == name,
             format, "{}: member '{}': local header names another file", label, name);
    const std::uint64_t data = offset + 30 + local_name_len + local_extra_len;
    DQ_CHECK(data <= cd_offset && csize <= cd_offset - data, format,
             "{}: member '{}': {} bytes at byte {} run into the central directory at {}", label, name, csize, data,
             cd_offset);
    const auto span = bytes.subspan(data, csize);
    const std::uint32_t actual = crc32_of(span);
    DQ_CHECK(actual == crc, format, "{}: member '{}': CRC-32 {:08x} does not match the recorded {:08x}", label, name,
             actual, crc);
    extents.emplace_back(offset, data + csize);
    members.push_back({std::move(name), span});
  }
  // Members may be listed in any order (numpy reads them so), but no two may share a byte.
  std::vector<std::size_t> by_offset(members.size());
  for (std::size_t i = 0; i < by_offset.size(); ++i) by_offset[i] = i;
  std::sort(by_offset.begin(), by_offset.end(), [&](std::size_t a, std::size_t b) { return extents[a] < extents[b]; });
  for (std::size_t k = 1; k < by_offset.size(); ++k) {
    const std::size_t prev = by_offset[k - 1], cur = by_offset[k];
    DQ_CHECK(extents[cur].first >= extents[prev].second, format,
             "{}: member '{}' at byte {} overlaps member '{}' (bytes {} to {})", label, members[cur].name,
             extents[cur].first, members[prev].name, extents[prev].first, extents[prev].second);
  }
  return members;
}

NpzFile NpzFile::open(const std::filesystem::path& path) {
  // Never blocks: a FIFO, a device (/dev/zero) or a folder is refused, naming what it is.
  return parse(RegularFile::open(path).read_all_bytes(std::numeric_limits<std::uint64_t>::max()), path.string());
}

NpzFile NpzFile::parse(std::vector<std::byte> bytes, const std::string& label) {
  NpzFile f;
  f.label_ = label;
  f.bytes_ = std::move(bytes);
  for (const ZipMember& m : parse_zip(f.bytes_, label)) {
    DQ_CHECK(m.name.size() > 4 && m.name.compare(m.name.size() - 4, 4, ".npy") == 0, format,
             "{}: member '{}' is not an .npy array", label, m.name);
    const std::string key = m.name.substr(0, m.name.size() - 4);
    f.arrays_.emplace(key, parse_npy(m.data, label + ": " + m.name));
    f.keys_.push_back(key);
  }
  return f;
}

const NpyArray& NpzFile::at(const std::string& key) const {
  const auto it = arrays_.find(key);
  DQ_CHECK(it != arrays_.end(), format, "{}: no member '{}.npy'", label_, key);
  return it->second;
}

}  // namespace duquant::formats

#include "formats/calib_dump.hpp"

#include "duquant/error.hpp"

namespace duquant::formats {

struct CalibDump::Impl {
  std::filesystem::path path;
};

CalibDump::CalibDump(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CalibDump::CalibDump(CalibDump&&) noexcept = default;
CalibDump& CalibDump::operator=(CalibDump&&) noexcept = default;
CalibDump::~CalibDump() = default;

CalibDump CalibDump::open(const std::filesystem::path& path) {
  fail(ErrorKind::internal, "{}: calibration dumps are not implemented yet", path.string());
}
const std::filesystem::path& CalibDump::path() const { return impl_->path; }
std::string_view CalibDump::container() const { return "hdf5"; }
std::vector<std::string> CalibDump::layers() const { return {}; }
const std::vector<DumpCall>* CalibDump::calls(std::string_view) const { return nullptr; }
void CalibDump::read(std::string_view, const DumpCall&, std::vector<float>&) const {}

}  // namespace duquant::formats

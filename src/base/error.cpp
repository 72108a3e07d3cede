#include "duquant/error.hpp"

namespace duquant {

int exit_code(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::usage: return 2;
    case ErrorKind::format: return 3;
    case ErrorKind::io: return 4;
    case ErrorKind::no_match: return 5;
    case ErrorKind::numeric: return 6;
    case ErrorKind::device: return 7;
    case ErrorKind::internal: return 70;
  }
  return 70;
}

const char* kind_name(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::usage: return "usage";
    case ErrorKind::format: return "format";
    case ErrorKind::io: return "io";
    case ErrorKind::no_match: return "no-match";
    case ErrorKind::numeric: return "numeric";
    case ErrorKind::device: return "device";
    case ErrorKind::internal: return "internal";
  }
  return "internal";
}

}  // namespace duquant

// `duquant inspect --html FILE`: one self-contained page (inline CSS and SVG, no scripts, no
// fonts or anything else fetched from anywhere) with the per-layer table and a bar chart of
// per-layer SQNR, DuQuant against round-to-nearest, grouped by block type (docs/inspect.md).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "duquant/inspect.hpp"

namespace duquant {

// Escapes & < > " ' for HTML text and attribute values.
std::string html_escape(std::string_view text);

std::string pack_html(const PackReport& report);
std::string checkpoint_html(const CheckpointReport& report);

// Writes `html` to `file` atomically (a temporary file beside it, renamed when complete).
void write_html_file(const std::filesystem::path& file, const std::string& html);

}  // namespace duquant

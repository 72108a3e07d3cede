// What the pack stages (pack_stages.hpp) share beside their interface: the interruption test
// seams, the work folder's file reads and writes, and the quality figure of an error.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace duquant::pack_internal {

// Test seam for the interruption tests: DUQUANT_TEST_KILL_AT=layer:N sends SIGKILL to this process
// right after the N-th newly packed layer is recorded; DUQUANT_TEST_KILL_AT=assembly does so after
// the first quantized file is published and before the manifest; read:N right after the N-th layer to
// pack is read from the checkpoint (before its math). DUQUANT_TEST_STOP_AT=POINT sends
// SIGSTOP at the same points instead, so that a test can change the input while the pack waits.
// Never set in normal use; a malformed value is a usage error before any work.
void check_interruption_seams();
void maybe_kill(const std::string& point);

// A file of the work folder, whole. Never blocks: a FIFO or a device there is refused (io), naming
// what it is.
std::string read_file_text(const std::filesystem::path& p);
// Written under a temporary name and renamed (formats::AtomicFile).
void write_text_atomic(const std::filesystem::path& p, const std::string& text);

// 10 log10(signal / noise); nullopt when either is not positive.
std::optional<double> sqnr_db(double signal, double noise);

double seconds_since(std::chrono::steady_clock::time_point start);

}  // namespace duquant::pack_internal

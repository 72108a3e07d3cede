// What the process does before and after a command: standard streams, interruptions and the
// OpenMP environment (docs/reliability.md, "Streams, signals and the environment").
#pragma once

#include <cstddef>
#include <string>

namespace duquant::cli {

// Descriptors 0, 1 and 2 that are closed at start are opened on /dev/null, so that no file the
// program opens later becomes "standard output". Standard error becomes a best-effort stream: a
// message that cannot be written (a closed, full or broken stderr) is dropped, never an error.
// Call first in main.
void guard_standard_streams();

// SIGINT and SIGTERM (unless ignored at start): remove this process's temporary files, print one
// line (for pack: the layer reached and "run again with --resume") and exit with 128 + the signal.
void install_interrupt_handlers();
// What the interruption line says about a pack: its output folder, then the layers finished.
void note_pack_output(const std::string& output);
void note_pack_progress(std::size_t done, std::size_t total);

// OMP_NUM_THREADS, OMP_THREAD_LIMIT and OMP_STACKSIZE, validated as --threads is: a usage error
// (exit 2) naming the variable for a value the OpenMP runtime would crash on or silently ignore.
void check_openmp_environment();

// OpenMP's idle threads wait without spinning unless the user chose otherwise: a pack's reader and
// writer threads share the cores with them, and spinning took 8-13 % of a pack's CPU time
// (docs/benchmarks.md). libgomp reads OMP_WAIT_POLICY once, as it loads, so when neither it nor
// GOMP_SPINCOUNT is set the program sets it to `passive` and executes itself again (same
// arguments); if that fails it goes on as it is. Call first in main.
void prefer_passive_openmp_wait(char** argv);

// Keeps memory the program frees for its next allocation instead of returning it to the system:
// a pack allocates and frees buffers of the same sizes for every layer, and fresh pages from the
// system cost a page fault and a clearing each (about a fifth of a full pack's time otherwise).
// The peak stays that of the largest layer. Call before any large allocation.
void keep_freed_memory();

// Flushes standard output; a failed write of the requested output is exit 4 (the message goes to
// stderr). Returns `code` when the output was written.
int finish_stdout(int code);
// For an exception that escaped a command: true when standard output failed (the exception is
// the failed write's), after printing the error.
bool report_stdout_failure(int err);

}  // namespace duquant::cli

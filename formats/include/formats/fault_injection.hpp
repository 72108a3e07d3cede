// Test seam for the write-side fault tests: makes one chosen system call of the writers fail.
//
// DUQUANT_TEST_FAULT="OP:N[:ERRNO]" makes the N-th call (1-based, counted over the whole process)
// of OP fail with ERRNO instead of reaching the system. OP is `write` (one write(2) of a file's
// data), `fsync` (a file's or its folder's fsync(2)), `rename` (publishing a finished file under
// its final name) or `flock` (taking an output folder's write lock); ERRNO is ENOSPC (the
// default), EIO or ENOLCK (a file system that cannot lock). Every file duquant writes goes through
// formats::AtomicFile, so the seam reaches every writer. Never set in normal use; a malformed value
// is a usage error, so that a test cannot pass by injecting nothing.
#pragma once

namespace duquant::formats {

enum class FaultOp { write, fsync, rename, flock };

// Counts one call of `op`; returns the errno to fail it with, or 0 to let it run.
int injected_fault(FaultOp op);

}  // namespace duquant::formats

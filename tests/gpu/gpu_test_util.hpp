// GPU tests run wherever a CUDA device exists; without one each case reports SKIPPED, never passed.
#pragma once

#include <gtest/gtest.h>

#include <string>

#include "kernels/cuda_runtime_info.hpp"

// GTEST_SKIP must run in the test body itself: it returns from the enclosing function only.
#define DQ_REQUIRE_GPU()                                                                         \
  do {                                                                                           \
    std::string why_;                                                                            \
    if (::duquant::kernels::device_count(why_) == 0) GTEST_SKIP() << "no CUDA device: " << why_; \
  } while (0)

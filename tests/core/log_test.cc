// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/log.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace mewm {
namespace {

TEST(LogTest, ExceptionCauseDropsLibtorchBacktraces) {
  // The shape of a c10::Error's what(): the cause, then where it was raised, then frames.
  const std::runtime_error torch_error(
      "PytorchStreamReader failed reading zip archive: failed finding central directory\n"
      "Exception raised from valid at ../caffe2/serialize/inline_container.cc:184 (most recent "
      "call first):\nframe #0: c10::Error::Error(c10::SourceLocation, std::string) + 0x57\n"
      "frame #1: <unknown function> + 0x1234\n");
  EXPECT_EQ(ExceptionCause(torch_error),
            "PytorchStreamReader failed reading zip archive: failed finding central directory");
  // A trace without the "raised from" line.
  EXPECT_EQ(ExceptionCause(std::string("shape mismatch\nframe #0: f() + 0x1")), "shape mismatch");
  // Messages without a trace are kept, on one line.
  EXPECT_EQ(ExceptionCause(std::runtime_error("bad_alloc")), "bad_alloc");
  EXPECT_EQ(ExceptionCause(std::string("two\nlines")), "two lines");
  EXPECT_EQ(ExceptionCause(std::string("")), "");
}

}  // namespace
}  // namespace mewm

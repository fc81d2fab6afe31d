// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/device.h"

#include <gtest/gtest.h>

namespace mewm {
namespace {

TEST(DeviceTest, ParsesCpuAndCudaOrdinals) {
  EXPECT_EQ(ParseDevice("cpu")->ToString(), "cpu");
  EXPECT_EQ(ParseDevice("cuda")->ToString(), "cuda:0");
  EXPECT_EQ(ParseDevice("cuda:3")->index, 3);
}

TEST(DeviceTest, RejectsAnythingElseWithTheExpectedForms) {
  for (const char* bad : {"gpu", "", "cuda:", "cuda:x", "cuda:-1", "CPU", "cuda:99999"}) {
    auto r = ParseDevice(bad);
    ASSERT_FALSE(r) << bad;
    EXPECT_NE(r.error().message.find("expected cpu, cuda or cuda:N"), std::string::npos);
  }
}

}  // namespace
}  // namespace mewm

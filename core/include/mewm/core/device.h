// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Compute device names as users write them ("cpu", "cuda", "cuda:1"). Torch-free: checking that
// the device exists is the torch bridge's job (mewm/torch/bridge.h).
#pragma once

#include <string>

#include "mewm/core/expected.h"

namespace mewm {

struct DeviceSpec {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int index = 0;  ///< CUDA ordinal; 0 for CPU

  std::string ToString() const;  ///< "cpu" or "cuda:N"
  friend bool operator==(const DeviceSpec& a, const DeviceSpec& b) {
    return a.kind == b.kind && a.index == b.index;
  }
};

/// Parses "cpu", "cuda", "cuda:N". kInvalidArgument: "device 'gpu' not understood (expected cpu,
/// cuda or cuda:N)".
Expected<DeviceSpec> ParseDevice(const std::string& text);

}  // namespace mewm

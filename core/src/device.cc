// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/device.h"

#include <cctype>

namespace mewm {

std::string DeviceSpec::ToString() const {
  return kind == Kind::kCpu ? std::string("cpu") : "cuda:" + std::to_string(index);
}

Expected<DeviceSpec> ParseDevice(const std::string& text) {
  const auto bad = [&] {
    return MakeError(ErrorCode::kInvalidArgument,
                     "device '" + text + "' not understood (expected cpu, cuda or cuda:N)");
  };
  if (text == "cpu") return DeviceSpec{};
  if (text == "cuda") return DeviceSpec{DeviceSpec::Kind::kCuda, 0};
  const std::string prefix = "cuda:";
  if (text.rfind(prefix, 0) != 0 || text.size() == prefix.size() ||
      text.size() > prefix.size() + 3) {
    return bad();
  }
  int index = 0;
  for (std::size_t i = prefix.size(); i < text.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(text[i]))) return bad();
    index = index * 10 + (text[i] - '0');
  }
  return DeviceSpec{DeviceSpec::Kind::kCuda, index};
}

}  // namespace mewm

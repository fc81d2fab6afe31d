// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#pragma once

namespace mewm {

/// "0.1.0".
const char* Version();

}  // namespace mewm

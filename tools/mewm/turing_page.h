// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#pragma once

namespace mewm::cli {

/// The reader-study page (HTML with its script) of `mewm turing serve`.
const char* TuringPageHtml();

}  // namespace mewm::cli

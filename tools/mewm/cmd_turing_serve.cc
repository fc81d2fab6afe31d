// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "commands.h"

namespace mewm::cli {
Action AddTuringServe(CLI::App& turing) {
  CLI::App* sub = turing.add_subcommand("serve", "Serve the reader-study page");
  return [sub]() -> int { return sub->parsed() ? 1 : -1; };
}
}  // namespace mewm::cli

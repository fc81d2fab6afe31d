// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Internal invariants: conditions that hold unless mewm itself has a bug. A broken invariant is
// "impossible", so it throws (house style: values for the expected, exceptions for the
// impossible); `main` reports it as an internal error (exit 70). Checked when MEWM_ENABLE_ASSERTS
// is defined: in Debug builds and in the sanitizer builds (MEWM_SANITIZE), see MewmHelpers.cmake.
// Elsewhere the condition is not evaluated. Never use it for input a user can get wrong: that is
// an Error value with a message.
#pragma once

#include <stdexcept>
#include <string>

namespace mewm {

/// A broken internal invariant: a bug in mewm, never a user's error.
class InvariantError : public std::logic_error {
 public:
  using std::logic_error::logic_error;
};

/// Throws InvariantError("file:line: invariant `condition` broken: message").
[[noreturn]] void FailInvariant(const char* condition, const char* file, int line,
                                const std::string& message);

}  // namespace mewm

#if defined(MEWM_ENABLE_ASSERTS)
/// `MEWM_ASSERT(outcomes.size() == batch.size(), "one outcome per request");` The message is
/// built only when the condition fails.
#define MEWM_ASSERT(condition, message)                                               \
  do {                                                                                \
    if (!(condition)) ::mewm::FailInvariant(#condition, __FILE__, __LINE__, message); \
  } while (false)
#else
#define MEWM_ASSERT(condition, message) \
  do {                                  \
    (void)sizeof(condition);            \
  } while (false)
#endif

// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Error values for expected failures (bad files, bad configs, unknown names). Library code returns
// Expected<T>; only main() turns an Error into a message and an exit code.
#pragma once

#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

namespace mewm {

/// What kind of failure an Error is. Callers branch on the code, people read the message.
enum class ErrorCode {
  kInvalidArgument,  ///< a value that breaks a documented precondition
  kNotFound,         ///< a file, grid, key, run or item that does not exist
  kIo,               ///< the OS refused a read or write
  kCorruptData,      ///< a file or message that is truncated, malformed or inconsistent
  kParse,            ///< a text format (TOML, JSON, CSV, plan string) that does not parse
  kRuleViolation,    ///< a treatment plan that breaks an action-base rule
  kUnsupported,      ///< valid input this build cannot handle (e.g. CUDA without CUDA)
  kMismatch,         ///< two inputs that must agree do not (geometry, checkpoint config)
  kInternal,         ///< a dependency failed in a way we did not anticipate
  kCancelled,        ///< the caller asked to stop (Ctrl-C, a cancel request)
};

/// Short lower-case name of a code, e.g. "not_found".
const char* ErrorCodeName(ErrorCode code);

/// A failure: what kind, and a message that says what was wrong, where, and what was expected.
struct [[nodiscard]] Error {
  ErrorCode code = ErrorCode::kInternal;
  std::string message;

  /// "not_found: grid 'tumor' missing in a.vdb (has: ct)".
  std::string ToString() const;
  /// Returns a copy whose message is prefixed with `context + ": "`.
  Error WithContext(const std::string& context) const;
};

/// Tag type so that `return Unexpected(err)` reads like std::unexpected.
struct Unexpected {
  Error error;
  explicit Unexpected(Error e) : error(std::move(e)) {}
  Unexpected(ErrorCode code, std::string message) : error{code, std::move(message)} {}
};

/// Either a T or an Error. Deliberately small: has_value, value, error, operator*, operator->.
template <typename T>
class [[nodiscard]] Expected {
 public:
  template <typename U = T,
            typename = std::enable_if_t<std::is_constructible_v<T, U&&> &&
                                        !std::is_same_v<std::decay_t<U>, Unexpected> &&
                                        !std::is_same_v<std::decay_t<U>, Error>>>
  Expected(U&& value) : storage_(std::in_place_index<0>, std::forward<U>(value)) {}  // NOLINT
  Expected(Unexpected u) : storage_(std::in_place_index<1>, std::move(u.error)) {}   // NOLINT
  Expected(Error e) : storage_(std::in_place_index<1>, std::move(e)) {}              // NOLINT

  bool has_value() const { return storage_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { return std::get<0>(storage_); }
  const T& value() const& { return std::get<0>(storage_); }
  T&& value() && { return std::get<0>(std::move(storage_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { return std::get<1>(storage_); }
  Error&& error() && { return std::get<1>(std::move(storage_)); }

 private:
  std::variant<T, Error> storage_;
};

/// Expected<void>: success, or an Error.
template <>
class [[nodiscard]] Expected<void> {
 public:
  Expected() = default;
  Expected(Unexpected u) : error_(std::move(u.error)) {}  // NOLINT
  Expected(Error e) : error_(std::move(e)) {}             // NOLINT

  bool has_value() const { return !error_.has_value(); }
  explicit operator bool() const { return has_value(); }
  void value() const {}
  const Error& error() const& { return *error_; }
  Error&& error() && { return std::move(*error_); }

 private:
  std::optional<Error> error_;
};

using Status = Expected<void>;

/// Convenience: `return MakeError(ErrorCode::kNotFound, "...")`.
inline Unexpected MakeError(ErrorCode code, std::string message) {
  return Unexpected(code, std::move(message));
}

}  // namespace mewm

#define MEWM_CONCAT_INNER_(a, b) a##b
#define MEWM_CONCAT_(a, b) MEWM_CONCAT_INNER_(a, b)

/// Returns the error of an Expected expression from the enclosing function.
#define MEWM_RETURN_IF_ERROR(expr)                                         \
  do {                                                                     \
    auto&& mewm_status_ = (expr);                                          \
    if (!mewm_status_.has_value()) return std::move(mewm_status_).error(); \
  } while (false)

/// `MEWM_TRY(auto vol, ReadVdb(path));` declares `vol` from the value, or returns the error.
#define MEWM_TRY(decl, expr) MEWM_TRY_IMPL_(MEWM_CONCAT_(mewm_try_, __LINE__), decl, expr)
// NOLINTBEGIN(bugprone-macro-parentheses): `tmp` is a name and `decl` a declaration.
#define MEWM_TRY_IMPL_(tmp, decl, expr)                \
  auto tmp = (expr);                                   \
  if (!tmp.has_value()) return std::move(tmp).error(); \
  decl = std::move(tmp).value()
// NOLINTEND(bugprone-macro-parentheses)

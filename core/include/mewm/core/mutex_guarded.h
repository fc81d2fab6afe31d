// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// A value that can only be reached under its mutex: Lock() returns a handle that holds the lock
// for as long as it lives and gives access to the value, With(f) calls f with the value under the
// lock. What a lock guards is then written in the types, not in comments, and any compiler
// (GCC too, unlike Clang's thread-safety analysis) rejects an access without the lock.
#pragma once

#include <mutex>
#include <utility>

namespace mewm {

template <typename T>
class MutexGuarded {
 public:
  /// Access to the value while the lock is held. `lock()` is for condition variables:
  /// `cv.wait(locked.lock(), [&] { return locked->ready; })`.
  template <typename V>
  class Locked {
   public:
    V* operator->() const { return value_; }
    V& operator*() const { return *value_; }
    std::unique_lock<std::mutex>& lock() { return lock_; }

   private:
    friend class MutexGuarded;
    Locked(std::mutex& mutex, V* value) : lock_(mutex), value_(value) {}
    std::unique_lock<std::mutex> lock_;
    V* value_;
  };

  template <typename... Args>
  explicit MutexGuarded(Args&&... args) : value_(std::forward<Args>(args)...) {}
  MutexGuarded(const MutexGuarded&) = delete;
  MutexGuarded& operator=(const MutexGuarded&) = delete;

  Locked<T> Lock() { return Locked<T>(mutex_, &value_); }
  Locked<const T> Lock() const { return Locked<const T>(mutex_, &value_); }

  /// Calls `f(value)` under the lock and returns what it returns.
  template <typename F>
  decltype(auto) With(F&& f) {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::forward<F>(f)(value_);
  }
  template <typename F>
  decltype(auto) With(F&& f) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::forward<F>(f)(value_);
  }

 private:
  mutable std::mutex mutex_;
  T value_;
};

}  // namespace mewm

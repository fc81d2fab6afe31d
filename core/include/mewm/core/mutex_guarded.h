// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// A value that can only be reached under its mutex: Lock() returns a handle that holds the lock
// for as long as it lives and gives access to the value. What a lock guards is then written in
// the types, not in comments.
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

 private:
  mutable std::mutex mutex_;
  T value_;
};

}  // namespace mewm

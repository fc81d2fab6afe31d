// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// A bounded queue between producers and one consumer that takes everything queued at once (a
// group commit: the streaming server's log thread writes a batch of events with one write). Its
// state is reachable only under its own lock.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <utility>

namespace mewm {

template <typename Item>
class BatchQueue {
 public:
  /// At most `capacity` items wait at once (at least 1).
  explicit BatchQueue(std::size_t capacity) : capacity_(capacity < 1 ? 1 : capacity) {}
  BatchQueue(const BatchQueue&) = delete;
  BatchQueue& operator=(const BatchQueue&) = delete;

  /// Queues an item, waiting while the queue is full (a consumer slower than the producers holds
  /// them back: memory stays bounded).
  void Push(Item item) {
    bool wake;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      room_.wait(lock, [&] { return items_.size() < capacity_; });
      wake = items_.empty();  // a busy consumer finds the item without a wake-up
      items_.push_back(std::move(item));
      ++pushed_;
    }
    if (wake) ready_.notify_one();
  }

  /// Waits for items and takes all of them; empty once Stop was called and nothing is left.
  /// The consumer calls Done with their number after handling them.
  std::deque<Item> TakeAll() {
    std::deque<Item> batch;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_.wait(lock, [&] { return stop_ || !items_.empty(); });
      batch.swap(items_);
    }
    room_.notify_all();  // room in the queue again
    return batch;
  }

  /// Marks `count` taken items as handled (Flush waits for this).
  void Done(std::size_t count) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ += count;
    }
    room_.notify_all();
  }

  /// Waits until every item pushed before this call is handled.
  void Flush() {
    std::unique_lock<std::mutex> lock(mutex_);
    const std::uint64_t target = pushed_;
    room_.wait(lock, [&] { return done_ >= target; });
  }

  /// Wakes the consumer; TakeAll returns what is left, then empty batches.
  void Stop() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    ready_.notify_all();
  }

 private:
  const std::size_t capacity_;
  std::mutex mutex_;
  std::condition_variable ready_;  ///< items arrived, or Stop
  std::condition_variable room_;   ///< items taken (room) or handled (Flush)
  std::deque<Item> items_;
  std::uint64_t pushed_ = 0, done_ = 0;
  bool stop_ = false;
};

}  // namespace mewm

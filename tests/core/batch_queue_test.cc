// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/batch_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

namespace mewm {
namespace {

using namespace std::chrono_literals;

TEST(BatchQueueTest, TheConsumerTakesEverythingQueuedAtOnceInOrder) {
  BatchQueue<int> queue(8);
  for (int i = 0; i < 5; ++i) queue.Push(i);
  const std::deque<int> batch = queue.TakeAll();
  EXPECT_EQ(std::vector<int>(batch.begin(), batch.end()), (std::vector<int>{0, 1, 2, 3, 4}));
  queue.Done(batch.size());
  queue.Flush();  // everything handled: returns at once
}

TEST(BatchQueueTest, AFullQueueHoldsTheProducerBackUntilTheConsumerTakes) {
  BatchQueue<int> queue(2);
  queue.Push(1);
  queue.Push(2);
  std::atomic<bool> pushed{false};
  std::thread producer([&] {
    queue.Push(3);  // waits: two are queued already
    pushed = true;
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(pushed.load());
  EXPECT_EQ(queue.TakeAll().size(), 2u);
  producer.join();
  EXPECT_TRUE(pushed.load());
  EXPECT_EQ(queue.TakeAll().front(), 3);
}

TEST(BatchQueueTest, FlushWaitsUntilWhatWasQueuedIsHandled) {
  BatchQueue<int> queue(16);
  std::atomic<int> handled{0};
  std::thread consumer([&] {
    for (;;) {
      const std::deque<int> batch = queue.TakeAll();
      if (batch.empty()) return;
      std::this_thread::sleep_for(20ms);  // a slow disk
      handled += int(batch.size());
      queue.Done(batch.size());
    }
  });
  for (int i = 0; i < 10; ++i) queue.Push(i);
  queue.Flush();
  EXPECT_EQ(handled.load(), 10);
  queue.Stop();  // the consumer drains and sees an empty batch
  consumer.join();
}

TEST(BatchQueueTest, StopLetsTheConsumerDrainThenEnd) {
  BatchQueue<int> queue(4);
  queue.Push(7);
  queue.Stop();
  EXPECT_EQ(queue.TakeAll().size(), 1u);  // what was left
  EXPECT_TRUE(queue.TakeAll().empty());   // then nothing, without waiting
}

}  // namespace
}  // namespace mewm

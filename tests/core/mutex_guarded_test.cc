// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
#include "mewm/core/mutex_guarded.h"

#include <gtest/gtest.h>

#include <condition_variable>
#include <thread>
#include <vector>

namespace mewm {
namespace {

struct Counter {
  int value = 0;
  bool ready = false;
};

TEST(MutexGuardedTest, ConcurrentUpdatesThroughTheLockAreNotLost) {
  MutexGuarded<Counter> counter;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) ++counter.Lock()->value;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter.Lock()->value, 40000);
  const MutexGuarded<Counter>& view = counter;  // a const view reads under the lock too
  EXPECT_EQ((*view.Lock()).value, 40000);
}

TEST(MutexGuardedTest, AConditionVariableWaitsOnTheHandlesLock) {
  MutexGuarded<Counter> state;
  std::condition_variable cv;
  std::thread setter([&] {
    state.Lock()->ready = true;
    cv.notify_all();
  });
  {
    auto s = state.Lock();
    cv.wait(s.lock(), [&] { return s->ready; });
    EXPECT_TRUE(s->ready);
  }
  setter.join();
}

TEST(MutexGuardedTest, WithRunsUnderTheLockAndReturnsItsResult) {
  MutexGuarded<Counter> counter(Counter{5, false});
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) counter.With([](Counter& c) { ++c.value; });
    });
  }
  for (auto& t : threads) t.join();
  const MutexGuarded<Counter>& view = counter;
  EXPECT_EQ(view.With([](const Counter& c) { return c.value; }), 40005);
  // While one thread holds the handle, With waits for it.
  auto held = counter.Lock();
  std::thread other([&] { counter.With([](Counter& c) { c.value = -1; }); });
  held->value = 7;
  EXPECT_EQ(held->value, 7);
  held.lock().unlock();
  other.join();
  EXPECT_EQ(view.With([](const Counter& c) { return c.value; }), -1);
}

}  // namespace
}  // namespace mewm

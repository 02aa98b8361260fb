// csrc/torchspark/engine/staging_pool.h: buffers come back for reuse when
// their dtype matches and they are large enough; the free list is capped at
// inflight x the most buffers one release gave back, evicting the oldest;
// concurrent acquire/release neither loses nor hands out a buffer twice.
#include "torchspark/engine/staging_pool.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

namespace torchspark {
namespace {

const void* ptr(const at::Tensor& t) {
  return t.data_ptr();
}

TEST(StagingPool, AcquireMakesA1DCpuBufferOfTheDtypeAndSize) {
  StagingPool pool(2, false);
  at::Tensor buffer = pool.acquire(at::kInt, 10);
  EXPECT_EQ(buffer.dim(), 1);
  EXPECT_EQ(buffer.numel(), 10);
  EXPECT_EQ(buffer.scalar_type(), at::kInt);
  EXPECT_TRUE(buffer.device().is_cpu());
  EXPECT_FALSE(buffer.is_pinned());
  // Zero elements: still a buffer of one.
  EXPECT_EQ(pool.acquire(at::kFloat, 0).numel(), 1);
  EXPECT_EQ(pool.free_count(), 0u);
  EXPECT_EQ(pool.cap(), 0u);
}

TEST(StagingPool, AReleasedBufferIsReused) {
  StagingPool pool(2, false);
  std::vector<at::Tensor> buffers{pool.acquire(at::kFloat, 100)};
  const void* first = ptr(buffers[0]);
  pool.release(buffers);
  EXPECT_TRUE(buffers.empty());
  EXPECT_EQ(pool.free_count(), 1u);
  // The same size, and a smaller one: the same buffer back.
  at::Tensor again = pool.acquire(at::kFloat, 100);
  EXPECT_EQ(ptr(again), first);
  EXPECT_EQ(pool.free_count(), 0u);
  buffers = {again};
  pool.release(buffers);
  at::Tensor smaller = pool.acquire(at::kFloat, 40);
  EXPECT_EQ(ptr(smaller), first);
  EXPECT_EQ(smaller.numel(), 100);  // callers view what they need
}

TEST(StagingPool, AnotherDtypeOrALargerSizeGetsANewBuffer) {
  StagingPool pool(2, false);
  std::vector<at::Tensor> buffers{pool.acquire(at::kFloat, 100)};
  const at::Tensor keep = buffers[0];  // keeps its memory from being reused
  pool.release(buffers);

  at::Tensor other_dtype = pool.acquire(at::kLong, 10);
  EXPECT_NE(ptr(other_dtype), ptr(keep));
  EXPECT_EQ(other_dtype.scalar_type(), at::kLong);
  at::Tensor larger = pool.acquire(at::kFloat, 101);
  EXPECT_NE(ptr(larger), ptr(keep));
  EXPECT_EQ(larger.numel(), 101);
  // The float buffer is still free for a request it fits.
  EXPECT_EQ(pool.free_count(), 1u);
  EXPECT_EQ(ptr(pool.acquire(at::kFloat, 100)), ptr(keep));
}

TEST(StagingPool, TakesTheFirstFreeBufferThatFits) {
  StagingPool pool(4, false);
  std::vector<at::Tensor> buffers{pool.acquire(at::kFloat, 10), pool.acquire(at::kFloat, 50),
                                  pool.acquire(at::kFloat, 30)};
  const std::vector<at::Tensor> keep = buffers;
  pool.release(buffers);
  EXPECT_EQ(ptr(pool.acquire(at::kFloat, 20)), ptr(keep[1]));
  EXPECT_EQ(ptr(pool.acquire(at::kFloat, 20)), ptr(keep[2]));
  EXPECT_EQ(ptr(pool.acquire(at::kFloat, 5)), ptr(keep[0]));
  EXPECT_EQ(pool.free_count(), 0u);
}

TEST(StagingPool, FreeListIsCappedAtInflightTimesTheLargestReleaseOldestEvicted) {
  StagingPool pool(2, false);
  std::vector<std::vector<at::Tensor>> batches(3);
  std::vector<at::Tensor> keep;  // holds every buffer, so no address is reused
  for (auto& batch : batches) {
    for (int i = 0; i < 3; ++i) batch.push_back(pool.acquire(at::kFloat, 8));
    keep.insert(keep.end(), batch.begin(), batch.end());
  }
  pool.release(batches[0]);
  EXPECT_EQ(pool.cap(), 6u);
  EXPECT_EQ(pool.free_count(), 3u);
  pool.release(batches[1]);
  EXPECT_EQ(pool.free_count(), 6u);
  pool.release(batches[2]);
  EXPECT_EQ(pool.free_count(), 6u);  // 9 given back, 6 kept

  // The first batch's buffers (the oldest) were evicted: the six free ones
  // are the second's and third's.
  std::set<const void*> expected;
  for (size_t i = 3; i < 9; ++i) expected.insert(ptr(keep[i]));
  std::set<const void*> got;
  for (int i = 0; i < 6; ++i) got.insert(ptr(pool.acquire(at::kFloat, 8)));
  EXPECT_EQ(got, expected);
  EXPECT_EQ(pool.free_count(), 0u);

  // A smaller release later does not lower the cap.
  std::vector<at::Tensor> one{pool.acquire(at::kFloat, 8)};
  pool.release(one);
  EXPECT_EQ(pool.cap(), 6u);
}

TEST(StagingPool, ConcurrentAcquireAndReleaseNeitherLoseNorShareBuffers) {
  constexpr int kThreads = 4;
  constexpr int kRounds = 3000;
  constexpr int kPerBatch = 2;
  constexpr int64_t kNumel = 64;
  // inflight = threads: every buffer outstanding at once fits on the free
  // list, so nothing is evicted and no buffer is ever freed.
  StagingPool pool(kThreads, false);
  std::mutex mutex;
  std::set<const void*> in_use;
  std::set<const void*> seen;
  std::atomic<int> shared{0};

  auto work = [&](int id) {
    for (int round = 0; round < kRounds; ++round) {
      std::vector<at::Tensor> buffers;
      for (int b = 0; b < kPerBatch; ++b) {
        at::Tensor buffer = pool.acquire(at::kFloat, kNumel);
        {
          std::lock_guard<std::mutex> lock(mutex);
          if (!in_use.insert(ptr(buffer)).second) ++shared;
          seen.insert(ptr(buffer));
        }
        buffer.fill_(static_cast<float>(id * kRounds + round));
        buffers.push_back(buffer);
      }
      for (const at::Tensor& buffer : buffers) {
        // Nobody else wrote into a buffer this thread holds.
        if (buffer.min().item<float>() != static_cast<float>(id * kRounds + round)) ++shared;
      }
      {
        std::lock_guard<std::mutex> lock(mutex);
        for (const at::Tensor& buffer : buffers) in_use.erase(ptr(buffer));
      }
      pool.release(buffers);
    }
  };
  std::vector<std::thread> threads;
  for (int id = 0; id < kThreads; ++id) threads.emplace_back(work, id);
  for (std::thread& t : threads) t.join();

  EXPECT_EQ(shared.load(), 0) << "a buffer was handed to two holders at once";
  EXPECT_LE(seen.size(), static_cast<size_t>(kThreads * kPerBatch));
  EXPECT_EQ(pool.cap(), static_cast<size_t>(kThreads * kPerBatch));
  // Every buffer ever made is back on the free list: none lost.
  EXPECT_EQ(pool.free_count(), seen.size());
}

}  // namespace
}  // namespace torchspark

// csrc/torchspark/engine/histogram.h: bucket placement (inclusive upper
// bounds, as Prometheus' `le`), the +Inf bucket, the sum, concurrent
// observers, and the bounds it refuses.
#include "torchspark/engine/histogram.h"

#include <gtest/gtest.h>

#include <c10/util/Exception.h>

#include <thread>
#include <vector>

namespace torchspark {
namespace {

TEST(Histogram, CountsEachValueInTheFirstBucketAtOrAboveIt) {
  Histogram h({1.0, 2.0, 4.0});
  for (double v : {0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 4.5, 100.0}) h.observe(v);
  const HistogramSnapshot s = h.snapshot();
  EXPECT_EQ(s.bounds, (std::vector<double>{1.0, 2.0, 4.0}));
  // (-inf, 1], (1, 2], (2, 4], (4, +inf)
  EXPECT_EQ(s.counts, (std::vector<int64_t>{2, 2, 2, 2}));
  EXPECT_DOUBLE_EQ(s.sum, 0.5 + 1.0 + 1.5 + 2.0 + 3.0 + 4.0 + 4.5 + 100.0);
}

TEST(Histogram, StartsEmpty) {
  const HistogramSnapshot s = Histogram({0.1}).snapshot();
  EXPECT_EQ(s.counts, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(s.sum, 0.0);
}

TEST(Histogram, ConcurrentObserversLoseNothing) {
  Histogram h(latency_bucket_bounds());
  constexpr int kThreads = 4;
  constexpr int kEach = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&h, t] {
      for (int i = 0; i < kEach; ++i) h.observe(0.001 * (t + 1));
    });
  }
  for (std::thread& thread : threads) thread.join();
  const HistogramSnapshot s = h.snapshot();
  int64_t total = 0;
  for (int64_t c : s.counts) total += c;
  EXPECT_EQ(total, kThreads * kEach);
  EXPECT_NEAR(s.sum, kEach * 0.001 * (1 + 2 + 3 + 4), 1e-6);
}

TEST(Histogram, RefusesBoundsThatDoNotIncrease) {
  EXPECT_THROW(Histogram({}), c10::ValueError);
  EXPECT_THROW(Histogram({1.0, 1.0}), c10::ValueError);
  EXPECT_THROW(Histogram({2.0, 1.0}), c10::ValueError);
}

TEST(Histogram, DefaultBoundsSpanWhatTheEngineMeasures) {
  const std::vector<double>& latency = latency_bucket_bounds();
  EXPECT_LE(latency.front(), 0.0001);  // a light model's call
  EXPECT_GE(latency.back(), 10.0);     // an Arrow batch of a large one
  const std::vector<double>& rows = batch_rows_bucket_bounds();
  EXPECT_EQ(rows.front(), 1.0);
  EXPECT_EQ(rows.back(), 65536.0);
}

}  // namespace
}  // namespace torchspark

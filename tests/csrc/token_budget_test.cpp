// csrc/torchspark/engine/token_budget.h against simulated models: each
// budget has a throughput (real tokens per second) written here, and the
// tuner must end on the best budget its doubling/halving search can reach.
#include "torchspark/engine/token_budget.h"

#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>

namespace torchspark {
namespace {

// Runs batches until the tuner settles (or `limit` batches): each batch of
// the budget next() gives holds `tokens` real tokens and takes
// tokens / rate(budget) seconds. Returns the batches run.
int64_t run(TokenBudget& budget, const std::function<double(int64_t)>& rate, int64_t limit = 10000,
            int64_t tokens = 500) {
  int64_t batches = 0;
  while (budget.tuning() && batches < limit) {
    const int64_t b = budget.next();
    budget.record(b, tokens, tokens / rate(b));
    ++batches;
  }
  return batches;
}

// Throughput peaking at `peak`, falling off on both sides (log scale).
std::function<double(int64_t)> peaked(int64_t peak) {
  return [peak](int64_t b) {
    const double distance = std::abs(std::log2(double(b)) - std::log2(double(peak)));
    return 1000.0 / (1.0 + 0.5 * distance);
  };
}

TEST(TokenBudget, FixedAndOffNeverTune) {
  TokenBudget fixed(3000);
  EXPECT_FALSE(fixed.tuning());
  EXPECT_EQ(fixed.next(), 3000);
  fixed.record(3000, 10, 1.0);
  EXPECT_EQ(fixed.current(), 3000);
  TokenBudget off(0);
  EXPECT_FALSE(off.tuning());
  EXPECT_EQ(off.next(), 0);
  off.out_of_memory(0);
  EXPECT_EQ(off.current(), 0);
}

TEST(TokenBudget, ClimbsToAPeakAboveTheStart) {
  TokenBudget budget(kAutoTokens);
  EXPECT_TRUE(budget.tuning());
  EXPECT_EQ(budget.current(), 1024);
  run(budget, peaked(4096));
  EXPECT_FALSE(budget.tuning());
  EXPECT_EQ(budget.current(), 4096);
  EXPECT_EQ(budget.next(), 4096);
}

TEST(TokenBudget, DescendsToAPeakBelowTheStart) {
  TokenBudget budget(kAutoTokens);
  run(budget, peaked(256));
  EXPECT_EQ(budget.current(), 256);
}

TEST(TokenBudget, StaysAtTheStartWhenItIsBest) {
  TokenBudget budget(kAutoTokens);
  run(budget, peaked(1024));
  EXPECT_EQ(budget.current(), 1024);
  // Both neighbours were measured against it, and lost.
  const auto history = budget.history();
  ASSERT_EQ(history.size(), 4u);
  EXPECT_EQ(history[1].budget, 2048);
  EXPECT_EQ(history[3].budget, 512);
}

TEST(TokenBudget, AFlatCurveKeepsTheStart) {
  // Within the margin: no challenger wins.
  TokenBudget budget(kAutoTokens);
  run(budget, [](int64_t b) { return 1000.0 + b * 1e-3; });
  EXPECT_EQ(budget.current(), 1024);
}

TEST(TokenBudget, NeverLeavesFloorAndCeiling) {
  TokenBudgetSettings settings;
  settings.ceiling = 2048;
  TokenBudget high(kAutoTokens, settings);
  run(high, peaked(1 << 20));
  EXPECT_EQ(high.current(), 2048);
  TokenBudget low(kAutoTokens, settings);
  run(low, peaked(1));
  EXPECT_EQ(low.current(), settings.floor);
}

TEST(TokenBudget, AlternatesTheTwoBudgetsItCompares) {
  TokenBudget budget(kAutoTokens);
  EXPECT_EQ(budget.next(), 1024);
  EXPECT_EQ(budget.next(), 2048);
  EXPECT_EQ(budget.next(), 1024);
  EXPECT_EQ(budget.next(), 2048);
}

TEST(TokenBudget, WarmUpAndStaleBatchesAreNotMeasured) {
  TokenBudgetSettings settings;
  settings.min_batches = 1;
  settings.min_seconds = 0;
  TokenBudget budget(kAutoTokens, settings);
  // Two warm-up batches that would make 2048 look terrible are ignored.
  budget.record(2048, 1, 100.0);
  budget.record(2048, 1, 100.0);
  // A batch of a budget no longer compared is ignored too.
  budget.record(777, 1, 1e-9);
  EXPECT_TRUE(budget.tuning());
  budget.record(1024, 1000, 1.0);
  budget.record(2048, 1000, 0.5);  // twice as fast: wins
  EXPECT_EQ(budget.current(), 2048);
}

TEST(TokenBudget, OutOfMemoryLowersTheCeiling) {
  TokenBudget budget(kAutoTokens);
  budget.out_of_memory(2048);  // the challenger ran out of memory
  EXPECT_EQ(budget.current(), 1024);
  run(budget, peaked(1 << 20));  // bigger would be faster, but memory says no
  EXPECT_EQ(budget.current(), 1024);
  TokenBudget lower(kAutoTokens);
  lower.out_of_memory(1024);  // even the start is too big
  EXPECT_EQ(lower.current(), 512);
}

}  // namespace
}  // namespace torchspark

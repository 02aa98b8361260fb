// csrc/torchspark/engine/batching.h: windowed_sort and fit_rows against
// references written here (a sort of (key, index) pairs per window; the
// largest prefix whose padded cost fits, found by trying every prefix).
#include "torchspark/engine/batching.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <utility>
#include <vector>

namespace torchspark {
namespace {

// windowed_sort's reference: each window sorted by (key, index), which is
// what a stable sort by key gives.
std::vector<int64_t> reference_sort(const std::vector<int64_t>& keys, int64_t window) {
  const int64_t rows = static_cast<int64_t>(keys.size());
  const int64_t step = window > 0 && window < rows ? window : rows;
  std::vector<int64_t> order;
  for (int64_t w = 0; w < rows; w += step) {
    std::vector<std::pair<int64_t, int64_t>> pairs;
    for (int64_t i = w; i < std::min(rows, w + step); ++i) pairs.emplace_back(keys[i], i);
    std::sort(pairs.begin(), pairs.end());
    for (const auto& p : pairs) order.push_back(p.second);
  }
  return order;
}

TEST(WindowedSort, ZeroRowsGivesNoOrder) {
  EXPECT_TRUE(windowed_sort(nullptr, 0, 4).empty());
  EXPECT_TRUE(windowed_sort(nullptr, 0, 0).empty());
}

TEST(WindowedSort, OneRow) {
  const int64_t key = 9;
  EXPECT_EQ(windowed_sort(&key, 1, 0), std::vector<int64_t>{0});
  EXPECT_EQ(windowed_sort(&key, 1, 1), std::vector<int64_t>{0});
  EXPECT_EQ(windowed_sort(&key, 1, 5), std::vector<int64_t>{0});
}

TEST(WindowedSort, EqualKeysKeepTheirSubmissionOrder) {
  const std::vector<int64_t> keys = {3, 1, 3, 1, 3, 1};
  EXPECT_EQ(windowed_sort(keys.data(), 6, 0), (std::vector<int64_t>{1, 3, 5, 0, 2, 4}));
}

TEST(WindowedSort, RowsNeverLeaveTheirWindow) {
  const std::vector<int64_t> keys = {5, 4, 3, 2, 1, 0, 9};
  // Windows [0, 3), [3, 6), [6, 7): each sorted on its own.
  EXPECT_EQ(windowed_sort(keys.data(), 7, 3), (std::vector<int64_t>{2, 1, 0, 5, 4, 3, 6}));
}

TEST(WindowedSort, WindowOfZeroNegativeOrAtLeastRowsSortsEverything) {
  const std::vector<int64_t> keys = {4, 2, 7, 2, 0};
  const std::vector<int64_t> all = {4, 1, 3, 0, 2};
  for (const int64_t window : {int64_t{0}, int64_t{-3}, int64_t{5}, int64_t{6}, int64_t{1000}}) {
    EXPECT_EQ(windowed_sort(keys.data(), 5, window), all) << "window " << window;
  }
}

TEST(WindowedSort, WindowOfOneKeepsTheOrder) {
  const std::vector<int64_t> keys = {4, 2, 7, 2, 0};
  EXPECT_EQ(windowed_sort(keys.data(), 5, 1), (std::vector<int64_t>{0, 1, 2, 3, 4}));
}

TEST(WindowedSort, MatchesTheReferenceOnRandomKeys) {
  std::mt19937_64 rng(7);
  for (int round = 0; round < 200; ++round) {
    const int64_t rows = static_cast<int64_t>(rng() % 40);
    std::vector<int64_t> keys(static_cast<size_t>(rows));
    for (int64_t& k : keys) k = static_cast<int64_t>(rng() % 6);  // many ties
    const int64_t window = static_cast<int64_t>(rng() % 50) - 5;
    EXPECT_EQ(windowed_sort(keys.data(), rows, window), reference_sort(keys, window))
        << "rows " << rows << ", window " << window;
  }
}

TEST(BatchShape, TokenSlotsAreRowsTimesTheSumOfWidths) {
  BatchShape empty;
  EXPECT_EQ(empty.token_slots(), 0);
  BatchShape rows_only{7, {}, {}};
  EXPECT_EQ(rows_only.token_slots(), 0);
  BatchShape one{3, {5}, {}};
  EXPECT_EQ(one.token_slots(), 15);
  BatchShape two{4, {5, 2}, {}};
  EXPECT_EQ(two.token_slots(), 28);
}

// fit_rows' reference: every prefix of the candidate rows tried, the largest
// whose batch stays within batch_size rows and max_tokens slots (an empty
// batch takes its first row whatever it costs).
struct Fit {
  int64_t rows = 0;
  BatchShape batch;
};

// Slots of a shape counted here: per length group, its widest input.
int64_t reference_slots(const BatchShape& shape) {
  std::map<int64_t, int64_t> widest;
  for (size_t p = 0; p < shape.widths.size(); ++p) {
    const int64_t group = shape.groups.empty() ? static_cast<int64_t>(p) : shape.groups[p];
    widest[group] = std::max(widest[group], shape.widths[p]);
  }
  int64_t width = 0;
  for (const auto& entry : widest) width += entry.second;
  return shape.rows * width;
}

Fit reference_fit(const BatchShape& start, const RowLengths& lengths, int64_t begin,
                  int64_t available, int64_t batch_size, int64_t max_tokens) {
  const size_t inputs = lengths.lengths.size();
  Fit best{0, start};
  best.batch.widths.resize(inputs, 0);
  for (int64_t k = 1; k <= available; ++k) {
    BatchShape shape = start;
    shape.rows = start.rows + k;
    shape.widths.resize(inputs, 0);
    for (size_t p = 0; p < inputs; ++p) {
      for (int64_t i = 0; i < k; ++i) {
        shape.widths[p] = std::max({shape.widths[p], lengths.at(p, begin + i), int64_t{1}});
      }
    }
    if (shape.rows > batch_size) break;
    const bool alone = start.rows == 0 && k == 1;
    if (max_tokens > 0 && inputs > 0 && !alone && reference_slots(shape) > max_tokens) break;
    best = Fit{k, shape};
  }
  return best;
}

TEST(FitRows, RowsOnlyTakesUpToBatchSize) {
  BatchShape batch;
  RowLengths none;
  EXPECT_EQ(fit_rows(batch, none, 0, 10, 4, 0), 4);
  EXPECT_EQ(batch.rows, 4);
  EXPECT_TRUE(batch.widths.empty());
  // A full batch takes nothing more.
  EXPECT_EQ(fit_rows(batch, none, 4, 10, 4, 0), 0);
  EXPECT_EQ(batch.rows, 4);
  // A token budget means nothing without a padded input.
  BatchShape other;
  EXPECT_EQ(fit_rows(other, none, 0, 3, 100, 1), 3);
  EXPECT_EQ(other.rows, 3);
}

TEST(FitRows, OnePaddedInputStopsBeforeTheBudget) {
  const std::vector<int64_t> lengths = {2, 3, 1, 4, 4};
  RowLengths rows{{lengths.data()}};
  BatchShape batch;
  // 3 rows at width 3 = 9 slots fit in 10; a 4th row widens it to 4 x 4 = 16.
  EXPECT_EQ(fit_rows(batch, rows, 0, 5, 100, 10), 3);
  EXPECT_EQ(batch.rows, 3);
  EXPECT_EQ(batch.widths, std::vector<int64_t>{3});
  EXPECT_EQ(batch.token_slots(), 9);
}

TEST(FitRows, EmptyRowsStillTakeASlot) {
  const std::vector<int64_t> lengths = {0, 0, 0, 0};
  RowLengths rows{{lengths.data()}};
  BatchShape batch;
  EXPECT_EQ(fit_rows(batch, rows, 0, 4, 100, 3), 3);
  EXPECT_EQ(batch.widths, std::vector<int64_t>{1});
}

TEST(FitRows, TwoPaddedInputsCostRowsTimesTheSumOfWidths) {
  const std::vector<int64_t> a = {2, 2, 2, 2};
  const std::vector<int64_t> b = {3, 1, 5, 1};
  RowLengths rows{{a.data(), b.data()}};
  BatchShape batch;
  // 2 rows: 2 x (2 + 3) = 10; 3 rows: 3 x (2 + 5) = 21 > 20. Each input
  // alone would fit 3 rows (3 x 2 = 6, 3 x 5 = 15): the widths are summed.
  EXPECT_EQ(fit_rows(batch, rows, 0, 4, 100, 20), 2);
  EXPECT_EQ(batch.widths, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(batch.token_slots(), 10);
}

TEST(FitRows, InputsOfOneLengthGroupCountOnce) {
  // A text's ids and attention mask (group 0) and a second text (group 1).
  const std::vector<int64_t> ids = {3, 3, 4, 4};
  const std::vector<int64_t> other = {2, 2, 2, 2};
  RowLengths rows{{ids.data(), ids.data(), other.data()}};
  BatchShape batch;
  batch.groups = {0, 0, 1};
  // 3 rows: 3 x (4 + 2) = 18 <= 18; counted per input it would be 3 x 10.
  EXPECT_EQ(fit_rows(batch, rows, 0, 4, 100, 18), 3);
  EXPECT_EQ(batch.widths, (std::vector<int64_t>{4, 4, 2}));
  EXPECT_EQ(batch.token_slots(), 18);
  // Counted per input, 2 rows already make 2 x (3 + 3 + 2) = 16 and 3 rows 24.
  BatchShape ungrouped;
  EXPECT_EQ(fit_rows(ungrouped, rows, 0, 4, 100, 18), 2);
}

TEST(FitRows, ARowOverTheBudgetRunsAloneInAnEmptyBatch) {
  const std::vector<int64_t> lengths = {50, 1, 1};
  RowLengths rows{{lengths.data()}};
  BatchShape batch;
  EXPECT_EQ(fit_rows(batch, rows, 0, 3, 100, 10), 1);
  EXPECT_EQ(batch.rows, 1);
  EXPECT_EQ(batch.widths, std::vector<int64_t>{50});
  // Not in a batch that has rows already.
  BatchShape partial{1, {1}, {}};
  EXPECT_EQ(fit_rows(partial, rows, 0, 3, 100, 10), 0);
  EXPECT_EQ(partial.rows, 1);
  EXPECT_EQ(partial.widths, std::vector<int64_t>{1});
}

TEST(FitRows, ReadsLengthsInStagingOrder) {
  const std::vector<int64_t> lengths = {9, 1, 9, 1};
  const std::vector<int64_t> order = {1, 3, 0, 2};  // the short rows first
  RowLengths rows{{lengths.data()}, order.data()};
  BatchShape batch;
  // Positions 0, 1 are rows 1, 3 (length 1); position 2 is row 0 (length 9).
  EXPECT_EQ(fit_rows(batch, rows, 0, 4, 100, 8), 2);
  EXPECT_EQ(batch.widths, std::vector<int64_t>{1});
  // From position 2 on, in a fresh batch: rows 0 and 2, 2 x 9 = 18.
  BatchShape next;
  EXPECT_EQ(fit_rows(next, rows, 2, 2, 100, 18), 2);
  EXPECT_EQ(next.widths, std::vector<int64_t>{9});
  // Without the order, positions 0, 1 are rows 0, 1: 2 x 9 > 8.
  RowLengths unordered{{lengths.data()}};
  BatchShape plain;
  EXPECT_EQ(fit_rows(plain, unordered, 0, 4, 100, 8), 1);
}

TEST(FitRows, APartlyFilledBatchKeepsItsWidthsAndRows) {
  const std::vector<int64_t> lengths = {2, 2, 6};
  RowLengths rows{{lengths.data()}};
  BatchShape batch{3, {4}, {}};  // 12 slots already
  // Each row of length 2 keeps width 4: 4 x 4 = 16, 5 x 4 = 20; the row of
  // length 6 would make 6 x 6 = 36.
  EXPECT_EQ(fit_rows(batch, rows, 0, 3, 100, 30), 2);
  EXPECT_EQ(batch.rows, 5);
  EXPECT_EQ(batch.widths, std::vector<int64_t>{4});
}

TEST(FitRows, BatchSizeCapsRowsUnderATokenBudget) {
  const std::vector<int64_t> lengths(10, 1);
  RowLengths rows{{lengths.data()}};
  BatchShape batch{2, {1}, {}};
  EXPECT_EQ(fit_rows(batch, rows, 0, 10, 5, 1000), 3);
  EXPECT_EQ(batch.rows, 5);
  EXPECT_EQ(fit_rows(batch, rows, 3, 7, 5, 1000), 0);
}

TEST(FitRows, MatchesTheBruteForceReference) {
  std::mt19937_64 rng(11);
  for (int round = 0; round < 2000; ++round) {
    const int64_t n = 1 + static_cast<int64_t>(rng() % 24);
    const size_t inputs = rng() % 4;  // 0 to 3 padded inputs
    std::vector<std::vector<int64_t>> lengths(inputs, std::vector<int64_t>(n));
    for (auto& input : lengths) {
      for (int64_t& l : input) l = static_cast<int64_t>(rng() % 12);
    }
    std::vector<int64_t> order(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    const bool ordered = rng() % 2 == 0;
    if (ordered) std::shuffle(order.begin(), order.end(), rng);
    RowLengths rows;
    for (const auto& input : lengths) rows.lengths.push_back(input.data());
    rows.order = ordered ? order.data() : nullptr;

    const int64_t begin = static_cast<int64_t>(rng() % n);
    const int64_t available = static_cast<int64_t>(rng() % (n - begin + 1));
    const int64_t batch_size = 1 + static_cast<int64_t>(rng() % 16);
    const int64_t max_tokens = rng() % 4 == 0 ? 0 : static_cast<int64_t>(rng() % 80);
    BatchShape start;
    if (inputs > 0 && rng() % 2 == 0) {
      // Length groups: inputs numbered into at most `inputs` groups.
      for (size_t p = 0; p < inputs; ++p) start.groups.push_back(int64_t(rng() % inputs));
    }
    if (rng() % 2 == 0) {
      start.rows = static_cast<int64_t>(rng() % 4);
      if (start.rows > 0) {
        for (size_t p = 0; p < inputs; ++p) start.widths.push_back(1 + int64_t(rng() % 6));
      }
    }

    const Fit expected = reference_fit(start, rows, begin, available, batch_size, max_tokens);
    BatchShape batch = start;
    const int64_t fit = fit_rows(batch, rows, begin, available, batch_size, max_tokens);
    SCOPED_TRACE(::testing::Message()
                 << "round " << round << ": rows " << n << ", inputs " << inputs << ", begin "
                 << begin << ", available " << available << ", batch_size " << batch_size
                 << ", max_tokens " << max_tokens << ", start rows " << start.rows);
    ASSERT_EQ(fit, expected.rows);
    EXPECT_EQ(batch.rows, expected.batch.rows);
    if (inputs > 0) {
      EXPECT_EQ(batch.widths, expected.batch.widths);
    }
  }
}

}  // namespace
}  // namespace torchspark

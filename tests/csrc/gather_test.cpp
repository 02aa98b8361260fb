// csrc/torchspark/gather.h: scalar columns -> row-major [N, F], checked
// against a reference computed element by element here.
#include "torchspark/kernels/gather.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "arrow_builders.h"
#include "torchspark/errors.h"

namespace torchspark {
namespace {

using testing::batch;
using testing::import_node;
using testing::Node;
using testing::primitive;

TEST(Gather, MixedTypesCastIntoRowMajorFloat) {
  const std::vector<int32_t> a = {1, -2, 3, 4, 5};
  const std::vector<double> b = {0.5, 1.25, -3.0, 7.0, 1e3};
  const std::vector<int64_t> c = {10, 20, 30, 40, 50};
  std::vector<std::unique_ptr<Node>> columns;
  columns.push_back(primitive("i", a.data(), 5, "a"));
  columns.push_back(primitive("g", b.data(), 5, "b"));
  columns.push_back(primitive("l", c.data(), 5, "c"));
  auto node = batch(5, std::move(columns));
  ImportedTable table(import_node(*node), "batch");

  at::Tensor out = gather(table.select(std::nullopt, "gather"), 5, GatherOptions{}, std::nullopt);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{5, 3}));
  ASSERT_EQ(out.scalar_type(), at::kFloat);
  ASSERT_TRUE(out.is_contiguous());
  const float* got = out.data_ptr<float>();
  for (int64_t r = 0; r < 5; ++r) {
    EXPECT_EQ(got[r * 3 + 0], static_cast<float>(a[r])) << "row " << r;
    EXPECT_EQ(got[r * 3 + 1], static_cast<float>(b[r])) << "row " << r;
    EXPECT_EQ(got[r * 3 + 2], static_cast<float>(c[r])) << "row " << r;
  }
}

// 16 float32 columns x 1000 rows, a batch offset of 3: the 8x8 transpose path
// (runs of 8 plain 32-bit columns) and several tiles.
TEST(Gather, ManyColumnsWithABatchOffsetMatchTheReference) {
  constexpr int64_t kCols = 16, kRows = 1000, kOffset = 3;
  std::vector<std::vector<float>> data(kCols);
  std::vector<std::unique_ptr<Node>> columns;
  for (int64_t c = 0; c < kCols; ++c) {
    for (int64_t r = 0; r < kRows + kOffset; ++r) {
      data[c].push_back(static_cast<float>(c * 100000 + r));
    }
    columns.push_back(primitive("f", data[c].data(), kRows + kOffset, c10::str("f", c)));
  }
  auto node = batch(kRows, std::move(columns));
  node->array.offset = kOffset;  // the batch is a slice: its rows start at 3
  ImportedTable table(import_node(*node), "batch");

  at::Tensor out =
      gather(table.select(std::nullopt, "gather"), kRows, GatherOptions{}, std::nullopt);
  ASSERT_EQ(out.sizes(), (std::vector<int64_t>{kRows, kCols}));
  const float* got = out.data_ptr<float>();
  int64_t mismatches = 0;
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t c = 0; c < kCols; ++c) {
      mismatches += got[r * kCols + c] != data[c][r + kOffset];
    }
  }
  EXPECT_EQ(mismatches, 0);
  EXPECT_EQ(got[0], 3.0f);                                  // row 0 = source row 3 of column 0
  EXPECT_EQ(got[kRows * kCols - 1], 1500000.0f + 1002.0f);  // last row of column 15
}

TEST(Gather, RowRangeIntoAGivenBuffer) {
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<float> b = {-1, -2, -3, -4, -5, -6};
  std::vector<std::unique_ptr<Node>> columns;
  columns.push_back(primitive("f", a.data(), 6, "a"));
  columns.push_back(primitive("f", b.data(), 6, "b"));
  auto node = batch(6, std::move(columns));
  ImportedTable table(import_node(*node), "batch");

  at::Tensor out = at::full({3, 2}, 99.0f);
  gather_rows(table.select(std::nullopt, "gather"), 2, 3, GatherOptions{}, out);
  EXPECT_TRUE(at::equal(out, at::tensor({3.0f, -3.0f, 4.0f, -4.0f, 5.0f, -5.0f}).view({3, 2})));
}

TEST(Gather, NullsFillOrRaiseNamingTheColumn) {
  const std::vector<int32_t> a = {1, 2, 3, 4};
  const uint8_t validity = 0b1011;  // row 2 is null
  std::vector<std::unique_ptr<Node>> columns;
  columns.push_back(primitive("i", a.data(), 4, "a", &validity, 1));
  auto node = batch(4, std::move(columns));
  ImportedTable table(import_node(*node), "batch");
  const std::vector<Column> cols = table.select(std::nullopt, "gather");

  EXPECT_THROW_WITH(gather(cols, 4, GatherOptions{}, std::nullopt), NullValueError, "column 'a'",
                    "1 null value", "first in row 2");
  GatherOptions fill;
  fill.nulls = NullPolicy::kFill;
  fill.fill = -7;
  at::Tensor out = gather(cols, 4, fill, std::nullopt);
  EXPECT_TRUE(at::equal(out, at::tensor({1.0f, 2.0f, -7.0f, 4.0f}).view({4, 1})));
}

TEST(Gather, MalformedOrNonScalarColumnsAreRejected) {
  const std::vector<float> a = {1, 2, 3};
  const std::vector<int32_t> offsets = {0, 1, 2, 3};
  std::vector<std::unique_ptr<Node>> columns;
  columns.push_back(primitive("f", nullptr, 3, "a"));
  columns.push_back(testing::list(offsets.data(), 3, primitive("f", a.data(), 3), "b"));
  auto node = batch(3, std::move(columns));
  ImportedTable table(import_node(*node), "batch");

  EXPECT_THROW_WITH(gather({table.column("a")}, 3, GatherOptions{}, std::nullopt),
                    InvalidArrowError, "column 'a'", "data buffer is null but length is 3");
  EXPECT_THROW_WITH(gather({table.column("b")}, 3, GatherOptions{}, std::nullopt),
                    UnsupportedTypeError, "column 'b'", "gather takes scalar number or bool");
}

}  // namespace
}  // namespace torchspark

// csrc/torchspark/inputs/input_source.h: tensor_source and padded_source
// stage rows (a run, or gathered by a staging order) into staging buffers;
// a padded source is cut to a narrower batch and filled with its pad value up
// to a wider one; padded_source checks its shapes and lengths.
#include "torchspark/inputs/input_source.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "arrow_builders.h"

namespace torchspark {
namespace {

// Row r of [5, 3]: r * 10 + (0, 1, 2).
at::Tensor five_rows() {
  return at::arange(5, at::kLong).mul(10).unsqueeze(1) + at::arange(3, at::kLong).unsqueeze(0);
}

at::Tensor rows_of(const at::Tensor& t, const std::vector<int64_t>& rows) {
  std::vector<at::Tensor> picked;
  for (const int64_t r : rows) picked.push_back(t[r]);
  return at::stack(picked);
}

TEST(TensorSource, DescribesTheTensor) {
  const at::Tensor t = five_rows();
  InputSourcePtr source = tensor_source(t);
  EXPECT_EQ(source->rows(), 5);
  EXPECT_EQ(source->dtype(), at::kLong);
  EXPECT_EQ(source->row_shape(), std::vector<int64_t>{3});
  EXPECT_FALSE(source->padded());
  EXPECT_TRUE(source->tensor().is_same(t));  // the tensor itself, for a view
  EXPECT_NE(source->describe().find("[3]"), std::string::npos) << source->describe();
}

TEST(TensorSource, StagesARunOfRows) {
  const at::Tensor t = five_rows();
  InputSourcePtr source = tensor_source(t);
  at::Tensor dst = at::full({3, 3}, -7, at::kLong);
  source->stage_into(1, 3, at::Tensor(), dst);
  EXPECT_TRUE(at::equal(dst, rows_of(t, {1, 2, 3}))) << dst;
  at::Tensor last = at::empty({1, 3}, at::kLong);
  source->stage_into(4, 1, at::Tensor(), last);
  EXPECT_TRUE(at::equal(last, rows_of(t, {4})));
}

TEST(TensorSource, StagesRowsInAStagingOrder) {
  const at::Tensor t = five_rows();
  InputSourcePtr source = tensor_source(t);
  at::Tensor dst = at::empty({3, 3}, at::kLong);
  source->stage_into(0, 3, at::tensor(std::vector<int64_t>{4, 0, 2}), dst);
  EXPECT_TRUE(at::equal(dst, rows_of(t, {4, 0, 2}))) << dst;
}

TEST(TensorSource, NeedsABatchDimension) {
  EXPECT_THROW_WITH(tensor_source(at::scalar_tensor(1.0)), c10::ValueError, "batch dimension",
                    "0-d");
  EXPECT_THROW_WITH(tensor_source(at::Tensor()), c10::ValueError, "undefined");
}

// Three rows padded to 4 with -1, lengths 4, 2, 0; row r, token t = r * 10 + t + 1.
const std::vector<int64_t> kLengths = {4, 2, 0};
at::Tensor padded_values() {
  return at::tensor(std::vector<int64_t>{1, 2, 3, 4, 11, 12, -1, -1, -1, -1, -1, -1}).view({3, 4});
}

// What a row staged `width` wide must hold: its tokens up to width, -1 after.
at::Tensor expected_padded(const std::vector<int64_t>& rows, int64_t width) {
  at::Tensor out = at::full({static_cast<int64_t>(rows.size()), width}, -1, at::kLong);
  for (size_t i = 0; i < rows.size(); ++i) {
    const int64_t r = rows[i];
    for (int64_t t = 0; t < std::min(kLengths[r], width); ++t) {
      out[static_cast<int64_t>(i)][t] = r * 10 + t + 1;
    }
  }
  return out;
}

InputSourcePtr padded() {
  return padded_source(padded_values(), at::tensor(kLengths), -1, "column 'ids'");
}

TEST(PaddedSource, DescribesItself) {
  InputSourcePtr source = padded();
  EXPECT_TRUE(source->padded());
  EXPECT_EQ(source->rows(), 3);
  EXPECT_EQ(source->row_shape(), std::vector<int64_t>{4});
  EXPECT_EQ(source->pad_value().toLong(), -1);
  EXPECT_TRUE(at::equal(source->lengths(), at::tensor(kLengths)));
  EXPECT_NE(source->describe().find("padded"), std::string::npos) << source->describe();
}

TEST(PaddedSource, LengthsBecomeContiguousInt64) {
  const at::Tensor lengths = at::tensor(std::vector<int32_t>{4, 9, 2, 9, 0, 9}).slice(0, 0, 6, 2);
  InputSourcePtr source = padded_source(padded_values(), lengths, -1, "column 'ids'");
  EXPECT_EQ(source->lengths().scalar_type(), at::kLong);
  EXPECT_TRUE(source->lengths().is_contiguous());
  EXPECT_TRUE(at::equal(source->lengths(), at::tensor(kLengths)));
}

TEST(PaddedSource, StagesAtItsOwnWidth) {
  InputSourcePtr source = padded();
  at::Tensor dst = at::zeros({2, 4}, at::kLong);
  source->stage_into(1, 2, at::Tensor(), dst);
  EXPECT_TRUE(at::equal(dst, expected_padded({1, 2}, 4))) << dst;
}

TEST(PaddedSource, IsCutToANarrowerBatch) {
  InputSourcePtr source = padded();
  at::Tensor dst = at::zeros({3, 2}, at::kLong);
  source->stage_into(0, 3, at::Tensor(), dst);
  EXPECT_TRUE(at::equal(dst, expected_padded({0, 1, 2}, 2))) << dst;
}

TEST(PaddedSource, IsFilledWithItsPadValueUpToAWiderBatch) {
  InputSourcePtr source = padded();
  at::Tensor dst = at::full({3, 7}, 99, at::kLong);  // stale values from an earlier batch
  source->stage_into(0, 3, at::Tensor(), dst);
  EXPECT_TRUE(at::equal(dst, expected_padded({0, 1, 2}, 7))) << dst;
}

TEST(PaddedSource, StagesInAStagingOrderAtEveryWidth) {
  InputSourcePtr source = padded();
  const at::Tensor order = at::tensor(std::vector<int64_t>{2, 0, 1});
  for (const int64_t width : {1, 3, 4, 6}) {
    at::Tensor dst = at::full({3, width}, 99, at::kLong);
    source->stage_into(0, 3, order, dst);
    EXPECT_TRUE(at::equal(dst, expected_padded({2, 0, 1}, width))) << "width " << width << dst;
  }
}

TEST(PaddedSource, ChecksShapesAndLengths) {
  EXPECT_THROW_WITH(padded_source(at::zeros({3}), at::zeros({3}, at::kLong), 0, "column 'ids'"),
                    c10::ValueError, "column 'ids'", "[rows, length, ...]", "[3]");
  EXPECT_THROW_WITH(
      padded_source(padded_values(), at::tensor(std::vector<int64_t>{1, 2}), 0, "column 'ids'"),
      c10::ValueError, "column 'ids'", "1-d tensor of 3 values", "[2]");
  EXPECT_THROW_WITH(padded_source(padded_values(), at::zeros({3, 1}, at::kLong), 0, "column 'ids'"),
                    c10::ValueError, "column 'ids'", "1-d tensor of 3 values", "[3, 1]");
  EXPECT_THROW_WITH(
      padded_source(padded_values(), at::tensor(std::vector<int64_t>{4, 5, 0}), 0, "column 'ids'"),
      c10::ValueError, "column 'ids'", "lengths must be in [0, 4]", "got [0, 5]");
  EXPECT_THROW_WITH(
      padded_source(padded_values(), at::tensor(std::vector<int64_t>{1, -1, 0}), 0, "column 'ids'"),
      c10::ValueError, "column 'ids'", "lengths must be in [0, 4]", "got [-1, 1]");
  // No rows: nothing to check.
  EXPECT_EQ(padded_source(at::zeros({0, 4}), at::zeros({0}, at::kLong), 0, "c")->rows(), 0);
}

}  // namespace
}  // namespace torchspark

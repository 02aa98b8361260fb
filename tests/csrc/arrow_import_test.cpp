// csrc/torchspark/arrow_import.h: ImportedTable and to_tensor on hand-built
// Arrow structs. Malformed input is rejected before any value is read, with
// InvalidArrowError naming the column and saying expected vs actual; valid
// numeric columns become zero-copy views that keep the import alive.
#include "torchspark/arrow/arrow_import.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "arrow_builders.h"
#include "torchspark/errors.h"

namespace torchspark {
namespace {

using testing::batch;
using testing::fixed_size_list;
using testing::import_node;
using testing::list;
using testing::Node;
using testing::primitive;
using testing::ReleaseCount;

// A record batch holding `column` (named 'x') as its only column.
std::unique_ptr<Node> batch_of(int64_t rows, std::unique_ptr<Node> column) {
  std::vector<std::unique_ptr<Node>> columns;
  columns.push_back(std::move(column));
  return batch(rows, std::move(columns));
}

ColumnTensor column_x(Node& node) {
  ImportedTable table(import_node(node), "batch");
  return to_tensor(table.column("x"), ToTensorOptions{});
}

ColumnTensor single(Node& node) {
  ImportedTable table(import_node(node), "input");
  return to_tensor(table.as_column(), ToTensorOptions{});
}

const std::vector<int32_t> kInts = {7, -1, 42, 3};
const std::vector<float> kFloats = {0.5f, 1.5f, -2.0f, 8.0f, 9.25f, 10.0f};

TEST(ArrowImport, Int32ColumnIsAZeroCopyViewWithTheValues) {
  auto node = batch_of(4, primitive("i", kInts.data(), 4, "x"));
  ColumnTensor out = column_x(*node);
  EXPECT_EQ(out.values.scalar_type(), at::kInt);
  EXPECT_EQ(out.values.data_ptr(), static_cast<const void*>(kInts.data()));
  EXPECT_FALSE(out.mask.defined());
  ASSERT_EQ(out.values.numel(), 4);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_EQ(out.values[i].item<int32_t>(), kInts[i]) << "row " << i;
  }
}

TEST(ArrowImport, FloatColumnWithOffsetViewsFromTheOffset) {
  auto node = primitive("f", kFloats.data(), 3, "x");
  node->array.offset = 2;
  ColumnTensor out = single(*node);
  EXPECT_EQ(out.values.scalar_type(), at::kFloat);
  EXPECT_EQ(out.values.data_ptr(), static_cast<const void*>(kFloats.data() + 2));
  EXPECT_TRUE(at::equal(out.values, at::tensor({-2.0f, 8.0f, 9.25f})));
}

TEST(ArrowImport, UniformListOfFloatIsAZeroCopyMatrix) {
  const std::vector<int32_t> offsets = {0, 2, 4, 6};
  auto node = batch_of(3, list(offsets.data(), 3, primitive("f", kFloats.data(), 6), "x"));
  ColumnTensor out = column_x(*node);
  EXPECT_EQ(out.values.sizes(), (std::vector<int64_t>{3, 2}));
  EXPECT_EQ(out.values.data_ptr(), static_cast<const void*>(kFloats.data()));
  EXPECT_TRUE(at::equal(out.values, at::tensor(kFloats).view({3, 2})));
}

TEST(ArrowImport, NegativeLengthIsRejected) {
  // A column of a batch: longer than the batch is allowed, negative is not.
  auto node = batch_of(0, primitive("i", kInts.data(), -1, "x"));
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x'", "-1 rows", "the batch has 0");
  // A single array.
  auto single_node = primitive("i", kInts.data(), -3, "x");
  EXPECT_THROW_WITH(single(*single_node), InvalidArrowError, "input",
                    "length must be >= 0, got -3");
}

TEST(ArrowImport, NegativeOffsetIsRejected) {
  auto node = primitive("i", kInts.data(), 2, "x");
  node->array.offset = -1;
  EXPECT_THROW_WITH(single(*node), InvalidArrowError, "column 'x'", "offset must be >= 0, got -1");
}

TEST(ArrowImport, TooFewBuffersAreRejected) {
  auto node = batch_of(4, primitive("i", kInts.data(), 4, "x"));
  node->children[0]->buffers.pop_back();  // validity only, no data buffer
  node->children[0]->link();
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x'", "expected 2 buffers",
                    "got 1");
}

TEST(ArrowImport, NullDataBufferWithRowsIsRejected) {
  auto node = batch_of(4, primitive("f", nullptr, 4, "x"));
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x'",
                    "data buffer is null but length is 4");
  // No rows: no buffer needed.
  auto empty = batch_of(0, primitive("f", nullptr, 0, "x"));
  EXPECT_EQ(column_x(*empty).values.numel(), 0);
}

TEST(ArrowImport, NullCountWithoutValidityBitmapIsRejected) {
  auto node = batch_of(4, primitive("i", kInts.data(), 4, "x", nullptr, 2));
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x'", "null_count is 2",
                    "no validity bitmap");
}

TEST(ArrowImport, ListOffsetsPastTheChildAreRejected) {
  const std::vector<int32_t> offsets = {0, 2, 9};
  auto node = batch_of(2, list(offsets.data(), 2, primitive("f", kFloats.data(), 4), "x"));
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x' (list values)",
                    "offsets end at 9", "has only 4 elements");
}

TEST(ArrowImport, DecreasingListOffsetsAreRejected) {
  const std::vector<int32_t> offsets = {0, 3, 1};
  auto node = batch_of(2, list(offsets.data(), 2, primitive("f", kFloats.data(), 4), "x"));
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x' (list values)",
                    "offsets must not decrease", "offsets[1] = 3 > offsets[2] = 1");
}

TEST(ArrowImport, NegativeFirstListOffsetIsRejected) {
  const std::vector<int32_t> offsets = {-2, 1, 2};
  auto node = batch_of(2, list(offsets.data(), 2, primitive("f", kFloats.data(), 4), "x"));
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x' (list values)",
                    "offsets must be >= 0", "offsets[0] = -2");
}

TEST(ArrowImport, FixedSizeListChildTooShortIsRejected) {
  // 3 rows of 2 need 6 child values; the child has 5.
  auto node = batch_of(3, fixed_size_list(2, 3, primitive("f", kFloats.data(), 5), "x"));
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x' (list values)",
                    "needs 6 child elements, got 5");
}

TEST(ArrowImport, BatchColumnShorterThanTheBatchIsRejected) {
  std::vector<std::unique_ptr<Node>> columns;
  columns.push_back(primitive("i", kInts.data(), 4, "a"));
  columns.push_back(primitive("f", kFloats.data(), 2, "x"));
  auto node = batch(4, std::move(columns));
  EXPECT_THROW_WITH(ImportedTable(import_node(*node), "batch"), InvalidArrowError, "column 'x'",
                    "has 2 rows but the batch has 4");
}

// Found by tests/fuzz/arrow_import_fuzzer: the column's first row,
// child.offset + batch.offset, overflowed int64 (UBSan) before the child was
// validated.
TEST(ArrowImport, BatchColumnOffsetOverflowingWithTheBatchOffsetIsRejected) {
  auto node = batch_of(4, primitive("i", kInts.data(), 4, "x"));
  node->array.offset = 2;
  node->array.length = 2;
  node->children[0]->array.offset = std::numeric_limits<int64_t>::max() - 1;
  EXPECT_THROW_WITH(ImportedTable(import_node(*node), "batch"), InvalidArrowError, "column 'x'",
                    "+ the batch's offset + length 4 overflows int64");
}

TEST(ArrowImport, ChildArrayReleasedIsRejected) {
  auto node = batch_of(4, primitive("i", kInts.data(), 4, "x"));
  node->children[0]->array.release = nullptr;
  EXPECT_THROW_WITH(column_x(*node), InvalidArrowError, "column 'x'", "already released");
}

TEST(ArrowImport, MissingColumnListsTheColumns) {
  auto node = batch_of(4, primitive("i", kInts.data(), 4, "x"));
  ImportedTable table(import_node(*node), "batch");
  EXPECT_THROW_WITH(table.column("y"), c10::ValueError, "column 'y' not found", "['x']");
}

TEST(ArrowImport, UnsupportedTypeNamesTheColumn) {
  const std::vector<int32_t> offsets = {0, 1, 2};
  const char bytes[] = "ab";
  auto column = std::make_unique<Node>("u", "x");  // utf8: not a tensor
  column->buffers = {nullptr, offsets.data(), bytes};
  column->array.length = 2;
  column->link();
  auto node = batch_of(2, std::move(column));
  EXPECT_THROW_WITH(column_x(*node), UnsupportedTypeError, "column 'x'");
}

// ---- ownership of the views ----

TEST(ArrowImport, ZeroCopyViewReleasesTheImportOnceWhenTheLastViewDies) {
  ReleaseCount count;
  auto node = batch_of(4, primitive("i", kInts.data(), 4, "x"));
  testing::count_releases(*node, count);
  at::Tensor view;
  {
    ImportedTable table(import_node(*node), "batch");
    EXPECT_EQ(node->schema.release, nullptr);  // moved into the owner
    EXPECT_EQ(node->array.release, nullptr);
    view = to_tensor(table.column("x"), ToTensorOptions{}).values;
  }
  // The table is gone; the view still holds the import.
  EXPECT_EQ(count.array, 0);
  EXPECT_EQ(count.schema, 0);
  at::Tensor slice = view.narrow(0, 1, 2);  // a view of the view
  view.reset();
  EXPECT_EQ(count.array, 0);
  EXPECT_EQ(slice[1].item<int32_t>(), 42);
  slice.reset();
  EXPECT_EQ(count.array, 1);
  EXPECT_EQ(count.schema, 1);
}

TEST(ArrowImport, CopyHoldsNoReferenceToTheImport) {
  ReleaseCount count;
  auto node = batch_of(4, primitive("i", kInts.data(), 4, "x"));
  testing::count_releases(*node, count);
  at::Tensor copy;
  {
    ImportedTable table(import_node(*node), "batch");
    ToTensorOptions options;
    options.dtype = at::kDouble;  // a cast: one copy
    copy = to_tensor(table.column("x"), options).values;
  }
  EXPECT_EQ(count.array, 1);
  EXPECT_EQ(count.schema, 1);
  EXPECT_NE(copy.data_ptr(), static_cast<const void*>(kInts.data()));
  EXPECT_TRUE(at::equal(copy, at::tensor({7.0, -1.0, 42.0, 3.0}, at::kDouble)));
}

TEST(ArrowImport, MalformedColumnStillReleasesOnce) {
  ReleaseCount count;
  auto node = batch_of(4, primitive("i", nullptr, 4, "x"));
  testing::count_releases(*node, count);
  EXPECT_THROW(column_x(*node), InvalidArrowError);
  EXPECT_EQ(count.array, 1);
  EXPECT_EQ(count.schema, 1);
}

}  // namespace
}  // namespace torchspark

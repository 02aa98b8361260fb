// csrc/torchspark/inputs/input_spec.h: the registry of input kinds and the
// helpers factories read their specs with. Errors list what is allowed: the
// registered kinds, the kind's known options; a wrong option type names the
// option and both types. The made inputs hold the columns' values.
#include "torchspark/inputs/input_spec.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "arrow_builders.h"

namespace torchspark {
namespace {

using testing::batch;
using testing::import_node;
using testing::list;
using testing::Node;
using testing::primitive;

const std::vector<int32_t> kX = {7, -1, 42};
const std::vector<float> kY = {0.5f, 1.5f, -2.0f};
const std::vector<int32_t> kOffsets = {0, 2, 2, 5};
const std::vector<int64_t> kIds = {1, 2, 3, 4, 5};

// A batch of 3 rows: x int32, y float32, ids list<int64> (lengths 2, 0, 3).
std::unique_ptr<Node> three_columns() {
  std::vector<std::unique_ptr<Node>> columns;
  columns.push_back(primitive("i", kX.data(), 3, "x"));
  columns.push_back(primitive("f", kY.data(), 3, "y"));
  columns.push_back(list(kOffsets.data(), 3, primitive("l", kIds.data(), 5), "ids"));
  return batch(3, std::move(columns));
}

InputSpec spec_of(std::string kind, std::vector<std::string> columns,
                  std::map<std::string, OptionValue> options = {}) {
  return InputSpec{std::move(kind), std::move(columns), std::move(options)};
}

TEST(InputKinds, AreTheRegisteredKindsSorted) {
  EXPECT_EQ(input_kinds(), (std::vector<std::string>{"gather", "image", "mask", "pad", "tensor"}));
}

TEST(MakeInput, UnknownKindListsTheRegisteredOnes) {
  auto node = three_columns();
  ImportedTable table(import_node(*node), "batch");
  EXPECT_THROW_WITH(make_input(table, spec_of("words", {"x"})), c10::ValueError,
                    "gather, image, mask, pad, tensor", "'words'");
}

TEST(MakeInput, UnknownOptionListsTheKindsKnownOptions) {
  auto node = three_columns();
  ImportedTable table(import_node(*node), "batch");
  EXPECT_THROW_WITH(make_input(table, spec_of("tensor", {"x"}, {{"max_len", int64_t{4}}})),
                    c10::ValueError, "input kind 'tensor'", "'max_len'", "dtype, nulls, fill");
  EXPECT_THROW_WITH(make_input(table, spec_of("pad", {"ids"}, {{"fill", int64_t{0}}})),
                    c10::ValueError, "input kind 'pad'", "'fill'",
                    "dtype, nulls, max_len, pad_value");
  EXPECT_THROW_WITH(make_input(table, spec_of("gather", {"x", "y"}, {{"pad_value", 1.0}})),
                    c10::ValueError, "input kind 'gather'", "columns x, y", "'pad_value'",
                    "dtype, nulls, fill");
}

TEST(MakeInput, WrongOptionTypeIsATypeErrorNamingTheOptionAndBothTypes) {
  auto node = three_columns();
  ImportedTable table(import_node(*node), "batch");
  EXPECT_THROW_WITH(make_input(table, spec_of("tensor", {"x"}, {{"nulls", int64_t{5}}})),
                    c10::TypeError, "input kind 'tensor'", "option 'nulls'", "a str", "got int");
  EXPECT_THROW_WITH(make_input(table, spec_of("tensor", {"x"}, {{"dtype", std::string("f4")}})),
                    c10::TypeError, "option 'dtype'", "a torch.dtype", "got str");
  EXPECT_THROW_WITH(make_input(table, spec_of("pad", {"ids"}, {{"max_len", 2.5}})), c10::TypeError,
                    "input kind 'pad'", "option 'max_len'", "an int", "got float");
  EXPECT_THROW_WITH(
      make_input(table, spec_of("pad", {"ids"}, {{"pad_value", std::vector<double>{1.0}}})),
      c10::TypeError, "option 'pad_value'", "a bool, int or float", "got [float]");
  EXPECT_THROW_WITH(make_input(table, spec_of("gather", {"x"}, {{"fill", std::string("zero")}})),
                    c10::TypeError, "input kind 'gather'", "option 'fill'", "a bool, int or float",
                    "got str");
}

TEST(OptionHelpers, AbsentOrNoneIsNulloptAndValuesComeThrough) {
  const InputSpec spec = spec_of("k", {"c"},
                                 {{"none", std::monostate{}},
                                  {"dtype", c10::ScalarType::Half},
                                  {"name", std::string("fill")},
                                  {"n", int64_t{3}},
                                  {"flag", true},
                                  {"real", 2.5}});
  EXPECT_FALSE(dtype_option(spec, "absent").has_value());
  EXPECT_FALSE(dtype_option(spec, "none").has_value());
  EXPECT_FALSE(int_option(spec, "none").has_value());
  EXPECT_FALSE(scalar_option(spec, "none").has_value());
  EXPECT_EQ(dtype_option(spec, "dtype"), c10::ScalarType::Half);
  EXPECT_EQ(string_option(spec, "name"), "fill");
  EXPECT_EQ(int_option(spec, "n"), 3);
  EXPECT_TRUE(scalar_option(spec, "flag")->isBoolean());
  EXPECT_EQ(scalar_option(spec, "n")->toLong(), 3);
  EXPECT_EQ(scalar_option(spec, "real")->toDouble(), 2.5);
  // An int is not a bool, nor a bool an int.
  EXPECT_THROW_WITH(int_option(spec, "flag"), c10::TypeError, "option 'flag'", "got bool");
}

TEST(SingleColumn, ExactlyOne) {
  EXPECT_EQ(single_column(spec_of("tensor", {"x"})), "x");
  EXPECT_THROW_WITH(single_column(spec_of("tensor", {"x", "y"})), c10::ValueError,
                    "input kind 'tensor'", "exactly one column", "got 2");
  EXPECT_THROW_WITH(single_column(spec_of("pad", {})), c10::ValueError, "input kind 'pad'",
                    "got 0");
  auto node = three_columns();
  ImportedTable table(import_node(*node), "batch");
  EXPECT_THROW_WITH(make_input(table, spec_of("tensor", {"x", "y"})), c10::ValueError,
                    "exactly one column", "got 2");
}

TEST(MakeInputs, EachKindHoldsItsColumnsValues) {
  auto node = three_columns();
  ImportedTable table(import_node(*node), "batch");
  const Inputs inputs = make_inputs(
      table, {spec_of("tensor", {"x"}), spec_of("gather", {"x", "y"}),
              spec_of("pad", {"ids"}, {{"pad_value", int64_t{-1}}, {"dtype", at::kInt}})});
  ASSERT_EQ(inputs.sources.size(), 3u);

  const InputSource& tensor = *inputs.sources[0];
  EXPECT_EQ(tensor.rows(), 3);
  EXPECT_FALSE(tensor.padded());
  EXPECT_TRUE(at::equal(tensor.tensor(), at::tensor(std::vector<int32_t>{7, -1, 42})));

  const InputSource& gathered = *inputs.sources[1];
  EXPECT_EQ(gathered.dtype(), at::kFloat);
  EXPECT_EQ(gathered.row_shape(), std::vector<int64_t>{2});
  at::Tensor dst = at::empty({3, 2});
  gathered.stage_into(0, 3, at::Tensor(), dst);
  const at::Tensor expected =
      at::tensor(std::vector<float>{7, 0.5f, -1, 1.5f, 42, -2}).view({3, 2});
  EXPECT_TRUE(at::equal(dst, expected)) << dst;

  const InputSource& padded = *inputs.sources[2];
  ASSERT_TRUE(padded.padded());
  EXPECT_EQ(padded.dtype(), at::kInt);
  EXPECT_EQ(padded.row_shape(), std::vector<int64_t>{3});
  EXPECT_EQ(padded.pad_value().toLong(), -1);
  EXPECT_TRUE(at::equal(padded.lengths(), at::tensor(std::vector<int64_t>{2, 0, 3})));
  const at::Tensor ids =
      at::tensor(std::vector<int32_t>{1, 2, -1, -1, -1, -1, 3, 4, 5}).view({3, 3});
  EXPECT_TRUE(at::equal(padded.tensor(), ids)) << padded.tensor();
}

}  // namespace
}  // namespace torchspark

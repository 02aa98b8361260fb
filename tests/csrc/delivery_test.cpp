// csrc/torchspark/engine/delivery.h: which outputs are per token, and a
// submission's outputs assembled from the batches that carried its rows,
// checked against outputs computed here row by row.
#include "torchspark/engine/delivery.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "arrow_builders.h"

namespace torchspark {
namespace {

ModelOutputs outputs_of(std::vector<std::string> names, std::vector<at::Tensor> tensors) {
  ModelOutputs out;
  out.names = std::move(names);
  out.tensors = std::move(tensors);
  return out;
}

// Three outputs of a batch of 4 rows padded to 5: a, per row; b and c, per token.
ModelOutputs three_outputs() {
  return outputs_of({"a", "b", "c"}, {at::zeros({4, 3}), at::zeros({4, 5, 2}), at::zeros({4, 5})});
}

TEST(PerTokenOutputs, NoneWithoutPerTokenOptionsEvenWithoutAPaddedInput) {
  EXPECT_EQ(per_token_outputs(EngineOptions{}, three_outputs(), -1, "m", 0),
            (std::vector<bool>{false, false, false}));
}

TEST(PerTokenOutputs, ByIndex) {
  EngineOptions options;
  options.per_token_indices = {1, 2};
  EXPECT_EQ(per_token_outputs(options, three_outputs(), 5, "m", 0),
            (std::vector<bool>{false, true, true}));
}

TEST(PerTokenOutputs, ByName) {
  EngineOptions options;
  options.per_token_names = {"c"};
  EXPECT_EQ(per_token_outputs(options, three_outputs(), 5, "m", 0),
            (std::vector<bool>{false, false, true}));
}

TEST(PerTokenOutputs, IndicesAndNamesTogether) {
  EngineOptions options;
  options.per_token_indices = {1};
  options.per_token_names = {"c"};
  EXPECT_EQ(per_token_outputs(options, three_outputs(), 5, "m", 0),
            (std::vector<bool>{false, true, true}));
}

TEST(PerTokenOutputs, All) {
  EngineOptions options;
  options.per_token_all = true;
  const ModelOutputs outputs = outputs_of({}, {at::zeros({4, 5}), at::zeros({4, 5, 7})});
  EXPECT_EQ(per_token_outputs(options, outputs, 5, "m", 0), (std::vector<bool>{true, true}));
}

TEST(PerTokenOutputs, NeedAPaddedInput) {
  EngineOptions options;
  options.per_token_all = true;
  EXPECT_THROW_WITH(per_token_outputs(options, three_outputs(), -1, "model 'm.pt'", 0),
                    c10::ValueError, "model 'm.pt'", "padded token input", "'pad'");
}

TEST(PerTokenOutputs, IndexOutOfRange) {
  EngineOptions options;
  options.per_token_indices = {3};
  EXPECT_THROW_WITH(per_token_outputs(options, three_outputs(), 5, "model 'm.pt'", 0),
                    c10::ValueError, "model 'm.pt'", "output 3", "returned 3 outputs");
}

TEST(PerTokenOutputs, UnknownNameListsTheOutputs) {
  EngineOptions options;
  options.per_token_names = {"logits"};
  EXPECT_THROW_WITH(per_token_outputs(options, three_outputs(), 5, "model 'm.pt'", 0),
                    c10::ValueError, "model 'm.pt'", "'logits'", "a, b, c");
  // Positional outputs have no names to list: the message says so.
  const ModelOutputs positional = outputs_of({}, {at::zeros({4, 5}), at::zeros({4, 5})});
  EXPECT_THROW_WITH(per_token_outputs(options, positional, 5, "model 'm.pt'", 0), c10::ValueError,
                    "'logits'", "2 positional outputs (no names)");
}

TEST(PerTokenOutputs, WrongDimOneNamesTheOutputAndBatch) {
  EngineOptions options;
  options.per_token_indices = {0};  // a: [4, 3], not [4, 5, ...]
  EXPECT_THROW_WITH(per_token_outputs(options, three_outputs(), 5, "model 'm.pt'", 7),
                    c10::ValueError, "model 'm.pt'", "output 0 of batch 7", "[4, 3]",
                    "[rows, 5, ...]");
  // A 1-d output cannot be per token either.
  options.per_token_all = true;
  options.per_token_indices.clear();
  const ModelOutputs flat = outputs_of({}, {at::zeros({4})});
  EXPECT_THROW_WITH(per_token_outputs(options, flat, 5, "model 'm.pt'", 2), c10::ValueError,
                    "output 0 of batch 2", "[4]");
}

// A batch whose output j, row i holds `ids[i] * 10 + j` (ids: the submission
// rows it carries): what a model computing each row alone would give.
ModelOutputs rows_batch(const std::vector<int64_t>& ids, int64_t outputs = 2) {
  ModelOutputs out;
  at::Tensor id = at::tensor(ids, at::kLong).to(at::kFloat);
  for (int64_t j = 0; j < outputs; ++j) {
    out.tensors.push_back((id * 10 + j).unsqueeze(1).repeat({1, 3}));
    out.names.push_back("out" + std::to_string(j));
  }
  return out;
}

// What a submission of `rows` rows should get: output j, row r = r * 10 + j.
at::Tensor expected_rows(int64_t rows, int64_t j) {
  return (at::arange(rows, at::kFloat) * 10 + j).unsqueeze(1).repeat({1, 3});
}

const std::vector<bool> kTwoPerRow = {false, false};

BatchPiece piece_of(const ModelOutputs& outputs, const std::vector<bool>& per_token,
                    int64_t batch_index, int64_t offset, int64_t begin, int64_t count) {
  BatchPiece piece;
  piece.outputs = &outputs;
  piece.per_token = &per_token;
  piece.batch_index = batch_index;
  piece.offset = offset;
  piece.begin = begin;
  piece.count = count;
  return piece;
}

TEST(Assemble, AWholePieceGivesViewsSharingTheBatchStorage) {
  // A batch of 6 rows, the submission's 3 rows at offset 2.
  const ModelOutputs batch = rows_batch({100, 101, 0, 1, 2, 102});
  ModelOutputs assembled;
  assemble(assembled, 3, at::Tensor(), -1, piece_of(batch, kTwoPerRow, 0, 2, 0, 3), "m", 1);
  ASSERT_EQ(assembled.tensors.size(), 2u);
  EXPECT_EQ(assembled.names, batch.names);
  for (int64_t j = 0; j < 2; ++j) {
    const at::Tensor& out = assembled.tensors[j];
    EXPECT_TRUE(out.is_alias_of(batch.tensors[j])) << "output " << j;
    EXPECT_EQ(out.data_ptr<float>(), batch.tensors[j].data_ptr<float>() + 2 * 3);
    EXPECT_TRUE(at::equal(out, expected_rows(3, j))) << out;
  }
}

TEST(Assemble, PiecesInOrderAreCopiedIntoPlace) {
  // 5 rows: rows 0-1 ride at the end of batch 0, rows 2-4 at the start of batch 1.
  const ModelOutputs first = rows_batch({100, 101, 0, 1});
  const ModelOutputs second = rows_batch({2, 3, 4, 200});
  ModelOutputs assembled;
  assemble(assembled, 5, at::Tensor(), -1, piece_of(first, kTwoPerRow, 0, 2, 0, 2), "m", 1);
  assemble(assembled, 5, at::Tensor(), -1, piece_of(second, kTwoPerRow, 1, 0, 2, 3), "m", 1);
  ASSERT_EQ(assembled.tensors.size(), 2u);
  for (int64_t j = 0; j < 2; ++j) {
    EXPECT_FALSE(assembled.tensors[j].is_alias_of(first.tensors[j]));
    EXPECT_TRUE(at::equal(assembled.tensors[j], expected_rows(5, j))) << assembled.tensors[j];
  }
}

TEST(Assemble, PiecesArrivingOutOfOrderStillLandInPlace) {
  const ModelOutputs first = rows_batch({0, 1});
  const ModelOutputs second = rows_batch({2, 3});
  ModelOutputs assembled;
  assemble(assembled, 4, at::Tensor(), -1, piece_of(second, kTwoPerRow, 1, 0, 2, 2), "m", 1);
  assemble(assembled, 4, at::Tensor(), -1, piece_of(first, kTwoPerRow, 0, 0, 0, 2), "m", 1);
  for (int64_t j = 0; j < 2; ++j) {
    EXPECT_TRUE(at::equal(assembled.tensors[j], expected_rows(4, j)));
  }
}

TEST(Assemble, AStagingOrderIsUndoneIntoSubmissionOrder) {
  // Staging position i carried submission row order[i].
  const std::vector<int64_t> order = {3, 0, 4, 1, 2};
  const at::Tensor order_t = at::tensor(order, at::kLong);
  const ModelOutputs first = rows_batch({3, 0, 4});
  const ModelOutputs second = rows_batch({1, 2});
  ModelOutputs assembled;
  assemble(assembled, 5, order_t, -1, piece_of(first, kTwoPerRow, 0, 0, 0, 3), "m", 1);
  assemble(assembled, 5, order_t, -1, piece_of(second, kTwoPerRow, 1, 0, 3, 2), "m", 1);
  for (int64_t j = 0; j < 2; ++j) {
    EXPECT_TRUE(at::equal(assembled.tensors[j], expected_rows(5, j))) << assembled.tensors[j];
  }
}

TEST(Assemble, OneSortedPieceIsReorderedNotViewed) {
  const at::Tensor order = at::tensor(std::vector<int64_t>{2, 0, 1}, at::kLong);
  const ModelOutputs batch = rows_batch({2, 0, 1});
  ModelOutputs assembled;
  assemble(assembled, 3, order, -1, piece_of(batch, kTwoPerRow, 0, 0, 0, 3), "m", 1);
  for (int64_t j = 0; j < 2; ++j) {
    EXPECT_FALSE(assembled.tensors[j].is_alias_of(batch.tensors[j]));
    EXPECT_TRUE(at::equal(assembled.tensors[j], expected_rows(3, j)));
  }
}

// A per-token batch output [ids, width, 2]: every slot, past each row's
// length too, holds 1000 + id * 100 + t * 2 + k (what a model may leave there).
at::Tensor token_output(const std::vector<int64_t>& ids, int64_t width) {
  at::Tensor id = at::tensor(ids, at::kLong).to(at::kFloat).view({-1, 1, 1});
  at::Tensor t = at::arange(width, at::kFloat).view({1, -1, 1});
  at::Tensor k = at::arange(2, at::kFloat).view({1, 1, -1});
  return 1000 + id * 100 + t * 2 + k;
}

TEST(Assemble, PerTokenOutputsComeBackAtTheSubmissionWidthZeroPastEachLength) {
  // A submission of 3 rows padded to 4, lengths 2, 4, 1. Row 0 ran in a batch
  // cut to width 2 (a narrower batch), rows 1-2 in a batch 6 wide (another
  // submission's longer rows), after one row of that other submission.
  const std::vector<int64_t> lengths = {2, 4, 1};
  const int64_t width = 4;
  ModelOutputs narrow = outputs_of({"tokens", "pooled"}, {token_output({0}, 2), at::ones({1, 3})});
  ModelOutputs wide =
      outputs_of({"tokens", "pooled"}, {token_output({99, 1, 2}, 6), at::ones({3, 3}) * 2});
  const std::vector<bool> per_token = {true, false};

  ModelOutputs assembled;
  BatchPiece first = piece_of(narrow, per_token, 0, 0, 0, 1);
  first.batch_padded = true;
  first.lengths = at::tensor(std::vector<int64_t>{2}, at::kLong);
  BatchPiece second = piece_of(wide, per_token, 1, 1, 1, 2);
  second.batch_padded = true;
  second.lengths = at::tensor(std::vector<int64_t>{4, 1}, at::kLong);
  assemble(assembled, 3, at::Tensor(), width, first, "m", 1);
  assemble(assembled, 3, at::Tensor(), width, second, "m", 1);

  ASSERT_EQ(assembled.tensors.size(), 2u);
  const at::Tensor& tokens = assembled.tensors[0];
  ASSERT_EQ(tokens.sizes(), (std::vector<int64_t>{3, width, 2}));
  for (int64_t r = 0; r < 3; ++r) {
    for (int64_t t = 0; t < width; ++t) {
      for (int64_t k = 0; k < 2; ++k) {
        const float expected = t < lengths[r] ? 1000.0f + r * 100 + t * 2 + k : 0.0f;
        EXPECT_EQ(tokens[r][t][k].item<float>(), expected) << "row " << r << " token " << t;
      }
    }
  }
  const at::Tensor pooled = at::cat({at::ones({1, 3}), at::ones({2, 3}) * 2});
  EXPECT_TRUE(at::equal(assembled.tensors[1], pooled));
}

TEST(Assemble, OnePerTokenPieceIsCutToTheSubmissionWidth) {
  // Even a submission one batch covers is copied when an output is per token:
  // its batch may be wider than the submission.
  const std::vector<int64_t> lengths = {3, 1};
  ModelOutputs batch = outputs_of({}, {token_output({0, 1}, 5).select(2, 0)});
  const std::vector<bool> per_token = {true};
  BatchPiece piece = piece_of(batch, per_token, 0, 0, 0, 2);
  piece.lengths = at::tensor(lengths, at::kLong);
  ModelOutputs assembled;
  assemble(assembled, 2, at::Tensor(), 3, piece, "m", 1);
  const at::Tensor expected =
      at::tensor(std::vector<float>{1000, 1002, 1004, 1100, 0, 0}).view({2, 3});
  EXPECT_TRUE(at::equal(assembled.tensors[0], expected)) << assembled.tensors[0];
}

TEST(Assemble, AnotherNumberOfOutputsRaisesNamingTheRequest) {
  const ModelOutputs two = rows_batch({0, 1}, 2);
  const ModelOutputs one = rows_batch({2, 3}, 1);
  const std::vector<bool> one_flag = {false};
  ModelOutputs assembled;
  assemble(assembled, 4, at::Tensor(), -1, piece_of(two, kTwoPerRow, 0, 0, 0, 2), "model 'm'", 42);
  EXPECT_THROW_WITH(assemble(assembled, 4, at::Tensor(), -1, piece_of(one, one_flag, 3, 0, 2, 2),
                             "model 'm'", 42),
                    c10::ValueError, "model 'm'", "batch 3", "request 42", "returned 1 outputs",
                    "returned 2");
}

TEST(Assemble, AnotherRowShapeRaisesNamingTheRequest) {
  const ModelOutputs first = outputs_of({}, {at::zeros({2, 3})});
  const ModelOutputs second = outputs_of({}, {at::zeros({2, 4})});
  const std::vector<bool> flags = {false};
  ModelOutputs assembled;
  assemble(assembled, 4, at::Tensor(), -1, piece_of(first, flags, 0, 0, 0, 2), "model 'm'", 42);
  BatchPiece piece = piece_of(second, flags, 5, 0, 2, 2);
  piece.batch_padded = true;
  EXPECT_THROW_WITH(assemble(assembled, 4, at::Tensor(), -1, piece, "model 'm'", 42),
                    c10::ValueError, "output 0 of batch 5", "[4]", "request 42", "[3]",
                    "needs per_token");
}

TEST(Assemble, AnotherDtypeOrNamesRaise) {
  const ModelOutputs first = outputs_of({"x"}, {at::zeros({2, 3})});
  const ModelOutputs doubles = outputs_of({"x"}, {at::zeros({2, 3}, at::kDouble)});
  const ModelOutputs renamed = outputs_of({"y"}, {at::zeros({2, 3})});
  const std::vector<bool> flags = {false};
  ModelOutputs assembled;
  assemble(assembled, 6, at::Tensor(), -1, piece_of(first, flags, 0, 0, 0, 2), "m", 42);
  EXPECT_THROW_WITH(
      assemble(assembled, 6, at::Tensor(), -1, piece_of(doubles, flags, 1, 0, 2, 2), "m", 42),
      c10::ValueError, "batch 1", "Double", "Float", "request 42");
  EXPECT_THROW_WITH(
      assemble(assembled, 6, at::Tensor(), -1, piece_of(renamed, flags, 2, 0, 4, 2), "m", 42),
      c10::ValueError, "batch 2", "request 42", "other names");
}

}  // namespace
}  // namespace torchspark

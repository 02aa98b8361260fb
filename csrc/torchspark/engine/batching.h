// The batching policy: which rows form the next batch. Pure functions of
// lengths and limits (no locks, no tensors), unit-tested in tests/csrc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace torchspark {

// Row indices sorted by `keys` (stable) within consecutive windows of
// `window` rows: similar lengths share batches, while a row moves at most a
// window away, so outputs can be restored to submission order cheaply and a
// stream of submissions is not held back. window <= 0 or >= rows: one window.
std::vector<int64_t> windowed_sort(const int64_t* keys, int64_t rows, int64_t window);

// A batch being filled: its rows and, per padded input, its longest row so
// far (at least 1 once a row joined: an empty row still takes a slot).
struct BatchShape {
  int64_t rows = 0;
  std::vector<int64_t> widths;
  // Per padded input, its length group (inputs/input_source.h), numbered
  // from 0; empty: each input is its own group.
  std::vector<int64_t> groups;
  // Padded slots of the batch: rows x the sum over length groups of the
  // group's widest input (a text's ids and mask count once).
  int64_t token_slots() const { return rows * group_width(widths); }
  // The sum over groups of the widest of `widths` (one per padded input).
  int64_t group_width(const std::vector<int64_t>& widths) const;
};

// One submission's row lengths per padded input, read in staging order.
struct RowLengths {
  std::vector<const int64_t*> lengths;  // per padded input: [rows]
  const int64_t* order = nullptr;       // staging order (row of position i), or null
  int64_t at(size_t input, int64_t position) const {
    return lengths[input][order ? order[position] : position];
  }
};

// How many of the `available` rows at staging positions [begin, ...) join
// `batch` without passing batch_size rows and, when max_tokens > 0,
// max_tokens padded slots (token_slots()); updates `batch`. An empty batch takes at least one
// row, however long (a row over the budget runs alone rather than never).
int64_t fit_rows(BatchShape& batch, const RowLengths& rows, int64_t begin, int64_t available,
                 int64_t batch_size, int64_t max_tokens);

}  // namespace torchspark

// Record batches out: the columns a job passes through (re-exported from the
// imported input, zero-copy) beside the model's outputs (export_tensor:
// zero-copy for contiguous CPU tensors), as one Arrow struct array.
//
// A passed-through column shares the input's buffers: the exported arrays'
// private data hold a reference to the input chunk's owner, so the input
// stays alive until the consumer releases the output (exactly once, per the
// C Data Interface). Its schema is copied (name, format, metadata, flags,
// children, dictionary). Thread safety: reentrant; the release callbacks may
// run on any thread (the input's own release then runs there too: the Python
// binding keeps that on a GIL-holding thread).
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "torchspark/arrow/arrow_c_abi.h"
#include "torchspark/arrow/arrow_import.h"

namespace torchspark {

// One column of an output batch: an imported column (one chunk) passed
// through as it is, or a tensor with one row per batch row.
struct OutputColumn {
  std::string name;
  const Column* column = nullptr;
  at::Tensor tensor;
};

// Fills *schema and *array with a record batch (a struct array) of `rows`
// rows holding `columns` in order; the caller owns both and must release
// them. ValueError naming the column when its rows differ or a passed-through
// column is chunked.
void export_record_batch(const std::vector<OutputColumn>& columns, int64_t rows,
                         ArrowSchema* schema, ArrowArray* array);

}  // namespace torchspark

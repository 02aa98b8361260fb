// Scalar columns -> one row-major [N, F] tensor: the input of every tabular
// model, and the one copy that the Arrow layout (one buffer per column) forces.
//
// One native pass over the data, cache-blocked: a tile of kGatherTileRows
// rows x F columns is written while the tile stays in L1, each column read
// sequentially; the cast to the output dtype is fused into that pass. Large N
// is split across torch's intra-op threads (at::parallel_for).
//
// `out`, when given, is written in place (the executor's staging buffers);
// it must be a contiguous CPU tensor of shape [N, F] and the requested dtype.
// Thread safety: reentrant; concurrent calls must use distinct `out` tensors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Scalar.h>

#include <optional>
#include <vector>

#include "torchspark/arrow_import.h"

namespace torchspark {

struct GatherOptions {
  // Output dtype; the cast is fused into the gather.
  c10::ScalarType dtype = c10::ScalarType::Float;
  // kError (default) or kFill; kMask is not supported by gather.
  NullPolicy nulls = NullPolicy::kError;
  // Written at null slots under kFill.
  c10::Scalar fill = 0;
};

// Rows per cache tile. Chosen with benchmarks/gather_bench.py (see
// benchmarks/RESULTS.md): 64 rows x 64 float32 columns = 16 KiB fits L1.
constexpr int64_t kGatherTileRows = 64;

// Gathers `columns` (all from one ImportedTable, so identically chunked) into
// [N, F]. Throws UnsupportedTypeError for a non-scalar column, NullValueError
// for a null under kError, ValueError for a bad `out`.
at::Tensor gather(const std::vector<Column>& columns, int64_t num_rows,
                  const GatherOptions& options, const std::optional<at::Tensor>& out);

}  // namespace torchspark

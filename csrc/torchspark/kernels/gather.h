// Scalar columns -> one row-major [N, F] tensor: the input of every tabular
// model, and the one copy that the Arrow layout (one buffer per column) forces.
//
// One native pass over the data, cache-blocked: a tile of rows x F columns
// (kGatherTileBytes) is written while it stays in L1, each column read
// sequentially; runs of 8 plain 32-bit columns are transposed 8x8 in AVX2
// registers, others go through a per-column conversion kernel with the cast
// fused. Outputs of 8 MiB and more are written with non-temporal stores (the
// output is never read for ownership): straight from registers, 16 columns =
// one 64-byte line per row, when every column is plain 32-bit and F % 16 == 0;
// through a scratch tile otherwise. Large N is split across torch's intra-op
// threads (at::parallel_for).
//
// `out`, when given, is written in place (the engine's staging buffers);
// it must be a contiguous CPU tensor of shape [N, F] and the requested dtype.
// Thread safety: reentrant; concurrent calls must use distinct `out` tensors.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Scalar.h>

#include <optional>
#include <vector>

#include "torchspark/arrow/arrow_import.h"

namespace torchspark {

struct GatherOptions {
  // Output dtype; the cast is fused into the gather.
  c10::ScalarType dtype = c10::ScalarType::Float;
  // kError (default) or kFill; kMask is not supported by gather.
  NullPolicy nulls = NullPolicy::kError;
  // Written at null slots under kFill.
  c10::Scalar fill = 0;
};

// Bytes of output per tile (rows = this / row bytes, at least 8). Larger
// tiles mean longer sequential runs per column, which the hardware prefetcher
// needs when F streams are read at once; 64 KiB measured best between 16 KiB
// and 2 MiB for 64 float32 columns x 1e6 rows (benchmarks/RESULTS.md, gather).
constexpr int64_t kGatherTileBytes = 64 << 10;

// Gathers `columns` (all from one ImportedTable, so identically chunked) into
// [N, F]. Throws UnsupportedTypeError for a non-scalar column, NullValueError
// for a null under kError, ValueError for a bad `out`.
at::Tensor gather(const std::vector<Column>& columns, int64_t num_rows,
                  const GatherOptions& options, const std::optional<at::Tensor>& out);

// Checks what gather_rows would (types, lengths, nulls under kError) without
// writing: the engine calls it when a batch is submitted.
void check_gather(const std::vector<Column>& columns, int64_t begin, int64_t count,
                  const GatherOptions& options);

// Gathers rows [begin, begin + count) of `columns` into `out` ([count, F],
// contiguous, CPU, options.dtype): what the engine stages a batch with.
void gather_rows(const std::vector<Column>& columns, int64_t begin, int64_t count,
                 const GatherOptions& options, const at::Tensor& out);

}  // namespace torchspark

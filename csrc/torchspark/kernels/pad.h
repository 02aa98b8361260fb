// Ragged lists (token ids) -> a right-padded [N, L] tensor plus lengths [N],
// in one native pass (rows split across torch's intra-op threads).
//
// L is the longest row, capped by max_len (longer rows are truncated; lengths
// report the kept length). A null row is an error, or an empty row under
// NullPolicy::kFill; a null element is an error, or pad_value under kFill.
// Thread safety: reentrant.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Scalar.h>

#include <optional>

#include "torchspark/arrow/arrow_import.h"

namespace torchspark {

struct PadOptions {
  // Truncate rows to this many values; nullopt = no limit.
  std::optional<int64_t> max_len;
  // Written after each row's values, and at null elements under kFill.
  c10::Scalar pad_value = 0;
  // Output dtype; nullopt keeps the list values' own dtype.
  std::optional<c10::ScalarType> dtype;
  // kError (default) or kFill; kMask is not supported (lengths are the mask).
  NullPolicy nulls = NullPolicy::kError;
};

struct PadResult {
  at::Tensor values;   // [N, L]
  at::Tensor lengths;  // [N] int64
};

PadResult pad(const Column& column, const PadOptions& options);

// The lengths pad() gives (int64 [N], capped by max_len), with its checks
// (list type, nulls), without converting any value: for inputs derived from
// a padded column's lengths alone (attention masks).
at::Tensor list_lengths(const Column& column, const PadOptions& options);

}  // namespace torchspark

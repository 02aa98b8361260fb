// Tensor -> Arrow export, zero-copy for contiguous CPU tensors.
//
// The exported ArrowArray's data buffer is the tensor's memory; its private
// data holds a reference to the tensor, so the memory lives until the consumer
// calls `release` (exactly once, per the C Data Interface). Layout:
//   1-D            -> primitive (bool: bit-packed, so one copy)
//   [N, D, ...]    -> list<list<...<T>>> with generated offsets (int32 when
//                     they fit, else large_list), or fixed_size_list when asked
//                     (Spark rejects fixed_size_list, so list is the default)
// float16 -> Arrow float16; bfloat16 has no Arrow type and is exported as
// float32 (exact: every bfloat16 value is a float32 value). Tensors that are
// non-contiguous or not on the CPU are first made contiguous on the CPU.
// Thread safety: reentrant; the release callbacks may run on any thread.
#pragma once

#include <ATen/core/Tensor.h>

#include "torchspark/arrow/arrow_c_abi.h"

namespace torchspark {

struct ExportOptions {
  // Export [N, D, ...] as fixed_size_list (no offsets) instead of list.
  bool fixed_size_list = false;
};

// Fills *schema and *array; the caller owns both and must release them.
// `what` names the tensor in messages.
void export_tensor(const at::Tensor& tensor, const ExportOptions& options, ArrowSchema* schema,
                   ArrowArray* array, const std::string& what = "tensor");

}  // namespace torchspark

// Element conversion kernels shared by to_tensor's copy path, gather and pad:
// read Arrow storage (any alignment, bit-packed booleans included), cast, and
// write with a stride. One kernel per (source, destination) type pair, chosen
// once per column so the inner loop has no per-element dispatch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Scalar.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

#include "torchspark/arrow/arrow_c_abi.h"

namespace torchspark {

// Converts `count` elements of Arrow storage type `src` starting at element
// `index` of `base` into `dst` (elements of the destination type, `dst_stride`
// apart). For src == Bool, `base` is a bit-packed Arrow bitmap and `index` a bit.
using ConvertFn = void (*)(const void* base, int64_t index, int64_t count, void* dst,
                           int64_t dst_stride);

// The kernel for a pair, or nullptr when either type is not supported.
ConvertFn convert_fn(c10::ScalarType src, c10::ScalarType dst);

// Writes `value` (converted to `dst_type`) into `count` elements, `stride` apart.
using FillFn = void (*)(void* dst, const c10::Scalar& value, int64_t count, int64_t stride);
FillFn fill_fn(c10::ScalarType dst_type);

// Checks that `value` converts to `dtype` without overflow; throws ValueError
// naming `what` and the argument `name` otherwise (e.g. fill=nan for int64).
void check_fill(const c10::Scalar& value, c10::ScalarType dtype, const std::string& what,
                const char* name = "fill");

// Converts elements [start, start + count) (absolute indices) of a primitive or
// bool Arrow array into dst, `stride` elements of `dst_size` bytes apart. Only
// valid slots are converted; nulls get `fill` and, when `mask` is given, false
// there (true elsewhere, `mask_stride` apart). Values under nulls are never read.
void convert_valid_runs(const ArrowArray& array, int64_t start, int64_t count, ConvertFn convert,
                        FillFn fill_value, const c10::Scalar& fill, char* dst, int64_t dst_size,
                        int64_t stride, bool* mask, int64_t mask_stride);

// The dtypes a tensor produced from Arrow can have (numbers and bool).
bool is_supported_dtype(c10::ScalarType dtype);

}  // namespace torchspark

// Input kind "mask": the attention mask of a ragged list column (token ids):
// [rows, L] with 1 at each row's tokens and 0 past its length, the lengths
// and width that kind "pad" gives the same column with the same options, so
// a Hugging Face encoder gets its `attention_mask` beside its `input_ids`.
// Options: dtype (default int64), nulls ("error" | "fill": a null row is
// all 0), max_len, length_group (default: the column's name, the group of a
// pad input of the same column: a token budget counts the pair once).
#include <ATen/ATen.h>

#include "torchspark/inputs/input_spec.h"
#include "torchspark/kernels/pad.h"

namespace torchspark {
namespace {

InputSourcePtr make_mask_input(const ImportedTable& table, const InputSpec& spec) {
  Column column = table.column(single_column(spec));
  PadOptions options;
  options.nulls = nulls_option(spec);
  options.max_len = int_option(spec, "max_len");
  const c10::ScalarType dtype = dtype_option(spec, "dtype").value_or(at::kLong);
  at::Tensor lengths = list_lengths(column, options);
  const int64_t width = column.length > 0 ? lengths.max().item<int64_t>() : 0;
  at::Tensor mask =
      (at::arange(width, lengths.options()).unsqueeze(0) < lengths.unsqueeze(1)).to(dtype);
  return padded_source(std::move(mask), std::move(lengths), 0, column.label,
                       length_group_option(spec));
}

const bool registered =
    (register_input_kind("mask", {"dtype", "nulls", "max_len", "length_group"}, make_mask_input),
     true);

}  // namespace
}  // namespace torchspark

// Input kind "pad": one ragged list column (token ids) -> right-padded
// [rows, L] values with each row's length; the lengths drive token budgets
// and sorting. Options: dtype, nulls ("error" | "fill": a null row is empty,
// a null element pad_value), max_len (longer rows are truncated), pad_value,
// length_group (padded inputs of one group are the same tokens: a token
// budget counts them once; default: the column's name).
#include "torchspark/inputs/input_spec.h"
#include "torchspark/kernels/pad.h"

namespace torchspark {
namespace {

InputSourcePtr make_pad_input(const ImportedTable& table, const InputSpec& spec) {
  Column column = table.column(single_column(spec));
  PadOptions options;
  options.dtype = dtype_option(spec, "dtype");
  options.nulls = nulls_option(spec);
  options.max_len = int_option(spec, "max_len");
  options.pad_value = scalar_option(spec, "pad_value").value_or(0);
  PadResult padded = pad(column, options);
  return padded_source(std::move(padded.values), std::move(padded.lengths), options.pad_value,
                       column.label, length_group_option(spec));
}

const bool registered =
    (register_input_kind("pad", {"dtype", "nulls", "max_len", "pad_value", "length_group"},
                         make_pad_input),
     true);

}  // namespace
}  // namespace torchspark

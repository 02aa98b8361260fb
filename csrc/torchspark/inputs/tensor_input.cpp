// Input kind "tensor": one column through to_tensor (zero-copy for numbers and
// uniform lists, one copy otherwise). Options: dtype, nulls ("error" |
// "fill"), fill.
#include <c10/util/Exception.h>

#include "torchspark/inputs/input_spec.h"

namespace torchspark {
namespace {

InputSourcePtr make_tensor_input(const ImportedTable& table, const InputSpec& spec) {
  Column column = table.column(single_column(spec));
  ToTensorOptions options;
  options.dtype = dtype_option(spec, "dtype");
  options.nulls = nulls_option(spec);
  options.fill = scalar_option(spec, "fill").value_or(0);
  TORCH_CHECK_VALUE(options.nulls != NullPolicy::kMask, column.label,
                    ": nulls='mask' is not available for model inputs; use 'fill'");
  return tensor_source(to_tensor(column, options).values);
}

const bool registered =
    (register_input_kind("tensor", {"dtype", "nulls", "fill"}, make_tensor_input), true);

}  // namespace
}  // namespace torchspark

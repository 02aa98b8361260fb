#include "torchspark/kernels/pad.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>

#include "torchspark/arrow/arrow_type.h"
#include "torchspark/errors.h"
#include "torchspark/kernels/convert.h"
#include "torchspark/kernels/host_memory.h"

namespace torchspark {

namespace {

struct ListChunk {
  const ColumnChunk* chunk;
  const ArrowArray* values;
  TypeKind kind;
  int64_t fixed_size;

  // Absolute child range of absolute row i.
  std::pair<int64_t, int64_t> row(int64_t i) const {
    return list_child_range(*chunk->array, kind, fixed_size, i);
  }
};

// The column's list chunks, checked: a list of numbers or bools.
struct ListColumn {
  std::vector<ListChunk> chunks;
  c10::ScalarType storage;
};

ListColumn list_column(const Column& column, const PadOptions& options) {
  const std::string& what = column.label;
  TORCH_CHECK_VALUE(options.nulls != NullPolicy::kMask, what,
                    ": pad takes nulls='error' or 'fill', got 'mask' (the lengths are the mask)");
  TORCH_CHECK_VALUE(!options.max_len || *options.max_len >= 0, what, ": max_len must be >= 0, got ",
                    options.max_len.value_or(0));

  // The type, from the schema every chunk shares (children checked before use).
  const ArrowSchema& schema = *column.schema;
  ArrowType type = parse_type(schema, what);
  const bool is_list = type.kind == TypeKind::kList || type.kind == TypeKind::kLargeList ||
                       type.kind == TypeKind::kFixedSizeList;
  TS_CHECK_SUPPORTED(is_list && !type.dictionary_encoded, what,
                     ": pad takes a list, large_list or fixed_size_list column, got ",
                     describe_format(schema.format));
  TS_CHECK_ARROW(
      schema.n_children == 1 && schema.children != nullptr && schema.children[0] != nullptr, what,
      ": a list schema must have exactly one child, got ", schema.n_children);
  const ArrowSchema& child_schema = *schema.children[0];
  ArrowType child = parse_type(child_schema, what + " (list values)");
  TS_CHECK_SUPPORTED((child.kind == TypeKind::kPrimitive || child.kind == TypeKind::kBool) &&
                         !child.dictionary_encoded,
                     what, ": pad takes lists of numbers or bools, got lists of ",
                     describe_format(child_schema.format));
  ListColumn out{{}, child.dtype};
  for (const ColumnChunk& chunk : column.chunks) {
    validate(*chunk.schema, *chunk.array, what, /*with_dictionary=*/false);
    out.chunks.push_back({&chunk, chunk.array->children[0], type.kind, type.fixed_size});
  }
  return out;
}

// Pass one: each row's kept length (nulls checked); returns the longest.
int64_t fill_lengths(const Column& column, const std::vector<ListChunk>& chunks,
                     const PadOptions& options, int64_t* lengths) {
  const std::string& what = column.label;
  const int64_t cap = options.max_len.value_or(std::numeric_limits<int64_t>::max());
  int64_t width = 0;
  for (const ListChunk& lc : chunks) {
    const ColumnChunk& chunk = *lc.chunk;
    if (options.nulls == NullPolicy::kError) {
      int64_t nulls = count_nulls(*chunk.array, chunk.start, chunk.length);
      int64_t first = first_null(*chunk.array, chunk.start, chunk.length);
      TS_CHECK_NOT_NULL(nulls == 0, what, ": ", nulls, nulls == 1 ? " null row" : " null rows",
                        " (first is row ", chunk.row_base + (first - chunk.start),
                        "); pass nulls='fill' to pad null rows as empty");
    }
    for (int64_t r = 0; r < chunk.length; ++r) {
      const int64_t i = chunk.start + r;
      int64_t len = 0;
      if (is_valid(*chunk.array, i)) {
        auto [begin, n] = lc.row(i);
        len = std::min(n, cap);
        if (options.nulls == NullPolicy::kError) {
          int64_t null_at = first_null(*lc.values, begin, len);
          TS_CHECK_NOT_NULL(null_at < 0, what, ": ", count_nulls(*lc.values, begin, len),
                            " null values in row ", chunk.row_base + r, " (first at position ",
                            null_at - begin, "); pass nulls='fill' to pad them");
        }
      }
      lengths[chunk.row_base + r] = len;
      width = std::max(width, len);
    }
  }
  return width;
}

}  // namespace

at::Tensor list_lengths(const Column& column, const PadOptions& options) {
  const ListColumn list = list_column(column, options);
  at::Tensor lengths = at::empty({column.length}, at::TensorOptions().dtype(at::kLong));
  fill_lengths(column, list.chunks, options, lengths.data_ptr<int64_t>());
  return lengths;
}

PadResult pad(const Column& column, const PadOptions& options) {
  const std::string& what = column.label;
  const ListColumn list = list_column(column, options);
  const std::vector<ListChunk>& chunks = list.chunks;
  const c10::ScalarType storage = list.storage;
  const c10::ScalarType dtype = options.dtype.value_or(storage);
  TS_CHECK_SUPPORTED(is_supported_dtype(dtype), what, ": dtype ", c10::toString(dtype),
                     " is not supported; expected a real number type or bool");
  check_fill(options.pad_value, dtype, what, "pad_value");
  const ConvertFn convert = convert_fn(storage, dtype);
  TS_CHECK_SUPPORTED(convert != nullptr, what, ": cannot convert ", c10::toString(storage), " to ",
                     c10::toString(dtype));

  PadResult result;
  result.lengths = at::empty({column.length}, at::TensorOptions().dtype(at::kLong));
  int64_t* lengths = result.lengths.data_ptr<int64_t>();
  const int64_t width = fill_lengths(column, chunks, options, lengths);

  // Pass two: values, then padding, row by row.
  result.values = empty_host({column.length, width}, dtype);
  char* out = static_cast<char*>(result.values.data_ptr());
  const int64_t elem_size = static_cast<int64_t>(c10::elementSize(dtype));
  const FillFn fill = fill_fn(dtype);
  for (const ListChunk& lc : chunks) {
    const ColumnChunk& chunk = *lc.chunk;
    const int64_t grain =
        std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(width, 1));
    at::parallel_for(0, chunk.length, grain, [&](int64_t begin_row, int64_t end_row) {
      for (int64_t r = begin_row; r < end_row; ++r) {
        const int64_t row = chunk.row_base + r;
        char* dst = out + row * width * elem_size;
        const int64_t len = lengths[row];
        if (len > 0) {
          const int64_t begin = lc.row(chunk.start + r).first;
          convert_valid_runs(*lc.values, begin, len, convert, fill, options.pad_value, dst,
                             elem_size, 1, nullptr, 0);
        }
        fill(dst + len * elem_size, options.pad_value, width - len, 1);
      }
    });
  }
  return result;
}

}  // namespace torchspark

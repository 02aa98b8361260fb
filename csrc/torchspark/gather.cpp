#include "torchspark/gather.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "torchspark/arrow_type.h"
#include "torchspark/convert.h"
#include "torchspark/errors.h"

namespace torchspark {

namespace {

struct Source {
  const ArrowArray* array;
  int64_t start;      // absolute index of the chunk's first row
  ConvertFn convert;
  bool has_nulls;
};

}  // namespace

at::Tensor gather(const std::vector<Column>& columns, int64_t num_rows,
                  const GatherOptions& options, const std::optional<at::Tensor>& out) {
  const int64_t num_cols = static_cast<int64_t>(columns.size());
  TORCH_CHECK_VALUE(options.nulls != NullPolicy::kMask,
                    "gather: nulls must be 'error' or 'fill', got 'mask' (use to_tensor for a "
                    "mask per column)");
  TS_CHECK_SUPPORTED(is_supported_dtype(options.dtype), "gather: dtype ",
                     c10::toString(options.dtype),
                     " is not supported; expected a real number type or bool");
  check_fill(options.fill, options.dtype, "gather");

  at::Tensor result;
  if (out.has_value() && out->defined()) {
    const at::Tensor& o = *out;
    TORCH_CHECK_VALUE(o.device().is_cpu() && o.scalar_type() == options.dtype &&
                          o.dim() == 2 && o.size(0) == num_rows && o.size(1) == num_cols &&
                          o.is_contiguous(),
                      "gather: out must be a contiguous CPU ", c10::toString(options.dtype),
                      " tensor of shape [", num_rows, ", ", num_cols, "], got a ",
                      o.is_contiguous() ? "contiguous " : "non-contiguous ", o.device(), " ",
                      c10::toString(o.scalar_type()), " tensor of shape ", o.sizes());
    result = o;
  } else {
    result = at::empty({num_rows, num_cols}, at::TensorOptions().dtype(options.dtype));
  }
  if (num_rows == 0 || num_cols == 0) {
    return result;
  }

  // Validate every column and resolve its kernel before writing anything.
  const size_t num_chunks = columns[0].chunks.size();
  for (const Column& column : columns) {
    TORCH_CHECK_VALUE(column.chunks.size() == num_chunks && column.length == num_rows,
                      column.label, ": expected ", num_rows, " rows in ", num_chunks,
                      " chunks like the other columns, got ", column.length, " rows in ",
                      column.chunks.size());
    for (const ColumnChunk& chunk : column.chunks) {
      validate(*chunk.schema, *chunk.array, column.label, /*with_dictionary=*/false);
      ArrowType type = parse_type(*chunk.schema, column.label);
      TS_CHECK_SUPPORTED(
          (type.kind == TypeKind::kPrimitive || type.kind == TypeKind::kBool) &&
              !type.dictionary_encoded,
          column.label, ": gather takes scalar number or bool columns, got ",
          type.dictionary_encoded ? std::string("dictionary") : describe_format(chunk.schema->format),
          " (use to_tensor for list and binary columns)");
      if (options.nulls == NullPolicy::kError) {
        int64_t nulls = count_nulls(*chunk.array, chunk.start, chunk.length);
        if (nulls > 0) {
          int64_t total = 0;
          for (const ColumnChunk& c : column.chunks) {
            total += count_nulls(*c.array, c.start, c.length);
          }
          int64_t first = first_null(*chunk.array, chunk.start, chunk.length);
          TS_CHECK_NOT_NULL(false, column.label, ": ", total,
                            total == 1 ? " null value" : " null values", " (first in row ",
                            chunk.row_base + (first - chunk.start),
                            "); pass nulls='fill' (with fill=...) to gather them");
        }
      }
    }
  }

  const int64_t elem_size = static_cast<int64_t>(c10::elementSize(options.dtype));
  const FillFn fill = fill_fn(options.dtype);
  char* out_data = static_cast<char*>(result.data_ptr());
  // Enough rows per task to amortise a thread hand-off (~32K elements).
  const int64_t grain = std::max<int64_t>(kGatherTileRows, at::internal::GRAIN_SIZE / num_cols);

  std::vector<Source> sources(num_cols);
  for (size_t c = 0; c < num_chunks; ++c) {
    const ColumnChunk& first = columns[0].chunks[c];
    for (int64_t j = 0; j < num_cols; ++j) {
      const ColumnChunk& chunk = columns[j].chunks[c];
      ArrowType type = parse_type(*chunk.schema, columns[j].label);
      sources[j] = {chunk.array, chunk.start, convert_fn(type.dtype, options.dtype),
                    range_has_nulls(*chunk.array, chunk.start, chunk.length)};
      TS_CHECK_SUPPORTED(sources[j].convert != nullptr, columns[j].label, ": cannot convert ",
                         c10::toString(type.dtype), " to ", c10::toString(options.dtype));
    }
    char* chunk_out = out_data + first.row_base * num_cols * elem_size;
    at::parallel_for(0, first.length, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; t += kGatherTileRows) {
        const int64_t rows = std::min(kGatherTileRows, end - t);
        char* tile = chunk_out + t * num_cols * elem_size;
        for (int64_t j = 0; j < num_cols; ++j) {
          const Source& s = sources[j];
          if (s.has_nulls) {
            convert_valid_runs(*s.array, s.start + t, rows, s.convert, fill, options.fill,
                               tile + j * elem_size, elem_size, num_cols, nullptr, 0);
          } else {
            s.convert(s.array->buffers[1], s.start + t, rows, tile + j * elem_size, num_cols);
          }
        }
      }
    });
  }
  return result;
}

}  // namespace torchspark

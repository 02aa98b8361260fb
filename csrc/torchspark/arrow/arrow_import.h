// Arrow -> tensor import.
//
// ImportedTable holds what one import produced (a schema and its chunks) and
// hands out Columns: non-owning views of one field across the chunks, each
// chunk carrying a shared_ptr to its ArrayOwner. `to_tensor` turns a Column
// into a tensor:
//   * zero-copy when the layout allows (a primitive column, or uniform-length
//     list / large_list / fixed_size_list nesting over a primitive, with no
//     nulls, element-aligned, one chunk): the tensor is a view of the Arrow
//     buffer and its deleter keeps the chunk's owner alive;
//   * otherwise one copy (bit-packed booleans, nulls under "fill"/"mask",
//     misaligned buffers, a dtype cast, several chunks).
// Every column is structurally validated before any value is read.
//
// Thread safety: all functions are reentrant; a Column may be converted from
// several threads at once. Nothing here touches Python.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Scalar.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torchspark/arrow/arrow_owner.h"

namespace torchspark {

enum class NullPolicy {
  kError,  // a null raises NullValueError naming the column, the null count and the first row
  kFill,   // nulls become `fill`
  kMask,   // nulls become `fill` and a bool mask (true = valid) is returned beside the values
};
// "error" | "fill" | "mask"; anything else raises ValueError listing those.
NullPolicy parse_null_policy(std::string_view name);

enum class DictionaryPolicy {
  kIndices,  // a dictionary-encoded column gives its index tensor (zero-copy)
  kDecode,   // ... or its decoded values (one gather through the dictionary)
};
// "indices" | "decode".
DictionaryPolicy parse_dictionary_policy(std::string_view name);

struct ToTensorOptions {
  // Cast to this dtype (a copy only when it differs); nullopt keeps the Arrow
  // type's own dtype. For binary columns: the element type the bytes hold.
  std::optional<c10::ScalarType> dtype;
  // What a null does; see NullPolicy. Default: raise.
  NullPolicy nulls = NullPolicy::kError;
  // The value written at null slots under kFill and kMask.
  c10::Scalar fill = 0;
  // What a dictionary-encoded column gives. Default: its indices.
  DictionaryPolicy dictionary = DictionaryPolicy::kIndices;
  // Binary columns: the shape of one row; nullopt = [row bytes / itemsize].
  std::optional<std::vector<int64_t>> shape;
};

struct ColumnTensor {
  at::Tensor values;
  at::Tensor mask;  // defined only under NullPolicy::kMask; same shape as values
};

// One chunk of a column: rows [start, start + length) of `array` (absolute
// indices into its buffers, the array's own offset included).
struct ColumnChunk {
  const ArrowSchema* schema = nullptr;
  const ArrowArray* array = nullptr;
  int64_t start = 0;
  int64_t length = 0;
  int64_t row_base = 0;  // the column row of this chunk's first row
  ChunkPtr owner;        // keeps `array` alive
};

struct Column {
  std::string label;  // for messages: column 'x'
  const ArrowSchema* schema = nullptr;
  std::vector<ColumnChunk> chunks;
  int64_t length = 0;
};

class ImportedTable {
 public:
  // `label` names the whole import in messages when its schema has no name.
  ImportedTable(ImportedChunks imported, std::string label);

  // A struct (a record batch or a table) whose fields are the columns.
  bool is_batch() const { return is_batch_; }
  int64_t num_rows() const { return num_rows_; }
  int64_t num_chunks() const { return static_cast<int64_t>(imported_.chunks.size()); }
  std::vector<std::string> column_names() const;

  // A batch's column by name; raises ValueError listing the names.
  Column column(const std::string& name) const;
  // The named columns of a batch, in that order (nullopt: all). A single
  // array is not a batch: raises UnsupportedTypeError naming `caller`.
  std::vector<Column> select(const std::optional<std::vector<std::string>>& names,
                             const char* caller) const;
  // The import itself as one column (a plain array or chunked array).
  Column as_column() const;

 private:
  Column make_column(int64_t child, const std::string& label) const;

  ImportedChunks imported_;
  std::string label_;
  bool is_batch_ = false;
  int64_t num_rows_ = 0;
};

ColumnTensor to_tensor(const Column& column, const ToTensorOptions& options);

}  // namespace torchspark

#include "torchspark/arrow/arrow_import.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <functional>
#include <numeric>
#include <utility>

#include "torchspark/arrow/arrow_type.h"
#include "torchspark/errors.h"
#include "torchspark/kernels/convert.h"
#include "torchspark/kernels/host_memory.h"

namespace torchspark {

NullPolicy parse_null_policy(std::string_view name) {
  if (name == "error") return NullPolicy::kError;
  if (name == "fill") return NullPolicy::kFill;
  if (name == "mask") return NullPolicy::kMask;
  TORCH_CHECK_VALUE(false, "nulls: expected one of 'error', 'fill', 'mask', got '", name, "'");
  return NullPolicy::kError;
}

DictionaryPolicy parse_dictionary_policy(std::string_view name) {
  if (name == "indices") return DictionaryPolicy::kIndices;
  if (name == "decode") return DictionaryPolicy::kDecode;
  TORCH_CHECK_VALUE(false, "dictionary: expected one of 'indices', 'decode', got '", name, "'");
  return DictionaryPolicy::kIndices;
}

// ---------------------------------------------------------------------------
// ImportedTable

namespace {

bool is_struct_schema(const ArrowSchema& schema) {
  return schema.format != nullptr && std::string_view(schema.format) == "+s" &&
         schema.dictionary == nullptr;
}

}  // namespace

ImportedTable::ImportedTable(ImportedChunks imported, std::string label)
    : imported_(std::move(imported)), label_(std::move(label)) {
  const ArrowSchema& schema = imported_.schema->get();
  validate_schema(schema, label_);
  is_batch_ = is_struct_schema(schema);
  for (const ChunkPtr& chunk : imported_.chunks) {
    const ArrowArray& array = chunk->array();
    if (is_batch_) {
      validate_struct_shallow(schema, array, label_);
      TS_CHECK_ARROW(count_nulls(array, array.offset, array.length) == 0, label_,
                     ": a record batch's rows cannot be null, got a struct array with ",
                     count_nulls(array, array.offset, array.length), " null rows");
    }
    TS_CHECK_ARROW(array.length >= 0, label_, ": length must be >= 0, got ", array.length);
    num_rows_ += array.length;
  }
}

std::vector<std::string> ImportedTable::column_names() const {
  std::vector<std::string> names;
  if (!is_batch_) {
    return names;
  }
  const ArrowSchema& schema = imported_.schema->get();
  for (int64_t i = 0; i < schema.n_children; ++i) {
    const char* name = schema.children[i]->name;
    names.emplace_back(name ? name : "");
  }
  return names;
}

Column ImportedTable::column(const std::string& name) const {
  TS_CHECK_SUPPORTED(is_batch_, label_, ": expected a record batch or table to select column '",
                     name, "' from, got a single ", describe_format(imported_.schema->get().format),
                     " array");
  // Compared in place: selecting F columns is F scans of the names, with no
  // strings built (64 kept columns: 1.2 us each when every lookup built the list).
  const ArrowSchema& schema = imported_.schema->get();
  int64_t found = -1;
  int64_t matches = 0;
  for (int64_t i = 0; i < schema.n_children; ++i) {
    const char* child = schema.children[i]->name;
    if (name == (child ? child : "")) {
      if (found < 0) found = i;
      ++matches;
    }
  }
  if (found < 0) {
    std::string available;
    for (const auto& n : column_names()) {
      available += (available.empty() ? "'" : ", '") + n + "'";
    }
    TORCH_CHECK_VALUE(false, "column '", name, "' not found; the batch has columns [", available,
                      "]");
  }
  TORCH_CHECK_VALUE(matches == 1, "column '", name,
                    "' is ambiguous: the batch has several columns with that name");
  return make_column(found, "column '" + name + "'");
}

std::vector<Column> ImportedTable::select(const std::optional<std::vector<std::string>>& names,
                                          const char* caller) const {
  TS_CHECK_SUPPORTED(is_batch_, caller, ": expected a record batch or table, got a single ",
                     describe_format(imported_.schema->get().format),
                     " array; use to_tensor for one column");
  std::vector<Column> columns;
  for (const std::string& name : names ? *names : column_names()) {
    columns.push_back(column(name));
  }
  return columns;
}

Column ImportedTable::as_column() const {
  if (is_batch_) {
    std::string available;
    for (const auto& n : column_names()) {
      available += (available.empty() ? "'" : ", '") + n + "'";
    }
    TS_CHECK_SUPPORTED(false, label_,
                       ": expected a single column (an Array or ChunkedArray), got a record "
                       "batch with columns [",
                       available, "]; select columns with to_tensors() or gather()");
  }
  return make_column(-1, field_label(imported_.schema->get(), label_));
}

Column ImportedTable::make_column(int64_t child, const std::string& label) const {
  Column column;
  column.label = label;
  const ArrowSchema& schema = imported_.schema->get();
  column.schema = child < 0 ? &schema : schema.children[child];
  int64_t row = 0;
  for (const ChunkPtr& owner : imported_.chunks) {
    const ArrowArray& parent = owner->array();
    ColumnChunk chunk;
    chunk.schema = column.schema;
    chunk.owner = owner;
    chunk.row_base = row;
    chunk.length = parent.length;
    if (child < 0) {
      chunk.array = &parent;
      chunk.start = parent.offset;
    } else {
      // A struct's offset applies to its children's logical rows.
      chunk.array = parent.children[child];
      chunk.start = chunk.array->offset + parent.offset;
    }
    column.chunks.push_back(std::move(chunk));
    row += parent.length;
  }
  column.length = row;
  return column;
}

// ---------------------------------------------------------------------------
// Conversion

namespace {

// One list-like level of a nested column, outermost first.
struct Level {
  const ArrowArray* array;
  TypeKind kind;
  int64_t fixed_size;
};

// The nesting of a column: list levels over a primitive or bool leaf.
struct Plan {
  std::vector<Level> levels;
  const ArrowArray* leaf = nullptr;
  c10::ScalarType storage = c10::ScalarType::Undefined;  // Bool = bit-packed
};

bool is_list_kind(TypeKind kind) {
  return kind == TypeKind::kList || kind == TypeKind::kLargeList ||
         kind == TypeKind::kFixedSizeList;
}

Plan make_plan(const ArrowSchema& schema, const ArrowArray& array, const std::string& what) {
  Plan plan;
  const ArrowSchema* s = &schema;
  const ArrowArray* a = &array;
  std::string path = what;
  for (;;) {
    ArrowType type = parse_type(*s, path);
    if (is_list_kind(type.kind) && !type.dictionary_encoded) {
      plan.levels.push_back({a, type.kind, type.fixed_size});
      s = s->children[0];
      a = a->children[0];
      path = what + " (list values)";
      continue;
    }
    // A dictionary-encoded column is planned as its indices (decoded by the caller).
    TS_CHECK_SUPPORTED((type.kind == TypeKind::kPrimitive || type.kind == TypeKind::kBool) &&
                           (!type.dictionary_encoded || plan.levels.empty()),
                       what, ": list values of Arrow type ",
                       type.dictionary_encoded ? "dictionary" : describe_format(s->format),
                       " are not supported; expected numbers or bools");
    plan.leaf = a;
    plan.storage = type.dtype;
    return plan;
  }
}

// The child range of row `i` (absolute) of a list-like level.
std::pair<int64_t, int64_t> child_range(const Level& level, int64_t i) {
  return list_child_range(*level.array, level.kind, level.fixed_size, i);
}

[[noreturn]] void ragged_error(const std::string& what, size_t level, int64_t row, int64_t expected,
                               int64_t got) {
  TORCH_CHECK_VALUE(false, what, ": ", level == 0 ? "lists" : "inner lists",
                    " must all have the same length to become a tensor; expected ", expected,
                    " values (the first row's length), got ", got, " in row ", row,
                    level == 0 ? " (use torchspark.pad for ragged lists)" : "");
  std::abort();  // unreachable
}

// Fast path: if no level has a null in range, follows the (uniform) child
// ranges down to the leaf. Returns false to fall back to the copy path.
bool contiguous_leaf(const Plan& plan, const ColumnChunk& chunk, const std::string& what,
                     std::vector<int64_t>& dims, int64_t& leaf_start) {
  int64_t start = chunk.start;
  int64_t count = chunk.length;
  int64_t rows_per_top = 1;  // rows of this level in one top-level row
  dims.clear();
  for (size_t k = 0; k < plan.levels.size(); ++k) {
    const Level& level = plan.levels[k];
    if (range_has_nulls(*level.array, start, count)) {
      return false;
    }
    int64_t d = level.fixed_size;
    int64_t child_start = 0;
    if (level.kind == TypeKind::kFixedSizeList) {
      child_start = level.array->children[0]->offset + start * d;
    } else {
      auto [first_begin, first_len] =
          count > 0 ? child_range(level, start) : std::pair<int64_t, int64_t>{0, 0};
      d = first_len;
      child_start = first_begin;
      for (int64_t r = 1; r < count; ++r) {
        int64_t len = child_range(level, start + r).second;
        if (len != d) {
          ragged_error(what, k, chunk.row_base + r / rows_per_top, d, len);
        }
      }
    }
    dims.push_back(d);
    start = child_start;
    count = count * d;
    rows_per_top *= d;
  }
  if (range_has_nulls(*plan.leaf, start, count)) {
    return false;
  }
  leaf_start = start;
  return true;
}

at::Tensor view_of(const void* data, at::IntArrayRef sizes, c10::ScalarType dtype,
                   const ChunkPtr& owner) {
  // The deleter owns a reference to the chunk: the Arrow buffers live as long
  // as any tensor (or view of a view) of them.
  return at::from_blob(
      const_cast<void*>(data), sizes, [keep = owner](void*) mutable { keep.reset(); },
      at::TensorOptions().dtype(dtype));
}

// What converting one chunk gives. Under NullPolicy::kError a converter does
// not throw on nulls: it counts them (and leaves `tensor` empty) so that the
// error can give the column's total and first null row across all chunks.
struct ChunkResult {
  ColumnTensor tensor;
  int64_t null_count = 0;
  int64_t first_null_row = -1;
  bool shape_known = true;  // false: a list level had only null rows (its length is a guess, 0)
};

// The copy path: walks rows level by level, so nulls at any level and any
// alignment are handled. Pass one finds the shape (and null errors), pass two
// writes.
class Materializer {
 public:
  // `dims_hint` (may be null) gives the list lengths when every row of a level
  // is null, e.g. from another chunk of the same column.
  Materializer(const Plan& plan, const ColumnChunk& chunk, const std::string& what,
               const ToTensorOptions& options, const std::vector<int64_t>* dims_hint)
      : plan_(plan), chunk_(chunk), what_(what), options_(options), dims_(plan.levels.size(), -1) {
    for (size_t k = 0; k < plan.levels.size(); ++k) {
      if (plan.levels[k].kind == TypeKind::kFixedSizeList) {
        dims_[k] = plan.levels[k].fixed_size;
      } else if (dims_hint != nullptr && k < dims_hint->size()) {
        dims_[k] = (*dims_hint)[k];
      }
    }
  }

  ChunkResult run(c10::ScalarType out_dtype) {
    ChunkResult result;
    if (plan_.levels.empty()) {
      if (options_.nulls == NullPolicy::kError) {
        // A primitive column: count its nulls in one pass over the bitmap.
        null_count_ = count_nulls(*plan_.leaf, chunk_.start, chunk_.length);
        const int64_t first = first_null(*plan_.leaf, chunk_.start, chunk_.length);
        first_null_row_ = first < 0 ? -1 : chunk_.row_base + (first - chunk_.start);
      }
    } else {
      for (int64_t r = 0; r < chunk_.length; ++r) {
        probe(0, chunk_.start + r, chunk_.row_base + r);
      }
    }
    if (null_count_ > 0) {  // only counted under kError: the caller raises
      result.null_count = null_count_;
      result.first_null_row = first_null_row_;
      return result;
    }
    if (options_.nulls != NullPolicy::kError) {
      check_fill(options_.fill, out_dtype, what_);
    }

    std::vector<int64_t> sizes{chunk_.length};
    for (int64_t& d : dims_) {
      if (d < 0) {
        result.shape_known = false;
        d = 0;  // every row of this level is null: its length is unknown, use 0
      }
      sizes.push_back(d);
    }
    strides_.assign(dims_.size() + 1, 1);
    for (size_t k = dims_.size(); k-- > 0;) {
      strides_[k] = strides_[k + 1] * dims_[k];
    }

    ColumnTensor& tensor = result.tensor;
    tensor.values = empty_host(sizes, out_dtype);
    if (options_.nulls == NullPolicy::kMask) {
      tensor.mask = at::empty(sizes, at::TensorOptions().dtype(at::kBool));
      mask_ = tensor.mask.data_ptr<bool>();
    }
    out_ = static_cast<char*>(tensor.values.data_ptr());
    elem_size_ = static_cast<int64_t>(c10::elementSize(out_dtype));
    convert_ = convert_fn(plan_.storage, out_dtype);
    fill_ = fill_fn(out_dtype);
    TS_CHECK_SUPPORTED(convert_ != nullptr && fill_ != nullptr, what_, ": cannot convert ",
                       c10::toString(plan_.storage), " values to ", c10::toString(out_dtype));
    write_rows(0, chunk_.start, chunk_.length, 0);
    return result;
  }

 private:
  void note_null(int64_t top_row) {
    if (null_count_++ == 0) {
      first_null_row_ = top_row;
    }
  }

  void probe(size_t k, int64_t i, int64_t top_row) {
    const bool error_on_null = options_.nulls == NullPolicy::kError;
    if (k == plan_.levels.size()) {
      return;  // the leaf is checked by its parent, a range at a time
    }
    const Level& level = plan_.levels[k];
    if (!is_valid(*level.array, i)) {
      if (error_on_null) note_null(top_row);
      return;
    }
    auto [begin, len] = child_range(level, i);
    if (dims_[k] < 0) {
      dims_[k] = len;
    } else if (len != dims_[k]) {
      ragged_error(what_, k, top_row, dims_[k], len);
    }
    if (k + 1 == plan_.levels.size()) {
      if (error_on_null) {
        int64_t nulls = count_nulls(*plan_.leaf, begin, len);
        for (int64_t n = 0; n < nulls; ++n) note_null(top_row);
      }
      return;
    }
    for (int64_t j = 0; j < len; ++j) {
      probe(k + 1, begin + j, top_row);
    }
  }

  void write_rows(size_t k, int64_t start, int64_t count, int64_t out_index) {
    if (k == plan_.levels.size()) {
      convert_valid_runs(*plan_.leaf, start, count, convert_, fill_, options_.fill,
                         out_ + out_index * elem_size_, elem_size_, 1,
                         mask_ ? mask_ + out_index : nullptr, 1);
      return;
    }
    const Level& level = plan_.levels[k];
    const int64_t row_size = strides_[k];
    for (int64_t r = 0; r < count; ++r) {
      const int64_t o = out_index + r * row_size;
      if (!is_valid(*level.array, start + r)) {
        fill_(out_ + o * elem_size_, options_.fill, row_size, 1);
        if (mask_) std::fill_n(mask_ + o, row_size, false);
        continue;
      }
      auto [begin, len] = child_range(level, start + r);
      write_rows(k + 1, begin, len, o);
    }
  }

  const Plan& plan_;
  const ColumnChunk& chunk_;
  const std::string& what_;
  const ToTensorOptions& options_;
  std::vector<int64_t> dims_;
  std::vector<int64_t> strides_;
  int64_t null_count_ = 0;
  int64_t first_null_row_ = -1;
  char* out_ = nullptr;
  bool* mask_ = nullptr;
  int64_t elem_size_ = 0;
  ConvertFn convert_ = nullptr;
  FillFn fill_ = nullptr;
};

ChunkResult convert_nested(const ColumnChunk& chunk, const std::string& what,
                           const ToTensorOptions& options,
                           const std::vector<int64_t>* dims_hint = nullptr) {
  Plan plan = make_plan(*chunk.schema, *chunk.array, what);
  const c10::ScalarType out_dtype = options.dtype.value_or(plan.storage);

  std::vector<int64_t> dims;
  int64_t leaf_start = 0;
  if (plan.storage != c10::ScalarType::Bool &&
      contiguous_leaf(plan, chunk, what, dims, leaf_start)) {
    const int64_t itemsize = static_cast<int64_t>(c10::elementSize(plan.storage));
    const char* data = static_cast<const char*>(plan.leaf->buffers[1]);
    std::vector<int64_t> sizes{chunk.length};
    sizes.insert(sizes.end(), dims.begin(), dims.end());
    int64_t numel = std::accumulate(sizes.begin(), sizes.end(), int64_t{1}, std::multiplies<>());
    const char* first = numel > 0 ? data + leaf_start * itemsize : nullptr;
    if (numel == 0 || reinterpret_cast<uintptr_t>(first) % itemsize == 0) {
      ChunkResult result;
      ColumnTensor& tensor = result.tensor;
      tensor.values = numel == 0 ? at::empty(sizes, at::TensorOptions().dtype(plan.storage))
                                 : view_of(first, sizes, plan.storage, chunk.owner);
      if (out_dtype != plan.storage) {
        tensor.values = tensor.values.to(out_dtype);
      }
      if (options.nulls == NullPolicy::kMask) {
        tensor.mask = at::ones(sizes, at::TensorOptions().dtype(at::kBool));
      }
      return result;
    }
    // Misaligned: fall through to the aligned copy.
  }
  return Materializer(plan, chunk, what, options, dims_hint).run(out_dtype);
}

// Binary / fixed_size_binary cells that hold raw tensor bytes.
ChunkResult convert_binary(const ColumnChunk& chunk, const ArrowType& type, const std::string& what,
                           const ToTensorOptions& options) {
  const ArrowArray& array = *chunk.array;
  const c10::ScalarType dtype = options.dtype.value_or(at::kByte);
  TS_CHECK_SUPPORTED(is_supported_dtype(dtype), what, ": binary cells cannot hold ",
                     c10::toString(dtype));
  const int64_t itemsize = static_cast<int64_t>(c10::elementSize(dtype));

  // Row byte width: fixed, or the first valid row's length (all must match).
  auto row_range = [&](int64_t i) -> std::pair<int64_t, int64_t> {
    if (type.kind == TypeKind::kFixedSizeBinary) {
      return {i * type.fixed_size, type.fixed_size};
    }
    return offsets_range(array.buffers[1], type.kind == TypeKind::kLargeBinary, i);
  };
  const char* bytes =
      static_cast<const char*>(array.buffers[type.kind == TypeKind::kFixedSizeBinary ? 1 : 2]);

  int64_t width = type.kind == TypeKind::kFixedSizeBinary ? type.fixed_size : -1;
  int64_t nulls = 0;
  int64_t first_null_row = -1;
  for (int64_t r = 0; r < chunk.length; ++r) {
    const int64_t i = chunk.start + r;
    if (!is_valid(array, i)) {
      if (nulls++ == 0) first_null_row = chunk.row_base + r;
      continue;
    }
    int64_t len = row_range(i).second;
    if (width < 0) {
      width = len;
    } else if (len != width) {
      ragged_error(what, 0, chunk.row_base + r, width, len);
    }
    if (type.kind == TypeKind::kFixedSizeBinary) {
      break;  // every row has the fixed width
    }
  }
  if (type.kind == TypeKind::kFixedSizeBinary) {
    nulls = count_nulls(array, chunk.start, chunk.length);
    int64_t first = first_null(array, chunk.start, chunk.length);
    first_null_row = first < 0 ? -1 : chunk.row_base + (first - chunk.start);
  }
  if (nulls > 0 && options.nulls == NullPolicy::kError) {
    ChunkResult counted;
    counted.null_count = nulls;
    counted.first_null_row = first_null_row;
    return counted;
  }

  std::vector<int64_t> row_shape;
  if (options.shape) {
    row_shape = *options.shape;
  } else {
    TS_CHECK_SUPPORTED(width < 0 || width % itemsize == 0, what, ": binary rows of ", width,
                       " bytes do not hold whole ", c10::toString(dtype), " elements (", itemsize,
                       " bytes each)");
    row_shape = {width < 0 ? 0 : width / itemsize};
  }
  int64_t row_elems = 1;
  for (int64_t d : row_shape) {
    TORCH_CHECK_VALUE(d >= 0, what, ": shape dimensions must be >= 0, got ", d);
    row_elems *= d;
  }
  TORCH_CHECK_VALUE(width < 0 || width == row_elems * itemsize, what, ": binary rows hold ", width,
                    " bytes but shape ", c10::IntArrayRef(row_shape), " of ", c10::toString(dtype),
                    " needs ", row_elems * itemsize, " bytes");
  const int64_t row_bytes = row_elems * itemsize;

  std::vector<int64_t> sizes{chunk.length};
  sizes.insert(sizes.end(), row_shape.begin(), row_shape.end());

  // Zero-copy: no nulls, rows back to back, element-aligned.
  if (nulls == 0 && chunk.length > 0 && row_bytes > 0) {
    const int64_t base = row_range(chunk.start).first;
    bool contiguous = type.kind == TypeKind::kFixedSizeBinary;
    if (!contiguous) {
      contiguous = true;
      for (int64_t r = 1; r < chunk.length && contiguous; ++r) {
        contiguous = row_range(chunk.start + r).first == base + r * row_bytes;
      }
    }
    const char* first = bytes + base;
    if (contiguous && reinterpret_cast<uintptr_t>(first) % itemsize == 0) {
      ChunkResult result;
      result.tensor.values = view_of(first, sizes, dtype, chunk.owner);
      if (options.nulls == NullPolicy::kMask) {
        result.tensor.mask = at::ones(sizes, at::TensorOptions().dtype(at::kBool));
      }
      return result;
    }
  }

  if (nulls > 0) {
    check_fill(options.fill, dtype, what);
  }
  ChunkResult chunk_result;
  ColumnTensor& result = chunk_result.tensor;
  result.values = at::empty(sizes, at::TensorOptions().dtype(dtype));
  if (options.nulls == NullPolicy::kMask) {
    result.mask = at::empty(sizes, at::TensorOptions().dtype(at::kBool));
  }
  FillFn fill = fill_fn(dtype);
  char* out = static_cast<char*>(result.values.data_ptr());
  for (int64_t r = 0; r < chunk.length; ++r) {
    const int64_t i = chunk.start + r;
    const bool valid = is_valid(array, i);
    if (valid) {
      if (row_bytes > 0) std::memcpy(out + r * row_bytes, bytes + row_range(i).first, row_bytes);
    } else {
      fill(out + r * row_bytes, options.fill, row_elems, 1);
    }
    if (result.mask.defined()) {
      std::fill_n(result.mask.data_ptr<bool>() + r * row_elems, row_elems, valid);
    }
  }
  return chunk_result;
}

ChunkResult convert_chunk(const ColumnChunk& chunk, const std::string& what,
                          const ToTensorOptions& options, const std::vector<int64_t>* dims_hint);

// Dictionary-encoded column: its indices (zero-copy), or its values decoded
// through the dictionary. A decoded row is null when its index is null or
// points at a null dictionary value; unused dictionary nulls do not count.
ChunkResult convert_dictionary(const ColumnChunk& chunk, const std::string& what,
                               const ToTensorOptions& options) {
  if (options.dictionary == DictionaryPolicy::kIndices) {
    return convert_nested(chunk, what, options);
  }
  // Both sides as (values, mask) with zeros under nulls; the policy applies to the result.
  ToTensorOptions masked;
  masked.nulls = NullPolicy::kMask;
  ColumnTensor indices = convert_nested(chunk, what, masked).tensor;

  const ArrowArray& dict = *chunk.array->dictionary;
  const std::string dict_what = what + " (dictionary)";
  validate(*chunk.schema->dictionary, dict, dict_what);
  ColumnChunk dict_chunk{chunk.schema->dictionary, &dict, dict.offset, dict.length, 0, chunk.owner};
  ToTensorOptions value_options = options;
  value_options.nulls = NullPolicy::kMask;
  value_options.fill = 0;
  ColumnTensor values = convert_chunk(dict_chunk, dict_what, value_options, nullptr).tensor;

  at::Tensor index = indices.values.to(at::kLong);  // 0 under null indices
  at::Tensor out_of_range = index.lt(0).logical_or(index.ge(dict.length)).logical_and(indices.mask);
  if (out_of_range.any().item<bool>()) {
    const int64_t row = out_of_range.nonzero()[0][0].item<int64_t>();
    TORCH_CHECK_VALUE(false, what, ": dictionary index ", index[row].item<int64_t>(), " in row ",
                      chunk.row_base + row, " is out of range for a dictionary of ", dict.length,
                      " values");
  }
  if (values.values.size(0) == 0) {
    // An empty dictionary: every index is null. Give the null slots a row to point at.
    std::vector<int64_t> one_row = values.values.sizes().vec();
    one_row[0] = 1;
    values.values = at::zeros(one_row, values.values.options());
    values.mask = at::zeros(one_row, values.mask.options());
  }
  ChunkResult result;
  result.tensor.values = values.values.index_select(0, index);
  at::Tensor row_valid = indices.mask;
  for (int64_t d = 1; d < result.tensor.values.dim(); ++d) {
    row_valid = row_valid.unsqueeze(-1);
  }
  at::Tensor valid =
      values.mask.index_select(0, index).logical_and(row_valid.expand_as(result.tensor.values));

  const int64_t nulls = valid.numel() - valid.sum().item<int64_t>();
  if (nulls > 0 && options.nulls == NullPolicy::kError) {
    result.tensor = {};
    result.null_count = nulls;
    at::Tensor null_rows = valid.reshape({valid.size(0), -1}).all(1).logical_not();
    result.first_null_row = chunk.row_base + null_rows.nonzero()[0][0].item<int64_t>();
    return result;
  }
  if (nulls > 0) {
    check_fill(options.fill, result.tensor.values.scalar_type(), what);
    result.tensor.values.masked_fill_(valid.logical_not(), options.fill);
  }
  if (options.nulls == NullPolicy::kMask) {
    result.tensor.mask = valid.contiguous();
  }
  return result;
}

bool is_binary_kind(TypeKind kind) {
  return kind == TypeKind::kBinary || kind == TypeKind::kLargeBinary ||
         kind == TypeKind::kFixedSizeBinary;
}

ChunkResult convert_chunk(const ColumnChunk& chunk, const std::string& what,
                          const ToTensorOptions& options, const std::vector<int64_t>* dims_hint) {
  validate(*chunk.schema, *chunk.array, what, /*with_dictionary=*/false);
  ArrowType type = parse_type(*chunk.schema, what);
  TORCH_CHECK_VALUE(!options.shape || (is_binary_kind(type.kind) && !type.dictionary_encoded), what,
                    ": shape= applies to binary and fixed_size_binary columns only, got ",
                    describe_format(chunk.schema->format));
  if (type.dictionary_encoded) {
    return convert_dictionary(chunk, what, options);
  }
  if (is_binary_kind(type.kind)) {
    return convert_binary(chunk, type, what, options);
  }
  TS_CHECK_SUPPORTED(type.kind != TypeKind::kStruct, what,
                     ": struct columns are not supported; select their fields as columns");
  return convert_nested(chunk, what, options, dims_hint);
}

// The shape and dtype of a column with no chunks at all (an empty stream).
ColumnTensor empty_column(const Column& column, const ToTensorOptions& options) {
  std::vector<int64_t> sizes{0};
  const ArrowSchema* s = column.schema;
  c10::ScalarType dtype = at::kByte;
  for (int depth = 0; depth < 64; ++depth) {
    ArrowType type = parse_type(*s, column.label);
    if (type.kind == TypeKind::kPrimitive || type.kind == TypeKind::kBool) {
      dtype = type.dtype;
      break;
    }
    if (type.kind == TypeKind::kFixedSizeBinary || type.kind == TypeKind::kBinary ||
        type.kind == TypeKind::kLargeBinary) {
      dtype = options.dtype.value_or(at::kByte);
      if (options.shape) {
        sizes.insert(sizes.end(), options.shape->begin(), options.shape->end());
      } else {
        int64_t itemsize = static_cast<int64_t>(c10::elementSize(dtype));
        sizes.push_back(type.kind == TypeKind::kFixedSizeBinary ? type.fixed_size / itemsize : 0);
      }
      break;
    }
    TS_CHECK_SUPPORTED(is_list_kind(type.kind), column.label, ": Arrow type ",
                       describe_format(s->format), " is not supported");
    sizes.push_back(type.kind == TypeKind::kFixedSizeList ? type.fixed_size : 0);
    s = s->children[0];
  }
  ColumnTensor result;
  result.values = at::empty(sizes, at::TensorOptions().dtype(options.dtype.value_or(dtype)));
  if (options.nulls == NullPolicy::kMask) {
    result.mask = at::empty(sizes, at::TensorOptions().dtype(at::kBool));
  }
  return result;
}

}  // namespace

ColumnTensor to_tensor(const Column& column, const ToTensorOptions& options) {
  if (options.dtype) {
    TS_CHECK_SUPPORTED(is_supported_dtype(*options.dtype), column.label, ": dtype ",
                       c10::toString(*options.dtype),
                       " is not supported; expected a real number type or bool");
    if (options.nulls != NullPolicy::kError) {
      check_fill(options.fill, *options.dtype, column.label);
    }
  }
  if (column.chunks.empty()) {
    return empty_column(column, options);
  }
  std::vector<ChunkResult> parts;
  parts.reserve(column.chunks.size());
  int64_t null_count = 0;
  int64_t first_null_row = -1;
  for (const ColumnChunk& chunk : column.chunks) {
    parts.push_back(convert_chunk(chunk, column.label, options, nullptr));
    if (parts.back().null_count > 0 && null_count == 0) {
      first_null_row = parts.back().first_null_row;
    }
    null_count += parts.back().null_count;
  }
  TS_CHECK_NOT_NULL(null_count == 0, column.label, ": ", null_count,
                    null_count == 1 ? " null value" : " null values", " (first in row ",
                    first_null_row,
                    "); pass nulls='fill' (with fill=...) to convert them, or, with to_tensor, "
                    "nulls='mask' for a validity mask");
  if (parts.size() == 1) {
    return std::move(parts[0].tensor);
  }

  // Several chunks. A chunk whose list rows were all null guessed its row
  // shape: convert it again with the shape the other chunks agree on.
  const ChunkResult* reference = nullptr;
  for (const ChunkResult& part : parts) {
    if (part.shape_known && part.tensor.values.size(0) > 0) {
      reference = &part;
      break;
    }
  }
  if (reference != nullptr) {
    std::vector<int64_t> dims = reference->tensor.values.sizes().slice(1).vec();
    for (size_t c = 0; c < parts.size(); ++c) {
      if (!parts[c].shape_known) {
        parts[c] = convert_chunk(column.chunks[c], column.label, options, &dims);
      }
    }
  }
  // Empty chunks carry no shape; the rest must agree, then one copy joins them.
  std::vector<at::Tensor> values;
  std::vector<at::Tensor> masks;
  for (size_t c = 0; c < parts.size(); ++c) {
    const ColumnTensor& part = parts[c].tensor;
    if (part.values.size(0) == 0) {
      continue;
    }
    if (!values.empty()) {
      TORCH_CHECK_VALUE(part.values.sizes().slice(1) == values[0].sizes().slice(1), column.label,
                        ": rows have shape ", values[0].sizes().slice(1),
                        " in an earlier chunk but ", part.values.sizes().slice(1), " in chunk ", c);
    }
    values.push_back(part.values);
    if (part.mask.defined()) masks.push_back(part.mask);
  }
  if (values.empty()) {
    return std::move(parts[0].tensor);
  }
  ColumnTensor result;
  // A single non-empty chunk stays a view (zero-copy); several are concatenated.
  result.values = values.size() == 1 ? values[0] : at::cat(values, 0);
  if (!masks.empty()) {
    result.mask = masks.size() == 1 ? masks[0] : at::cat(masks, 0);
  }
  return result;
}

}  // namespace torchspark

#include "torchspark/arrow/arrow_batch.h"

#include <c10/util/Exception.h>

#include <cstring>
#include <memory>

#include "torchspark/arrow/arrow_export.h"

namespace torchspark {

namespace {

// ---- schemas: deep copies, and the batch's struct schema ----

struct SchemaCopy {
  std::string format;
  std::string name;
  std::string metadata;  // the encoded key/value blob, if any
  bool has_metadata = false;
  std::vector<std::unique_ptr<ArrowSchema>> children;
  std::vector<ArrowSchema*> child_pointers;
  std::unique_ptr<ArrowSchema> dictionary;
};

// Length of an encoded metadata blob: int32 count, then per pair int32
// length + bytes for the key and the value (native endianness).
size_t metadata_length(const char* metadata) {
  auto read = [&](size_t at) {
    int32_t v;
    std::memcpy(&v, metadata + at, sizeof(v));
    return static_cast<size_t>(v);
  };
  size_t at = 0;
  const size_t pairs = read(at);
  at += 4;
  for (size_t i = 0; i < 2 * pairs; ++i) at += 4 + read(at);
  return at;
}

void release_schema_copy(ArrowSchema* schema) {
  if (schema == nullptr || schema->release == nullptr) return;
  auto* copy = static_cast<SchemaCopy*>(schema->private_data);
  for (auto& child : copy->children) {
    if (child->release != nullptr) child->release(child.get());
  }
  if (copy->dictionary && copy->dictionary->release != nullptr) {
    copy->dictionary->release(copy->dictionary.get());
  }
  delete copy;
  schema->release = nullptr;
}

// A deep copy of `source`, named `name` (nullptr: its own name).
void copy_schema(const ArrowSchema& source, const std::string* name, ArrowSchema* out) {
  auto copy = std::make_unique<SchemaCopy>();
  copy->format = source.format ? source.format : "";
  copy->name = name ? *name : (source.name ? source.name : "");
  if (source.metadata != nullptr) {
    copy->has_metadata = true;
    copy->metadata.assign(source.metadata, metadata_length(source.metadata));
  }
  for (int64_t i = 0; i < source.n_children; ++i) {
    copy->children.push_back(std::make_unique<ArrowSchema>());
    copy_schema(*source.children[i], nullptr, copy->children.back().get());
    copy->child_pointers.push_back(copy->children.back().get());
  }
  if (source.dictionary != nullptr) {
    copy->dictionary = std::make_unique<ArrowSchema>();
    copy_schema(*source.dictionary, nullptr, copy->dictionary.get());
  }
  out->format = copy->format.c_str();
  out->name = copy->name.c_str();
  out->metadata = copy->has_metadata ? copy->metadata.data() : nullptr;
  out->flags = source.flags;
  out->n_children = source.n_children;
  out->children = copy->child_pointers.empty() ? nullptr : copy->child_pointers.data();
  out->dictionary = copy->dictionary.get();
  out->release = &release_schema_copy;
  out->private_data = copy.release();
}

// ---- arrays: views of an imported array's buffers ----

struct SharedArray {
  std::shared_ptr<const void> owner;  // the imported chunk: its buffers live as long as this
  std::vector<const void*> buffers;
  std::vector<std::unique_ptr<ArrowArray>> children;
  std::vector<ArrowArray*> child_pointers;
  std::unique_ptr<ArrowArray> dictionary;
};

void release_shared_array(ArrowArray* array) {
  if (array == nullptr || array->release == nullptr) return;
  auto* shared = static_cast<SharedArray*>(array->private_data);
  for (auto& child : shared->children) {
    if (child->release != nullptr) child->release(child.get());
  }
  if (shared->dictionary && shared->dictionary->release != nullptr) {
    shared->dictionary->release(shared->dictionary.get());
  }
  delete shared;
  array->release = nullptr;
}

// `source` rows [offset, offset + length) (absolute, its own offset
// included), sharing its buffers and children; `owner` keeps them alive.
void share_array(const ArrowArray& source, int64_t offset, int64_t length,
                 const std::shared_ptr<const void>& owner, ArrowArray* out) {
  auto shared = std::make_unique<SharedArray>();
  shared->owner = owner;
  shared->buffers.assign(source.buffers, source.buffers + source.n_buffers);
  for (int64_t i = 0; i < source.n_children; ++i) {
    const ArrowArray& child = *source.children[i];
    shared->children.push_back(std::make_unique<ArrowArray>());
    share_array(child, child.offset, child.length, owner, shared->children.back().get());
    shared->child_pointers.push_back(shared->children.back().get());
  }
  if (source.dictionary != nullptr) {
    shared->dictionary = std::make_unique<ArrowArray>();
    share_array(*source.dictionary, source.dictionary->offset, source.dictionary->length, owner,
                shared->dictionary.get());
  }
  out->length = length;
  // The source's count holds for the same rows only; otherwise "unknown".
  out->null_count = offset == source.offset && length == source.length ? source.null_count : -1;
  out->offset = offset;
  out->n_buffers = source.n_buffers;
  out->n_children = source.n_children;
  out->buffers = shared->buffers.empty() ? nullptr : shared->buffers.data();
  out->children = shared->child_pointers.empty() ? nullptr : shared->child_pointers.data();
  out->dictionary = shared->dictionary.get();
  out->release = &release_shared_array;
  out->private_data = shared.release();
}

// ---- the batch: a struct of the columns ----

struct BatchSchema {
  std::vector<ArrowSchema> children;
  std::vector<ArrowSchema*> child_pointers;
};

void release_batch_schema(ArrowSchema* schema) {
  if (schema == nullptr || schema->release == nullptr) return;
  auto* batch = static_cast<BatchSchema*>(schema->private_data);
  for (ArrowSchema& child : batch->children) {
    if (child.release != nullptr) child.release(&child);
  }
  delete batch;
  schema->release = nullptr;
}

struct BatchArray {
  const void* validity = nullptr;  // a struct's one buffer: no nulls
  std::vector<ArrowArray> children;
  std::vector<ArrowArray*> child_pointers;
};

void release_batch_array(ArrowArray* array) {
  if (array == nullptr || array->release == nullptr) return;
  auto* batch = static_cast<BatchArray*>(array->private_data);
  for (ArrowArray& child : batch->children) {
    if (child.release != nullptr) child.release(&child);
  }
  delete batch;
  array->release = nullptr;
}

}  // namespace

void export_record_batch(const std::vector<OutputColumn>& columns, int64_t rows,
                         ArrowSchema* schema, ArrowArray* array) {
  for (const OutputColumn& column : columns) {
    TORCH_CHECK_VALUE(column.column != nullptr || column.tensor.defined(), "output column '",
                      column.name, "': expected an input column or a tensor, got neither");
    if (column.column != nullptr) {
      TORCH_CHECK_VALUE(column.column->chunks.size() <= 1, "output column '", column.name,
                        "': a passed-through column must be one chunk, got ",
                        column.column->chunks.size());
      TORCH_CHECK_VALUE(column.column->length == rows, "output column '", column.name, "' has ",
                        column.column->length, " rows; expected ", rows);
    } else {
      TORCH_CHECK_VALUE(column.tensor.dim() >= 1 && column.tensor.size(0) == rows,
                        "output column '", column.name, "' has shape ", column.tensor.sizes(),
                        "; expected ", rows, " rows (dim 0)");
    }
  }
  // Everything is built in owners first: a failure part-way releases what was made.
  auto batch_schema = std::make_unique<BatchSchema>();
  auto batch_array = std::make_unique<BatchArray>();
  batch_schema->children.resize(columns.size());
  batch_array->children.resize(columns.size());
  for (auto& s : batch_schema->children) s.release = nullptr;
  for (auto& a : batch_array->children) a.release = nullptr;
  ArrowSchema tmp_schema{};
  ArrowArray tmp_array{};
  tmp_schema.release = &release_batch_schema;
  tmp_schema.private_data = batch_schema.get();
  tmp_array.release = &release_batch_array;
  tmp_array.private_data = batch_array.get();
  BatchSchema* bs = batch_schema.release();
  BatchArray* ba = batch_array.release();
  try {
    for (size_t i = 0; i < columns.size(); ++i) {
      const OutputColumn& column = columns[i];
      if (column.column != nullptr) {
        TORCH_CHECK_VALUE(!column.column->chunks.empty(), "output column '", column.name,
                          "': the input column has no chunk to pass through");
        copy_schema(*column.column->schema, &column.name, &bs->children[i]);
        const ColumnChunk& chunk = column.column->chunks.front();
        share_array(*chunk.array, chunk.start, chunk.length, chunk.owner, &ba->children[i]);
      } else {
        // export_tensor's field has no name: the batch's fields are the columns'.
        ArrowSchema unnamed{};
        export_tensor(column.tensor, ExportOptions{}, &unnamed, &ba->children[i],
                      "output column '" + column.name + "'");
        copy_schema(unnamed, &column.name, &bs->children[i]);
        unnamed.release(&unnamed);
      }
      bs->child_pointers.push_back(&bs->children[i]);
      ba->child_pointers.push_back(&ba->children[i]);
    }
  } catch (...) {
    tmp_schema.release(&tmp_schema);
    tmp_array.release(&tmp_array);
    throw;
  }
  static const char kStruct[] = "+s";
  static const char kEmpty[] = "";
  *schema = ArrowSchema{};
  schema->format = kStruct;
  schema->name = kEmpty;
  schema->metadata = nullptr;
  schema->flags = 0;
  schema->n_children = static_cast<int64_t>(columns.size());
  schema->children = bs->child_pointers.empty() ? nullptr : bs->child_pointers.data();
  schema->dictionary = nullptr;
  schema->release = &release_batch_schema;
  schema->private_data = bs;
  *array = ArrowArray{};
  array->length = rows;
  array->null_count = 0;
  array->offset = 0;
  array->n_buffers = 1;
  array->n_children = static_cast<int64_t>(columns.size());
  array->buffers = &ba->validity;
  array->children = ba->child_pointers.empty() ? nullptr : ba->child_pointers.data();
  array->dictionary = nullptr;
  array->release = &release_batch_array;
  array->private_data = ba;
}

}  // namespace torchspark

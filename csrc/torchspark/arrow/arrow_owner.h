// Ownership of imported Arrow C Data Interface structs.
//
// Contract (the Arrow spec's, made explicit): a consumer takes a struct by a
// bitwise move and marks the source released (release = nullptr), so the
// producer's capsule or wrapper never releases it again. From then on exactly
// one owner calls `release`, exactly once, when the last reference goes away,
// on every path: success, error, or a consumer that stops early.
//
// Tensor views of Arrow buffers hold a shared_ptr to the ArrayOwner of the
// chunk they view (in their deleter), so the buffers outlive every view.
// Children and dictionaries are owned by their top-level struct and are
// never released on their own.
//
// Thread safety: owners are immutable after construction and may be read from
// any thread. The release callback runs on whichever thread drops the last
// reference; pyarrow's release takes the GIL, so the Python binding makes sure
// that thread is never one the GIL-holding thread waits on.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "torchspark/arrow/arrow_c_abi.h"

namespace torchspark {

class SchemaOwner {
 public:
  // Moves *source in; source->release is set to nullptr. `what` names it in errors.
  SchemaOwner(ArrowSchema* source, const std::string& what);
  ~SchemaOwner();
  SchemaOwner(const SchemaOwner&) = delete;
  SchemaOwner& operator=(const SchemaOwner&) = delete;

  const ArrowSchema& get() const { return schema_; }

 private:
  ArrowSchema schema_;
};

class ArrayOwner {
 public:
  // Moves *source in; source->release is set to nullptr. `schema` describes it.
  ArrayOwner(std::shared_ptr<const SchemaOwner> schema, ArrowArray* source,
             const std::string& what);
  ~ArrayOwner();
  ArrayOwner(const ArrayOwner&) = delete;
  ArrayOwner& operator=(const ArrayOwner&) = delete;

  const ArrowArray& array() const { return array_; }
  const ArrowSchema& schema() const { return schema_->get(); }

 private:
  std::shared_ptr<const SchemaOwner> schema_;
  ArrowArray array_;
};

using ChunkPtr = std::shared_ptr<const ArrayOwner>;

// What one import yields: a schema and the arrays (chunks) it describes.
struct ImportedChunks {
  std::shared_ptr<const SchemaOwner> schema;
  std::vector<ChunkPtr> chunks;
};

// Takes one array (from __arrow_c_array__).
ImportedChunks import_array(ArrowSchema* schema, ArrowArray* array, const std::string& what);

// Takes a stream (from __arrow_c_stream__), reads it to the end and releases it.
// A failing get_schema/get_next raises InvalidArrowError with the producer's
// message; arrays read before the failure are released.
ImportedChunks import_stream(ArrowArrayStream* stream, const std::string& what);

}  // namespace torchspark

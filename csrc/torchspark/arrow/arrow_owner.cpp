#include "torchspark/arrow/arrow_owner.h"

#include <cstring>
#include <string>
#include <utility>

#include "torchspark/errors.h"

namespace torchspark {

SchemaOwner::SchemaOwner(ArrowSchema* source, const std::string& what) {
  TS_CHECK_ARROW(source != nullptr, what, ": expected an ArrowSchema, got a null pointer");
  TS_CHECK_ARROW(source->release != nullptr, what,
                 ": expected a live ArrowSchema, got one that was already released");
  std::memcpy(&schema_, source, sizeof(ArrowSchema));
  source->release = nullptr;
}

SchemaOwner::~SchemaOwner() {
  if (schema_.release != nullptr) {
    schema_.release(&schema_);
  }
}

ArrayOwner::ArrayOwner(std::shared_ptr<const SchemaOwner> schema, ArrowArray* source,
                       const std::string& what)
    : schema_(std::move(schema)) {
  TS_CHECK_ARROW(source != nullptr, what, ": expected an ArrowArray, got a null pointer");
  TS_CHECK_ARROW(source->release != nullptr, what,
                 ": expected a live ArrowArray, got one that was already released");
  std::memcpy(&array_, source, sizeof(ArrowArray));
  source->release = nullptr;
}

ArrayOwner::~ArrayOwner() {
  if (array_.release != nullptr) {
    array_.release(&array_);
  }
}

ImportedChunks import_array(ArrowSchema* schema, ArrowArray* array, const std::string& what) {
  // Take the schema first, then the array: if the array is unusable the schema
  // is still released (by its owner) and vice versa.
  ImportedChunks out;
  out.schema = std::make_shared<const SchemaOwner>(schema, what);
  out.chunks.push_back(std::make_shared<const ArrayOwner>(out.schema, array, what));
  return out;
}

namespace {

class StreamOwner {
 public:
  StreamOwner(ArrowArrayStream* source, const std::string& what) {
    TS_CHECK_ARROW(source != nullptr, what, ": expected an ArrowArrayStream, got a null pointer");
    TS_CHECK_ARROW(source->release != nullptr, what,
                   ": expected a live ArrowArrayStream, got one that was already released");
    std::memcpy(&stream_, source, sizeof(ArrowArrayStream));
    source->release = nullptr;
  }
  ~StreamOwner() {
    if (stream_.release != nullptr) {
      stream_.release(&stream_);
    }
  }
  StreamOwner(const StreamOwner&) = delete;
  StreamOwner& operator=(const StreamOwner&) = delete;

  ArrowArrayStream* get() { return &stream_; }

  std::string last_error() {
    const char* msg = stream_.get_last_error ? stream_.get_last_error(&stream_) : nullptr;
    return msg ? std::string(msg) : std::string("(the producer gave no message)");
  }

 private:
  ArrowArrayStream stream_;
};

}  // namespace

ImportedChunks import_stream(ArrowArrayStream* source, const std::string& what) {
  StreamOwner stream(source, what);
  ImportedChunks out;

  ArrowSchema schema{};
  int rc = stream.get()->get_schema(stream.get(), &schema);
  TS_CHECK_ARROW(rc == 0, what, ": Arrow stream get_schema failed (errno ", rc,
                 "): ", stream.last_error());
  out.schema = std::make_shared<const SchemaOwner>(&schema, what);

  for (int64_t index = 0;; ++index) {
    ArrowArray array{};
    rc = stream.get()->get_next(stream.get(), &array);
    TS_CHECK_ARROW(rc == 0, what, ": Arrow stream get_next failed on chunk ", index, " (errno ", rc,
                   "): ", stream.last_error());
    if (array.release == nullptr) {
      break;  // end of stream
    }
    out.chunks.push_back(std::make_shared<const ArrayOwner>(out.schema, &array, what));
  }
  return out;
}

}  // namespace torchspark

#include "torchspark/arrow_owner.h"

#include <cstring>
#include <string>
#include <utility>

#include "torchspark/errors.h"

namespace torchspark {

SchemaOwner::SchemaOwner(ArrowSchema* source) {
  TS_CHECK_ARROW(source != nullptr, "expected an ArrowSchema, got a null pointer");
  TS_CHECK_ARROW(source->release != nullptr,
                 "expected a live ArrowSchema, got one that was already released");
  std::memcpy(&schema_, source, sizeof(ArrowSchema));
  source->release = nullptr;
}

SchemaOwner::~SchemaOwner() {
  if (schema_.release != nullptr) {
    schema_.release(&schema_);
  }
}

ArrayOwner::ArrayOwner(std::shared_ptr<const SchemaOwner> schema, ArrowArray* source)
    : schema_(std::move(schema)) {
  TS_CHECK_ARROW(source != nullptr, "expected an ArrowArray, got a null pointer");
  TS_CHECK_ARROW(source->release != nullptr,
                 "expected a live ArrowArray, got one that was already released");
  std::memcpy(&array_, source, sizeof(ArrowArray));
  source->release = nullptr;
}

ArrayOwner::~ArrayOwner() {
  if (array_.release != nullptr) {
    array_.release(&array_);
  }
}

ImportedChunks import_array(ArrowSchema* schema, ArrowArray* array) {
  // Take the schema first, then the array: if the array is unusable the schema
  // is still released (by its owner) and vice versa.
  ImportedChunks out;
  out.schema = std::make_shared<const SchemaOwner>(schema);
  out.chunks.push_back(std::make_shared<const ArrayOwner>(out.schema, array));
  return out;
}

namespace {

class StreamOwner {
 public:
  explicit StreamOwner(ArrowArrayStream* source) {
    TS_CHECK_ARROW(source != nullptr, "expected an ArrowArrayStream, got a null pointer");
    TS_CHECK_ARROW(source->release != nullptr,
                   "expected a live ArrowArrayStream, got one that was already released");
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

ImportedChunks import_stream(ArrowArrayStream* source) {
  StreamOwner stream(source);
  ImportedChunks out;

  ArrowSchema schema{};
  int rc = stream.get()->get_schema(stream.get(), &schema);
  TS_CHECK_ARROW(rc == 0, "Arrow stream: get_schema failed (errno ", rc,
                 "): ", stream.last_error());
  out.schema = std::make_shared<const SchemaOwner>(&schema);

  for (int64_t index = 0;; ++index) {
    ArrowArray array{};
    rc = stream.get()->get_next(stream.get(), &array);
    TS_CHECK_ARROW(rc == 0, "Arrow stream: get_next failed on chunk ", index, " (errno ", rc,
                   "): ", stream.last_error());
    if (array.release == nullptr) {
      break;  // end of stream
    }
    out.chunks.push_back(std::make_shared<const ArrayOwner>(out.schema, &array));
  }
  return out;
}

}  // namespace torchspark

// csrc/torchspark/arrow_owner.h: a consumer takes the Arrow structs by a
// bitwise move, marks the source released, and calls `release` exactly once on
// every path; released or null input is refused without touching the rest.
#include "torchspark/arrow/arrow_owner.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "arrow_builders.h"
#include "torchspark/errors.h"

namespace torchspark {
namespace {

using testing::import_node;
using testing::primitive;
using testing::ReleaseCount;

const std::vector<float> kValues = {1.0f, 2.0f, 3.0f};

TEST(ArrowOwner, ImportMovesAndReleasesOnceWhenTheLastOwnerDies) {
  ReleaseCount count;
  auto node = primitive("f", kValues.data(), 3);
  testing::count_releases(*node, count);
  {
    ImportedChunks chunks = import_node(*node);
    EXPECT_EQ(node->schema.release, nullptr);
    EXPECT_EQ(node->array.release, nullptr);
    ASSERT_EQ(chunks.chunks.size(), 1u);
    EXPECT_EQ(chunks.chunks[0]->array().length, 3);
    EXPECT_EQ(chunks.chunks[0]->array().buffers[1], kValues.data());
    ChunkPtr kept = chunks.chunks[0];  // also holds the schema
    chunks = ImportedChunks{};
    EXPECT_EQ(count.array, 0);
    EXPECT_EQ(count.schema, 0);
    EXPECT_EQ(std::string(kept->schema().format), "f");
  }
  EXPECT_EQ(count.array, 1);
  EXPECT_EQ(count.schema, 1);
}

TEST(ArrowOwner, ReleasedSchemaIsRefusedAndTheArrayLeftToItsProducer) {
  ReleaseCount count;
  auto node = primitive("f", kValues.data(), 3);
  testing::count_releases(*node, count);
  node->schema.release = nullptr;
  EXPECT_THROW_WITH(import_node(*node), InvalidArrowError, "input",
                    "expected a live ArrowSchema, got one that was already released");
  EXPECT_NE(node->array.release, nullptr);  // not taken
  EXPECT_EQ(count.array, 0);
  node->array.release(&node->array);
  EXPECT_EQ(count.array, 1);
}

TEST(ArrowOwner, ReleasedArrayIsRefusedAndTheSchemaReleasedOnce) {
  ReleaseCount count;
  auto node = primitive("f", kValues.data(), 3);
  testing::count_releases(*node, count);
  node->array.release = nullptr;
  EXPECT_THROW_WITH(import_node(*node), InvalidArrowError, "input",
                    "expected a live ArrowArray, got one that was already released");
  EXPECT_EQ(node->schema.release, nullptr);  // taken, then released by its owner
  EXPECT_EQ(count.schema, 1);
  EXPECT_EQ(count.array, 0);
}

TEST(ArrowOwner, NullPointersAreRefused) {
  EXPECT_THROW_WITH(import_array(nullptr, nullptr, "input"), InvalidArrowError, "input",
                    "expected an ArrowSchema, got a null pointer");
  EXPECT_THROW_WITH(import_stream(nullptr, "stream"), InvalidArrowError, "stream",
                    "expected an ArrowArrayStream, got a null pointer");
}

// A stream of `chunks` float arrays; get_next fails (EIO) at `fail_at`
// (-1: never). Counts the releases of every struct it hands out.
struct TestStream {
  std::vector<std::unique_ptr<testing::Node>> nodes;
  std::vector<ReleaseCount> counts;
  size_t next = 0;
  int64_t fail_at = -1;
  int stream_releases = 0;

  TestStream(int chunks, int64_t fail) : counts(chunks + 1), fail_at(fail) {
    for (int i = 0; i < chunks; ++i) {
      nodes.push_back(primitive("f", kValues.data(), 3));
      testing::count_releases(*nodes.back(), counts[i]);
    }
    schema_node = primitive("f", nullptr, 0);
    testing::count_releases(*schema_node, counts[chunks]);
  }
  std::unique_ptr<testing::Node> schema_node;

  static TestStream& self(ArrowArrayStream* s) {
    return *static_cast<TestStream*>(s->private_data);
  }
  static int get_schema(ArrowArrayStream* s, ArrowSchema* out) {
    *out = self(s).schema_node->schema;
    self(s).schema_node->schema.release = nullptr;
    return 0;
  }
  static int get_next(ArrowArrayStream* s, ArrowArray* out) {
    TestStream& t = self(s);
    if (static_cast<int64_t>(t.next) == t.fail_at) return 5;  // EIO
    if (t.next == t.nodes.size()) {
      out->release = nullptr;  // end of stream
      return 0;
    }
    *out = t.nodes[t.next]->array;
    t.nodes[t.next]->array.release = nullptr;
    ++t.next;
    return 0;
  }
  static const char* last_error(ArrowArrayStream*) { return "disk on fire"; }
  static void release(ArrowArrayStream* s) {
    ++self(s).stream_releases;
    s->release = nullptr;
  }
  ArrowArrayStream stream() {
    return ArrowArrayStream{get_schema, get_next, last_error, release, this};
  }
};

TEST(ArrowOwner, StreamChunksAreEachReleasedOnce) {
  TestStream producer(3, -1);
  ArrowArrayStream stream = producer.stream();
  {
    ImportedChunks chunks = import_stream(&stream, "stream");
    EXPECT_EQ(stream.release, nullptr);
    EXPECT_EQ(producer.stream_releases, 1);  // read to the end and released
    ASSERT_EQ(chunks.chunks.size(), 3u);
    for (const ReleaseCount& count : producer.counts) EXPECT_EQ(count.array, 0);
  }
  for (int i = 0; i < 3; ++i) EXPECT_EQ(producer.counts[i].array, 1) << "chunk " << i;
  EXPECT_EQ(producer.counts[3].schema, 1);
}

TEST(ArrowOwner, StreamFailingMidwayReleasesWhatItRead) {
  TestStream producer(3, 2);
  ArrowArrayStream stream = producer.stream();
  EXPECT_THROW_WITH(import_stream(&stream, "stream"), InvalidArrowError, "stream",
                    "get_next failed on chunk 2", "errno 5", "disk on fire");
  EXPECT_EQ(producer.stream_releases, 1);
  EXPECT_EQ(producer.counts[0].array, 1);
  EXPECT_EQ(producer.counts[1].array, 1);
  EXPECT_EQ(producer.counts[2].array, 0);  // never handed out
  EXPECT_EQ(producer.counts[3].schema, 1);
}

}  // namespace
}  // namespace torchspark

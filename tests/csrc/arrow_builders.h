// Test helper: Arrow C Data Interface structs built by hand over test-owned
// buffers, as a producer would hand them over, with release callbacks that
// count their calls. Test code only (never part of the product).
#pragma once

#include <c10/util/StringUtil.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "torchspark/arrow/arrow_c_abi.h"
#include "torchspark/arrow/arrow_owner.h"

namespace torchspark::testing {

// Release calls of one top-level schema/array pair. The callbacks mark the
// struct released (release = nullptr), as the Arrow spec requires.
struct ReleaseCount {
  int schema = 0;
  int array = 0;
};

inline void count_schema_release(ArrowSchema* schema) {
  ++static_cast<ReleaseCount*>(schema->private_data)->schema;
  schema->release = nullptr;
}
inline void count_array_release(ArrowArray* array) {
  ++static_cast<ReleaseCount*>(array->private_data)->array;
  array->release = nullptr;
}
// Children are released by their parent's callback, never on their own.
inline void child_schema_release(ArrowSchema* schema) {
  schema->release = nullptr;
}
inline void child_array_release(ArrowArray* array) {
  array->release = nullptr;
}

// One node (schema + array) of a hand-built Arrow value, and the storage its
// pointers point into. Held by unique_ptr: the structs point into it.
struct Node {
  // Constructed, not assigned: g++ 12 at -O2 warns (-Wrestrict, a false
  // positive: GCC bug 105651) on assigning a C string to a std::string.
  Node(std::string format_, std::string name_)
      : format(std::move(format_)), name(std::move(name_)) {}

  std::string format;
  std::string name;
  std::vector<const void*> buffers;
  std::vector<std::unique_ptr<Node>> children;
  std::vector<ArrowSchema*> schema_children;
  std::vector<ArrowArray*> array_children;
  ArrowSchema schema{};
  ArrowArray array{};

  // Points the structs at the storage (call after changing buffers/children).
  void link() {
    schema.format = format.c_str();
    schema.name = name.empty() ? nullptr : name.c_str();
    schema.n_children = static_cast<int64_t>(children.size());
    schema_children.clear();
    array_children.clear();
    for (auto& child : children) {
      schema_children.push_back(&child->schema);
      array_children.push_back(&child->array);
    }
    schema.children = schema_children.empty() ? nullptr : schema_children.data();
    array.n_buffers = static_cast<int64_t>(buffers.size());
    array.buffers = buffers.data();
    array.n_children = static_cast<int64_t>(children.size());
    array.children = array_children.empty() ? nullptr : array_children.data();
    if (schema.release == nullptr) schema.release = child_schema_release;
    if (array.release == nullptr) array.release = child_array_release;
  }
};

// A primitive column (format "i", "f", "g", ...) over `data`, no nulls.
inline std::unique_ptr<Node> primitive(const char* format, const void* data, int64_t length,
                                       std::string name = "", const uint8_t* validity = nullptr,
                                       int64_t null_count = 0) {
  auto node = std::make_unique<Node>(format, std::move(name));
  node->buffers = {validity, data};
  node->array.length = length;
  node->array.null_count = null_count;
  node->link();
  return node;
}

// list<child> ("+l", int32 offsets) of `length` rows.
inline std::unique_ptr<Node> list(const int32_t* offsets, int64_t length,
                                  std::unique_ptr<Node> child, std::string name = "") {
  auto node = std::make_unique<Node>("+l", std::move(name));
  node->buffers = {nullptr, offsets};
  node->array.length = length;
  node->children.push_back(std::move(child));
  node->link();
  return node;
}

// fixed_size_list<child>[size] ("+w:size") of `length` rows.
inline std::unique_ptr<Node> fixed_size_list(int64_t size, int64_t length,
                                             std::unique_ptr<Node> child, std::string name = "") {
  auto node = std::make_unique<Node>(c10::str("+w:", size), std::move(name));
  node->buffers = {nullptr};
  node->array.length = length;
  node->children.push_back(std::move(child));
  node->link();
  return node;
}

// A record batch ("+s") of `length` rows over `columns`.
inline std::unique_ptr<Node> batch(int64_t length, std::vector<std::unique_ptr<Node>> columns) {
  auto node = std::make_unique<Node>("+s", "");
  node->buffers = {nullptr};
  node->array.length = length;
  node->children = std::move(columns);
  node->link();
  return node;
}

// Makes `node` a top-level value whose release calls are counted in `count`.
inline void count_releases(Node& node, ReleaseCount& count) {
  node.schema.release = count_schema_release;
  node.schema.private_data = &count;
  node.array.release = count_array_release;
  node.array.private_data = &count;
}

// Imports `node` (a top-level value) as a consumer does: moves both structs in.
inline ImportedChunks import_node(Node& node) {
  return import_array(&node.schema, &node.array, "input");
}

}  // namespace torchspark::testing

// Expects `statement` to throw `error_type` with every one of the strings in
// the message (names the column, says expected vs actual).
#define EXPECT_THROW_WITH(statement, error_type, ...)                                       \
  do {                                                                                      \
    try {                                                                                   \
      statement;                                                                            \
      ADD_FAILURE() << "expected " #error_type " from: " #statement;                        \
    } catch (const error_type& e) {                                                         \
      const std::string message = e.what_without_backtrace();                               \
      for (const std::string& part : std::vector<std::string>{__VA_ARGS__}) {               \
        EXPECT_NE(message.find(part), std::string::npos)                                    \
            << "message lacks '" << part << "': " << message;                               \
      }                                                                                     \
    } catch (const std::exception& e) {                                                     \
      ADD_FAILURE() << "expected " #error_type " from: " #statement ", got another error: " \
                    << e.what();                                                            \
    }                                                                                       \
  } while (false)

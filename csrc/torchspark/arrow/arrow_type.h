// Arrow format strings, buffer layouts and structural validation.
//
// `parse_type` maps an ArrowSchema format string to what torchspark can do with
// it; `validate` checks an ArrowArray against its schema before any value is
// read (lengths, offsets, buffer and child counts, null counts, list offsets),
// so that a malformed producer gets an InvalidArrowError instead of a crash.
// Neither allocates tensors or reads data values; both are thread-safe.
#pragma once

#include <c10/core/ScalarType.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>

#include "torchspark/arrow/arrow_c_abi.h"

namespace torchspark {

enum class TypeKind {
  kPrimitive,        // fixed-width number (and temporal types without a time zone)
  kBool,             // bit-packed boolean
  kList,             // list<T>, int32 offsets
  kLargeList,        // large_list<T>, int64 offsets
  kFixedSizeList,    // fixed_size_list<T>[fixed_size]
  kBinary,           // binary, int32 offsets
  kLargeBinary,      // large_binary, int64 offsets
  kFixedSizeBinary,  // fixed_size_binary[fixed_size]
  kStruct,           // struct (a record batch's columns)
};

struct ArrowType {
  TypeKind kind = TypeKind::kPrimitive;
  // kPrimitive: the torch dtype with the same storage; kBool: at::kBool.
  c10::ScalarType dtype = c10::ScalarType::Undefined;
  // kFixedSizeList: the list size; kFixedSizeBinary: the byte width; else 0.
  int64_t fixed_size = 0;
  // The schema has a dictionary: this type is the index type.
  bool dictionary_encoded = false;
};

// Parses schema.format. Throws UnsupportedTypeError naming `what` (e.g.
// "column 'x'") and the Arrow type for anything torchspark does not convert.
ArrowType parse_type(const ArrowSchema& schema, const std::string& what);

// A readable name for a format string ("utf8", "decimal128(10, 2)", ...).
std::string describe_format(const char* format);

// Validates a schema tree's own structure (format strings present, child
// counts and pointers consistent, bounded depth), so it can be walked safely.
void validate_schema(const ArrowSchema& schema, const std::string& what);

// Validates `array` against `schema`, recursively through list children and
// (when `with_dictionary`) the dictionary. Throws InvalidArrowError naming
// `what` and the offending field on the first violation.
void validate(const ArrowSchema& schema, const ArrowArray& array, const std::string& what,
              bool with_dictionary = true);

// Validates a struct array's own fields and that each child is long enough,
// without descending into the children (columns are validated when used).
void validate_struct_shallow(const ArrowSchema& schema, const ArrowArray& array,
                             const std::string& what);

// The name of a schema field, quoted for messages: column 'x'.
std::string field_label(const ArrowSchema& schema, const std::string& fallback);

// Reads element i of a buffer of T that may not be aligned to sizeof(T)
// (Spark's buffers are 8-byte aligned; other producers can be worse).
template <typename T>
inline T load_unaligned(const void* base, int64_t i) {
  T value;
  std::memcpy(&value, static_cast<const char*>(base) + i * static_cast<int64_t>(sizeof(T)),
              sizeof(T));
  return value;
}

// [offsets[i], offsets[i + 1]) of an offsets buffer (int64 when `large`), as
// (begin, length). Row i of a binary/list array is this range of its data/child.
inline std::pair<int64_t, int64_t> offsets_range(const void* offsets, bool large, int64_t i) {
  const int64_t b =
      large ? load_unaligned<int64_t>(offsets, i) : load_unaligned<int32_t>(offsets, i);
  const int64_t e =
      large ? load_unaligned<int64_t>(offsets, i + 1) : load_unaligned<int32_t>(offsets, i + 1);
  return {b, e - b};
}

// The child elements of row i (absolute) of a list, large_list or
// fixed_size_list array, as (absolute child index, length): the child's own
// offset applied. `kind` and `fixed_size` come from the array's ArrowType.
inline std::pair<int64_t, int64_t> list_child_range(const ArrowArray& list, TypeKind kind,
                                                    int64_t fixed_size, int64_t i) {
  const int64_t child_offset = list.children[0]->offset;
  if (kind == TypeKind::kFixedSizeList) {
    return {child_offset + i * fixed_size, fixed_size};
  }
  auto [begin, length] = offsets_range(list.buffers[1], kind == TypeKind::kLargeList, i);
  return {child_offset + begin, length};
}

// ---- validity bitmaps (LSB bit order, as Arrow defines them) ----

inline bool bit_is_set(const uint8_t* bits, int64_t i) {
  return (bits[i >> 3] >> (i & 7)) & 1;
}

// Whether any of [abs_start, abs_start + count) is null. A null bitmap means no nulls.
bool range_has_nulls(const ArrowArray& array, int64_t abs_start, int64_t count);

// The first null in [abs_start, abs_start + count) as an absolute index, or -1.
int64_t first_null(const ArrowArray& array, int64_t abs_start, int64_t count);

// Number of nulls in [abs_start, abs_start + count).
int64_t count_nulls(const ArrowArray& array, int64_t abs_start, int64_t count);

inline bool is_valid(const ArrowArray& array, int64_t abs_index) {
  const auto* bits = static_cast<const uint8_t*>(array.buffers[0]);
  return array.null_count == 0 || bits == nullptr || bit_is_set(bits, abs_index);
}

}  // namespace torchspark

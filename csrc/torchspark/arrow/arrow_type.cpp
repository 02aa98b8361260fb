#include "torchspark/arrow/arrow_type.h"

#include <limits>
#include <string_view>

#include "torchspark/errors.h"

namespace torchspark {

namespace {

constexpr int kMaxDepth = 64;  // deeper nesting than any real schema; bounds recursion

bool starts_with(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

// Parses the decimal after "w:" / "+w:"; -1 when malformed.
int64_t parse_size(std::string_view digits) {
  if (digits.empty() || digits.size() > 18) {
    return -1;
  }
  int64_t value = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') {
      return -1;
    }
    value = value * 10 + (c - '0');
  }
  return value;
}

c10::ScalarType primitive_dtype(std::string_view f) {
  using c10::ScalarType;
  if (f.size() == 1) {
    switch (f[0]) {
      case 'c': return ScalarType::Char;
      case 'C': return ScalarType::Byte;
      case 's': return ScalarType::Short;
      case 'S': return ScalarType::UInt16;
      case 'i': return ScalarType::Int;
      case 'I': return ScalarType::UInt32;
      case 'l': return ScalarType::Long;
      case 'L': return ScalarType::UInt64;
      case 'e': return ScalarType::Half;
      case 'f': return ScalarType::Float;
      case 'g': return ScalarType::Double;
      default: return ScalarType::Undefined;
    }
  }
  // Temporal types are their integer storage (days, ms, us, ns since the epoch).
  if (f == "tdD" || f == "tts" || f == "ttm") {
    return ScalarType::Int;
  }
  if (f == "tdm" || f == "ttu" || f == "ttn" || f == "tDs" || f == "tDm" || f == "tDu" ||
      f == "tDn") {
    return ScalarType::Long;
  }
  // A timestamp without a time zone ("tsu:" with nothing after the colon).
  if (f.size() == 4 && starts_with(f, "ts") && f[3] == ':') {
    return ScalarType::Long;
  }
  return ScalarType::Undefined;
}

}  // namespace

std::string describe_format(const char* format) {
  if (format == nullptr) {
    return "(no format)";
  }
  std::string_view f(format);
  static const std::pair<std::string_view, std::string_view> kNames[] = {
      {"n", "null"},
      {"b", "bool"},
      {"c", "int8"},
      {"C", "uint8"},
      {"s", "int16"},
      {"S", "uint16"},
      {"i", "int32"},
      {"I", "uint32"},
      {"l", "int64"},
      {"L", "uint64"},
      {"e", "float16"},
      {"f", "float32"},
      {"g", "float64"},
      {"z", "binary"},
      {"Z", "large_binary"},
      {"vz", "binary_view"},
      {"u", "utf8 string"},
      {"U", "large_utf8 string"},
      {"vu", "string_view"},
      {"tdD", "date32"},
      {"tdm", "date64"},
      {"tts", "time32[s]"},
      {"ttm", "time32[ms]"},
      {"ttu", "time64[us]"},
      {"ttn", "time64[ns]"},
      {"tiM", "interval"},
      {"tiD", "interval"},
      {"tin", "interval"},
      {"+l", "list"},
      {"+L", "large_list"},
      {"+s", "struct"},
      {"+m", "map"},
      {"+vl", "list_view"},
      {"+vL", "large_list_view"},
      {"+r", "run_end_encoded"},
  };
  for (const auto& [code, name] : kNames) {
    if (f == code) {
      return std::string(name);
    }
  }
  if (starts_with(f, "d:")) {
    return "decimal(" + std::string(f.substr(2)) + ")";
  }
  if (starts_with(f, "w:")) {
    return "fixed_size_binary[" + std::string(f.substr(2)) + "]";
  }
  if (starts_with(f, "+w:")) {
    return "fixed_size_list[" + std::string(f.substr(3)) + "]";
  }
  if (starts_with(f, "ts")) {
    auto colon = f.find(':');
    std::string tz = colon == std::string_view::npos ? "" : std::string(f.substr(colon + 1));
    return tz.empty() ? "timestamp" : "timestamp with time zone '" + tz + "'";
  }
  if (starts_with(f, "tD")) {
    return "duration";
  }
  if (starts_with(f, "+u")) {
    return "union";
  }
  return "'" + std::string(f) + "'";
}

std::string field_label(const ArrowSchema& schema, const std::string& fallback) {
  if (schema.name != nullptr && schema.name[0] != '\0') {
    return "column '" + std::string(schema.name) + "'";
  }
  return fallback;
}

ArrowType parse_type(const ArrowSchema& schema, const std::string& what) {
  TS_CHECK_ARROW(schema.format != nullptr, what, ": the ArrowSchema has no format string");
  std::string_view f(schema.format);
  ArrowType type;

  if (schema.dictionary != nullptr) {
    type.dtype = primitive_dtype(f);
    TS_CHECK_ARROW(type.dtype != c10::ScalarType::Undefined && f.size() == 1 &&
                       c10::isIntegralType(type.dtype, /*includeBool=*/false),
                   what, ": a dictionary's index type must be an integer, got ",
                   describe_format(schema.format));
    type.dictionary_encoded = true;
    return type;
  }

  type.dtype = primitive_dtype(f);
  if (type.dtype != c10::ScalarType::Undefined) {
    return type;
  }
  if (f == "b") {
    type.kind = TypeKind::kBool;
    type.dtype = c10::ScalarType::Bool;
    return type;
  }
  if (f == "+l" || f == "+L") {
    type.kind = f == "+l" ? TypeKind::kList : TypeKind::kLargeList;
    return type;
  }
  if (f == "z" || f == "Z") {
    type.kind = f == "z" ? TypeKind::kBinary : TypeKind::kLargeBinary;
    return type;
  }
  if (f == "+s") {
    type.kind = TypeKind::kStruct;
    return type;
  }
  if (starts_with(f, "+w:") || starts_with(f, "w:")) {
    bool is_list = f[0] == '+';
    type.kind = is_list ? TypeKind::kFixedSizeList : TypeKind::kFixedSizeBinary;
    type.fixed_size = parse_size(f.substr(is_list ? 3 : 2));
    TS_CHECK_ARROW(type.fixed_size >= 0, what, ": malformed format string '", f, "'");
    return type;
  }
  TS_CHECK_SUPPORTED(false, what, ": Arrow type ", describe_format(schema.format), " (format '", f,
                     "') is not supported; expected a number, bool, date/time/timestamp "
                     "without a time zone, list, large_list, fixed_size_list, binary or "
                     "fixed_size_binary column");
  return type;  // unreachable
}

namespace {

int64_t expected_buffers(const ArrowType& type) {
  switch (type.kind) {
    case TypeKind::kPrimitive:
    case TypeKind::kBool:
    case TypeKind::kList:
    case TypeKind::kLargeList:
    case TypeKind::kFixedSizeBinary: return 2;
    case TypeKind::kFixedSizeList:
    case TypeKind::kStruct: return 1;
    case TypeKind::kBinary:
    case TypeKind::kLargeBinary: return 3;
  }
  return 0;
}

// Checks the offsets [abs_start, abs_start + count] start at >= 0, never
// decrease, and (limit >= 0) end within `limit`. Returns the last offset.
template <typename Offset>
int64_t check_offsets(const void* offsets, int64_t abs_start, int64_t count, int64_t limit,
                      const std::string& what, const char* limit_name) {
  int64_t prev = load_unaligned<Offset>(offsets, abs_start);
  TS_CHECK_ARROW(prev >= 0, what, ": offsets must be >= 0, got offsets[", abs_start, "] = ", prev);
  for (int64_t i = abs_start + 1; i <= abs_start + count; ++i) {
    int64_t next = load_unaligned<Offset>(offsets, i);
    TS_CHECK_ARROW(next >= prev, what, ": offsets must not decrease, got offsets[", i - 1,
                   "] = ", prev, " > offsets[", i, "] = ", next);
    prev = next;
  }
  TS_CHECK_ARROW(limit < 0 || prev <= limit, what, ": offsets end at ", prev, " but the ",
                 limit_name, " has only ", limit, " elements");
  return prev;
}

void validate_fields(const ArrowSchema& schema, const ArrowArray& array, const ArrowType& type,
                     const std::string& what) {
  TS_CHECK_ARROW(array.release != nullptr, what, ": the ArrowArray was already released");
  TS_CHECK_ARROW(array.length >= 0, what, ": length must be >= 0, got ", array.length);
  TS_CHECK_ARROW(array.offset >= 0, what, ": offset must be >= 0, got ", array.offset);
  TS_CHECK_ARROW(array.offset <= std::numeric_limits<int64_t>::max() - array.length, what,
                 ": offset ", array.offset, " + length ", array.length, " overflows int64");
  TS_CHECK_ARROW(array.null_count >= -1 && array.null_count <= array.length, what,
                 ": null_count must be in [-1, length ", array.length, "], got ", array.null_count);

  int64_t want_buffers = expected_buffers(type);
  TS_CHECK_ARROW(array.n_buffers == want_buffers, what, ": expected ", want_buffers,
                 " buffers for ", describe_format(schema.format), ", got ", array.n_buffers);
  TS_CHECK_ARROW(array.buffers != nullptr, what, ": the buffers pointer is null");
  TS_CHECK_ARROW(array.null_count == 0 || array.buffers[0] != nullptr || array.null_count == -1,
                 what, ": null_count is ", array.null_count, " but there is no validity bitmap");

  TS_CHECK_ARROW(schema.n_children >= 0, what, ": schema n_children must be >= 0, got ",
                 schema.n_children);
  int64_t want_children = type.kind == TypeKind::kStruct ? schema.n_children
                          : (type.kind == TypeKind::kList || type.kind == TypeKind::kLargeList ||
                             type.kind == TypeKind::kFixedSizeList)
                              ? 1
                              : 0;
  TS_CHECK_ARROW(schema.n_children == want_children, what, ": expected ", want_children,
                 " schema children for ", describe_format(schema.format), ", got ",
                 schema.n_children);
  TS_CHECK_ARROW(array.n_children == want_children, what, ": expected ", want_children,
                 " array children (as in the schema), got ", array.n_children);
  if (want_children > 0) {
    TS_CHECK_ARROW(schema.children != nullptr && array.children != nullptr, what,
                   ": children pointers are null");
    for (int64_t i = 0; i < want_children; ++i) {
      TS_CHECK_ARROW(schema.children[i] != nullptr && array.children[i] != nullptr, what,
                     ": child ", i, " is a null pointer");
    }
  }
  TS_CHECK_ARROW((schema.dictionary == nullptr) == (array.dictionary == nullptr), what,
                 schema.dictionary ? ": the schema is dictionary-encoded but the array has "
                                     "no dictionary"
                                   : ": the array has a dictionary but the schema does not");
}

void validate_node(const ArrowSchema& schema, const ArrowArray& array, const std::string& what,
                   bool with_dictionary, int depth) {
  TS_CHECK_ARROW(depth < kMaxDepth, what, ": nesting deeper than ", kMaxDepth, " levels");
  ArrowType type = parse_type(schema, what);
  validate_fields(schema, array, type, what);

  const int64_t begin = array.offset;
  const int64_t end = array.offset + array.length;
  const bool has_rows = array.length > 0;
  auto require_buffer = [&](int64_t i, const char* role) {
    TS_CHECK_ARROW(!has_rows || array.buffers[i] != nullptr, what, ": the ", role,
                   " buffer is null but length is ", array.length);
  };

  switch (type.kind) {
    case TypeKind::kPrimitive:
    case TypeKind::kBool: require_buffer(1, "data"); break;
    case TypeKind::kFixedSizeBinary:
      require_buffer(1, "data");
      TS_CHECK_ARROW(type.fixed_size > 0, what, ": fixed_size_binary width must be > 0, got ",
                     type.fixed_size);
      break;
    case TypeKind::kBinary:
    case TypeKind::kLargeBinary: {
      require_buffer(1, "offsets");
      if (has_rows) {
        int64_t last =
            type.kind == TypeKind::kBinary
                ? check_offsets<int32_t>(array.buffers[1], begin, array.length, -1, what, "data")
                : check_offsets<int64_t>(array.buffers[1], begin, array.length, -1, what, "data");
        int64_t first = type.kind == TypeKind::kBinary
                            ? load_unaligned<int32_t>(array.buffers[1], begin)
                            : load_unaligned<int64_t>(array.buffers[1], begin);
        TS_CHECK_ARROW(last == first || array.buffers[2] != nullptr, what,
                       ": the data buffer is null but offsets span ", last - first, " bytes");
      }
      break;
    }
    case TypeKind::kList:
    case TypeKind::kLargeList: {
      require_buffer(1, "offsets");
      const ArrowArray& child = *array.children[0];
      std::string child_what = what + " (list values)";
      if (has_rows) {
        if (type.kind == TypeKind::kList) {
          check_offsets<int32_t>(array.buffers[1], begin, array.length, child.length, child_what,
                                 "child array");
        } else {
          check_offsets<int64_t>(array.buffers[1], begin, array.length, child.length, child_what,
                                 "child array");
        }
      }
      validate_node(*schema.children[0], child, child_what, with_dictionary, depth + 1);
      break;
    }
    case TypeKind::kFixedSizeList: {
      const ArrowArray& child = *array.children[0];
      std::string child_what = what + " (list values)";
      int64_t needed = 0;
      TS_CHECK_ARROW(!__builtin_mul_overflow(end, type.fixed_size, &needed), what,
                     ": (offset + length) * list size overflows int64");
      TS_CHECK_ARROW(child.length >= needed, child_what, ": a fixed_size_list[", type.fixed_size,
                     "] of offset ", begin, " and length ", array.length, " needs ", needed,
                     " child elements, got ", child.length);
      validate_node(*schema.children[0], child, child_what, with_dictionary, depth + 1);
      break;
    }
    case TypeKind::kStruct:
      validate_struct_shallow(schema, array, what);
      for (int64_t i = 0; i < array.n_children; ++i) {
        validate_node(*schema.children[i], *array.children[i],
                      field_label(*schema.children[i], what + " child " + std::to_string(i)),
                      with_dictionary, depth + 1);
      }
      break;
  }

  if (type.dictionary_encoded && with_dictionary) {
    validate_node(*schema.dictionary, *array.dictionary, what + " (dictionary)", true, depth + 1);
  }
}

void validate_schema_node(const ArrowSchema& schema, const std::string& what, int depth) {
  TS_CHECK_ARROW(depth < kMaxDepth, what, ": nesting deeper than ", kMaxDepth, " levels");
  TS_CHECK_ARROW(schema.release != nullptr || depth > 0, what,
                 ": the ArrowSchema was already released");
  TS_CHECK_ARROW(schema.format != nullptr, what, ": the ArrowSchema has no format string");
  TS_CHECK_ARROW(schema.n_children >= 0, what, ": schema n_children must be >= 0, got ",
                 schema.n_children);
  TS_CHECK_ARROW(schema.n_children == 0 || schema.children != nullptr, what, ": schema has ",
                 schema.n_children, " children but a null children pointer");
  const std::string_view format(schema.format);
  TS_CHECK_ARROW(!(starts_with(format, "+w:") || starts_with(format, "w:")) ||
                     parse_size(format.substr(format.find(':') + 1)) >= 0,
                 what, ": malformed format string '", format, "'");
  const bool is_list = format == "+l" || format == "+L" || starts_with(format, "+w:");
  TS_CHECK_ARROW(!is_list || schema.n_children == 1, what, ": expected 1 schema children for ",
                 describe_format(schema.format), ", got ", schema.n_children);
  for (int64_t i = 0; i < schema.n_children; ++i) {
    TS_CHECK_ARROW(schema.children[i] != nullptr, what, ": schema child ", i, " is a null pointer");
    validate_schema_node(*schema.children[i],
                         field_label(*schema.children[i], what + " child " + std::to_string(i)),
                         depth + 1);
  }
  if (schema.dictionary != nullptr) {
    validate_schema_node(*schema.dictionary, what + " (dictionary)", depth + 1);
  }
}

}  // namespace

void validate_schema(const ArrowSchema& schema, const std::string& what) {
  validate_schema_node(schema, what, 0);
}

void validate(const ArrowSchema& schema, const ArrowArray& array, const std::string& what,
              bool with_dictionary) {
  validate_node(schema, array, what, with_dictionary, 0);
}

void validate_struct_shallow(const ArrowSchema& schema, const ArrowArray& array,
                             const std::string& what) {
  ArrowType type = parse_type(schema, what);
  TS_CHECK_ARROW(type.kind == TypeKind::kStruct, what, ": expected a struct (record batch), got ",
                 describe_format(schema.format));
  validate_fields(schema, array, type, what);
  const int64_t end = array.offset + array.length;
  for (int64_t i = 0; i < array.n_children; ++i) {
    const ArrowArray& child = *array.children[i];
    const std::string label =
        field_label(*schema.children[i], what + " child " + std::to_string(i));
    TS_CHECK_ARROW(child.length >= end, label, ": has ", child.length, " rows but the batch has ",
                   end, " (column lengths differ within the batch)");
    // A column reads its rows from child.offset + array.offset, summed before
    // the child itself is validated (found by tests/fuzz/arrow_import_fuzzer).
    TS_CHECK_ARROW(child.offset <= std::numeric_limits<int64_t>::max() - end, label, ": offset ",
                   child.offset, " + the batch's offset + length ", end, " overflows int64");
  }
}

// ---- bitmaps ----

int64_t count_nulls(const ArrowArray& array, int64_t abs_start, int64_t count) {
  const auto* bits = static_cast<const uint8_t*>(array.buffers[0]);
  if (array.null_count == 0 || bits == nullptr || count <= 0) {
    return 0;
  }
  if (array.null_count > 0 && abs_start == array.offset && count == array.length) {
    return array.null_count;
  }
  int64_t valid = 0;
  int64_t i = abs_start;
  const int64_t end = abs_start + count;
  for (; i < end && (i & 7) != 0; ++i) {
    valid += bit_is_set(bits, i);
  }
  for (; i + 64 <= end; i += 64) {
    valid += __builtin_popcountll(load_unaligned<uint64_t>(bits + (i >> 3), 0));
  }
  for (; i < end; ++i) {
    valid += bit_is_set(bits, i);
  }
  return count - valid;
}

bool range_has_nulls(const ArrowArray& array, int64_t abs_start, int64_t count) {
  return count_nulls(array, abs_start, count) > 0;
}

int64_t first_null(const ArrowArray& array, int64_t abs_start, int64_t count) {
  const auto* bits = static_cast<const uint8_t*>(array.buffers[0]);
  if (array.null_count == 0 || bits == nullptr) {
    return -1;
  }
  for (int64_t i = abs_start; i < abs_start + count; ++i) {
    if (!bit_is_set(bits, i)) {
      return i;
    }
  }
  return -1;
}

}  // namespace torchspark

// libFuzzer target: Arrow C Data import (arrow_owner, arrow_type,
// arrow_import) and the conversions on what imports (to_tensor, gather, pad).
//
// Structure-aware: the fuzzer's bytes are decoded into an ArrowSchema tree and
// one or more ArrowArray trees (a single array, or a stream of chunks), with
// mutated format strings, lengths, offsets, null counts, buffer and child
// counts, buffer contents, offsets, dictionaries and nesting.
//
// The harness's own rule: a C Data array carries no buffer sizes, so the
// importer can only check offsets against lengths and lengths against each
// other. Every buffer the harness hands over is therefore exactly as large as
// the array's declared offset + length demands of its role (validity bits,
// values, offsets; a binary data buffer as large as the largest offset
// written), each in its own heap block so that ASan reports any read past it.
// Everything else (lengths against children, offsets against child lengths,
// null counts, buffer and child counts, null pointers, format strings,
// dictionary indices) is fuzzed freely: catching it is the importer's job.
// Offsets near INT64_MAX come with null buffers only.
//
// Checked beyond "no sanitizer report": every tensor a conversion returns is
// read in full (a zero-copy view past its buffer is an ASan report), and the
// importer releases each top-level struct it took exactly once and never a
// child (the ownership contract of arrow_owner.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fuzzer/FuzzedDataProvider.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "torchspark/arrow/arrow_import.h"
#include "torchspark/arrow/arrow_owner.h"
#include "torchspark/kernels/gather.h"
#include "torchspark/kernels/pad.h"

namespace {

using torchspark::Column;

// True one time in n. FuzzedDataProvider gives the minimum once the input is
// used up, so the rare branch (a mutation) sits at the maximum: a short input
// decodes to a well-formed tree.
bool rarely(FuzzedDataProvider& in, int n) {
  return in.ConsumeIntegralInRange<int>(0, n - 1) == n - 1;
}

constexpr int kMaxDepth = 4;
constexpr int64_t kMaxLength = 1 << 12;  // rows per array: keeps one input well under 1 ms
constexpr int64_t kMaxChildLength = 1 << 16;

[[noreturn]] void fail(const char* message) {
  std::fprintf(stderr, "arrow_import_fuzzer: %s\n", message);
  std::abort();
}

// How the harness lays out an array of a given format (its own reading of the
// Arrow spec, independent of arrow_type.cpp).
enum class Layout {
  kFixed,
  kBool,
  kList32,
  kList64,
  kFixedList,
  kBinary32,
  kBinary64,
  kStruct,
  kOther
};

struct FormatInfo {
  Layout layout = Layout::kOther;
  int64_t width = 0;  // kFixed: bytes per value; fixed_size_binary: bytes; kFixedList: list size
};

FormatInfo format_info(const std::string& f) {
  if (f.size() == 1) {
    switch (f[0]) {
      case 'c':
      case 'C': return {Layout::kFixed, 1};
      case 's':
      case 'S':
      case 'e': return {Layout::kFixed, 2};
      case 'i':
      case 'I':
      case 'f': return {Layout::kFixed, 4};
      case 'l':
      case 'L':
      case 'g': return {Layout::kFixed, 8};
      case 'b': return {Layout::kBool, 0};
      case 'z': return {Layout::kBinary32, 0};
      case 'Z': return {Layout::kBinary64, 0};
      default: return {};
    }
  }
  if (f == "tdD" || f == "tts" || f == "ttm") return {Layout::kFixed, 4};
  if (f == "tdm" || f == "ttu" || f == "ttn" || f.rfind("tD", 0) == 0 || f.rfind("ts", 0) == 0) {
    return {Layout::kFixed, 8};
  }
  if (f == "+l") return {Layout::kList32, 0};
  if (f == "+L") return {Layout::kList64, 0};
  if (f == "+s") return {Layout::kStruct, 0};
  // Sizes as the harness wrote them: one or two digits (anything else stays kOther).
  auto size_after = [&](size_t pos) -> int64_t {
    if (f.size() <= pos || f.size() > pos + 2) return -1;
    int64_t v = 0;
    for (size_t i = pos; i < f.size(); ++i) {
      if (f[i] < '0' || f[i] > '9') return -1;
      v = v * 10 + (f[i] - '0');
    }
    return v;
  };
  if (f.rfind("+w:", 0) == 0 && size_after(3) >= 0) return {Layout::kFixedList, size_after(3)};
  if (f.rfind("w:", 0) == 0 && size_after(2) >= 0) return {Layout::kFixed, size_after(2)};
  return {};
}

// Everything the structs point at; outlives the import and the conversions.
struct Arena {
  std::deque<std::string> strings;
  std::deque<ArrowSchema> schemas;
  std::deque<ArrowArray> arrays;
  std::vector<std::unique_ptr<uint8_t[]>> blocks;
  std::vector<std::unique_ptr<const void*[]>> buffer_lists;
  std::vector<std::unique_ptr<ArrowSchema*[]>> schema_lists;
  std::vector<std::unique_ptr<ArrowArray*[]>> array_lists;
  int child_releases = 0;
  // Top-level structs handed over with a live release callback, and how often each was released.
  std::deque<int> top_releases;
};

void release_schema_top(ArrowSchema* schema) {
  ++*static_cast<int*>(schema->private_data);
  schema->release = nullptr;
}
void release_array_top(ArrowArray* array) {
  ++*static_cast<int*>(array->private_data);
  array->release = nullptr;
}
void release_schema_child(ArrowSchema* schema) {
  ++static_cast<Arena*>(schema->private_data)->child_releases;
  schema->release = nullptr;
}
void release_array_child(ArrowArray* array) {
  ++static_cast<Arena*>(array->private_data)->child_releases;
  array->release = nullptr;
}

class Builder {
 public:
  Builder(FuzzedDataProvider& in, Arena& arena) : in_(in), arena_(arena) {}

  // `index`: the field's position among its siblings (distinct names by default).
  ArrowSchema* schema(int depth, int64_t index) {
    static const char* const kFormats[] = {
        "c",   "C", "s",   "S",   "i",   "I",   "l",    "L",       "e",  "f",
        "g",   "b", "tdD", "tdm", "tts", "ttn", "tsu:", "tsn:UTC", "+l", "+L",
        "+w:", "z", "Z",   "w:",  "+s",  "u",   "n",    "d:10,2"};
    constexpr int kCount = sizeof(kFormats) / sizeof(kFormats[0]);
    const bool leaf = depth >= kMaxDepth;
    std::string format;
    if (rarely(in_, 32)) {
      format = in_.ConsumeRandomLengthString(8);
    } else {
      format = kFormats[in_.ConsumeIntegralInRange<int>(0, kCount - 1)];
      if (leaf && (format[0] == '+')) format = "i";
      if (format == "+w:" || format == "w:") {
        format += std::to_string(in_.ConsumeIntegralInRange<int>(0, 9));
      }
    }
    ArrowSchema& s = arena_.schemas.emplace_back();
    s.format = keep(format);
    const uint8_t name = in_.ConsumeIntegral<uint8_t>();
    s.name =
        name == 255 ? nullptr : keep(std::string(1, static_cast<char>('a' + (index + name) % 8)));
    s.metadata = nullptr;
    s.flags = ARROW_FLAG_NULLABLE;
    const FormatInfo info = format_info(format);
    int64_t children = 0;
    if (info.layout == Layout::kList32 || info.layout == Layout::kList64 ||
        info.layout == Layout::kFixedList) {
      children = 1;
    } else if (info.layout == Layout::kStruct) {
      children = in_.ConsumeIntegralInRange<int64_t>(0, 4);
    }
    if (rarely(in_, 32)) {
      children = in_.ConsumeIntegralInRange<int64_t>(-1, 2);  // a wrong child count
    }
    if (leaf && children > 0) children = 0;
    s.n_children = children;
    s.children = nullptr;
    if (children > 0) {
      auto& list = arena_.schema_lists.emplace_back(new ArrowSchema*[children]);
      s.children = list.get();
      for (int64_t i = 0; i < children; ++i) {
        s.children[i] = rarely(in_, 64) ? nullptr : schema(depth + 1, i);
      }
    }
    s.dictionary = nullptr;
    if (!leaf && rarely(in_, 8)) {
      s.dictionary = schema(depth + 1, 0);
    }
    s.release = release_schema_child;
    s.private_data = &arena_;
    return &s;
  }

  // An array for `schema` (null: a schema the array need not match). `hint`:
  // the length a consistent parent wants (kept unless the input says otherwise).
  ArrowArray* array(const ArrowSchema* schema, int depth, int64_t hint) {
    ArrowArray& a = arena_.arrays.emplace_back();
    a.release = release_array_child;
    a.private_data = &arena_;
    const std::string format = schema && schema->format ? schema->format : "c";
    const FormatInfo info = format_info(format);
    const uint8_t flags = in_.ConsumeIntegral<uint8_t>();
    const bool consistent = (flags & 0x07) != 0x07;  // 7 in 8: lengths as the parent needs
    const bool has_validity = flags & 0x08;
    const bool misalign = flags & 0x10;
    const bool wild = (flags & 0xe0) == 0xe0;  // offset/length near the int64 limits

    a.length = consistent && hint >= 0 ? hint : in_.ConsumeIntegralInRange<int64_t>(0, 65) - 1;
    if (rarely(in_, 64)) {
      a.length = in_.ConsumeIntegralInRange<int64_t>(0, kMaxLength);
    }
    a.offset = rarely(in_, 4) ? in_.ConsumeIntegralInRange<int64_t>(-1, 9) : 0;
    if (wild) {
      a.offset = INT64_MAX - in_.ConsumeIntegralInRange<int64_t>(0, 16);
      a.length = in_.ConsumeIntegralInRange<int64_t>(0, 32);
    }
    const bool sized = !wild && a.length >= 0 && a.offset >= 0;
    const int64_t end = sized ? a.offset + a.length : 0;

    // Buffers by role, each exactly as large as `end` demands.
    std::vector<int64_t> roles;  // byte sizes; -1: a binary data buffer (sized after the offsets)
    const int64_t bitmap_bytes = (end + 7) / 8;
    switch (info.layout) {
      case Layout::kFixed: roles = {bitmap_bytes, end * info.width}; break;
      case Layout::kBool: roles = {bitmap_bytes, bitmap_bytes}; break;
      case Layout::kList32:
      case Layout::kBinary32: roles = {bitmap_bytes, (end + 1) * 4}; break;
      case Layout::kList64:
      case Layout::kBinary64: roles = {bitmap_bytes, (end + 1) * 8}; break;
      case Layout::kFixedList:
      case Layout::kStruct: roles = {bitmap_bytes}; break;
      case Layout::kOther:
        roles.assign(in_.ConsumeIntegralInRange<size_t>(0, 3), 0);
        for (auto& r : roles) r = in_.ConsumeIntegralInRange<int64_t>(0, 64);
        break;
    }
    if (info.layout == Layout::kBinary32 || info.layout == Layout::kBinary64) roles.push_back(-1);

    a.n_buffers = static_cast<int64_t>(roles.size());
    if (rarely(in_, 32)) {
      a.n_buffers = in_.ConsumeIntegralInRange<int64_t>(0, 4);  // a wrong buffer count
    }
    const int64_t n = a.n_buffers;
    auto& pointers = arena_.buffer_lists.emplace_back(new const void*[n > 0 ? n : 1]);
    a.buffers = rarely(in_, 64) ? nullptr : pointers.get();
    int64_t max_offset = 0;    // for the binary data buffer
    int64_t child_hint = end;  // for the children of a consistent array
    for (int64_t i = 0; i < n; ++i) {
      int64_t bytes = i < static_cast<int64_t>(roles.size()) ? roles[i] : 8;
      const bool offsets =
          i == 1 && (info.layout == Layout::kList32 || info.layout == Layout::kList64 ||
                     info.layout == Layout::kBinary32 || info.layout == Layout::kBinary64);
      if (bytes < 0) bytes = max_offset;
      const bool present = sized && (i != 0 || has_validity) && !rarely(in_, 64);
      if (!present) {
        pointers[i] = nullptr;
        continue;
      }
      uint8_t* data = block(bytes, misalign);
      if (offsets) {
        const bool large = info.layout == Layout::kList64 || info.layout == Layout::kBinary64;
        int64_t value = in_.ConsumeIntegralInRange<int64_t>(0, 3);
        const int64_t count = end + 1;
        const int64_t corrupt = rarely(in_, 8) ? in_.ConsumeIntegralInRange<int64_t>(0, end) : -1;
        for (int64_t k = 0; k < count; ++k) {
          int64_t v = value;
          if (k == corrupt) v = in_.ConsumeIntegral<int16_t>();
          if (large) {
            std::memcpy(data + k * 8, &v, 8);
          } else {
            const int32_t v32 = static_cast<int32_t>(v);
            std::memcpy(data + k * 4, &v32, 4);
          }
          max_offset = std::max(max_offset, v);
          if (k == count - 1) child_hint = v;
          value += in_.ConsumeIntegralInRange<int64_t>(0, 4);
        }
      } else {
        fill(data, bytes);
      }
      pointers[i] = data;
    }
    a.null_count = 0;
    if (info.layout != Layout::kOther && n > 0 && pointers[0] != nullptr && sized) {
      const auto* bits = static_cast<const uint8_t*>(pointers[0]);
      int64_t nulls = 0;
      for (int64_t i = a.offset; i < end; ++i) nulls += !((bits[i >> 3] >> (i & 7)) & 1);
      switch (in_.ConsumeIntegralInRange<int>(0, 7)) {
        case 6: a.null_count = -1; break;
        case 7: a.null_count = in_.ConsumeIntegralInRange<int64_t>(-2, a.length + 1); break;
        default: a.null_count = nulls;
      }
    } else if (rarely(in_, 16)) {
      a.null_count = in_.ConsumeIntegralInRange<int64_t>(-2, 3);
    }

    if (info.layout == Layout::kFixedList) {
      child_hint = sized ? end * info.width : 0;
    }
    if (child_hint > kMaxChildLength) child_hint = -1;
    int64_t children = schema && schema->n_children > 0 ? schema->n_children : 0;
    if (rarely(in_, 32)) {
      children = in_.ConsumeIntegralInRange<int64_t>(-1, 2);
    }
    if (depth >= kMaxDepth + 1 && children > 0) children = 0;
    a.n_children = children;
    a.children = nullptr;
    if (children > 0) {
      auto& list = arena_.array_lists.emplace_back(new ArrowArray*[children]);
      a.children = list.get();
      for (int64_t i = 0; i < children; ++i) {
        const ArrowSchema* child =
            schema && i < schema->n_children && schema->children ? schema->children[i] : nullptr;
        a.children[i] = rarely(in_, 64) ? nullptr : array(child, depth + 1, child_hint);
      }
    }
    a.dictionary = nullptr;
    const bool want_dictionary = schema && schema->dictionary;
    if (want_dictionary != (rarely(in_, 64)) && depth <= kMaxDepth) {
      a.dictionary = array(want_dictionary ? schema->dictionary : nullptr, depth + 1,
                           in_.ConsumeIntegralInRange<int64_t>(0, 16));
    }
    if (rarely(in_, 64)) a.release = nullptr;  // "already released"
    return &a;
  }

  // Marks a tree's root as top-level: its release is counted.
  void make_top(ArrowSchema* s) {
    if (s->release == nullptr) return;
    s->release = release_schema_top;
    s->private_data = &arena_.top_releases.emplace_back(0);
  }
  void make_top(ArrowArray* a) {
    if (a->release == nullptr) return;
    a->release = release_array_top;
    a->private_data = &arena_.top_releases.emplace_back(0);
  }

 private:
  const char* keep(std::string s) { return arena_.strings.emplace_back(std::move(s)).c_str(); }

  uint8_t* block(int64_t bytes, bool misalign) {
    const int64_t shift = misalign ? 1 : 0;
    auto& b = arena_.blocks.emplace_back(new uint8_t[bytes + shift]);
    return b.get() + shift;
  }

  void fill(uint8_t* data, int64_t bytes) {
    const std::vector<uint8_t> head = in_.ConsumeBytes<uint8_t>(std::min<int64_t>(bytes, 64));
    for (int64_t i = 0; i < bytes; ++i) {
      data[i] = head.empty() ? 0 : head[i % head.size()] + static_cast<uint8_t>(i / head.size());
    }
  }

  FuzzedDataProvider& in_;
  Arena& arena_;
};

// A stream of prepared chunks; may fail get_schema or get_next on request.
struct Stream {
  ArrowSchema* schema = nullptr;
  std::vector<ArrowArray*> chunks;
  size_t next = 0;
  int fail_at = -1;  // -1: never; 0: get_schema; k: the k-th get_next
  int* released = nullptr;

  static Stream* self(ArrowArrayStream* s) { return static_cast<Stream*>(s->private_data); }
  static int get_schema(ArrowArrayStream* s, ArrowSchema* out) {
    Stream* st = self(s);
    if (st->fail_at == 0) return 5;
    *out = *st->schema;
    st->schema->release = nullptr;
    return 0;
  }
  static int get_next(ArrowArrayStream* s, ArrowArray* out) {
    Stream* st = self(s);
    if (st->fail_at > 0 && st->next + 1 == static_cast<size_t>(st->fail_at)) return 5;
    if (st->next == st->chunks.size()) {
      out->release = nullptr;
      return 0;
    }
    ArrowArray* chunk = st->chunks[st->next++];
    *out = *chunk;
    chunk->release = nullptr;
    return 0;
  }
  static const char* last_error(ArrowArrayStream*) { return "fuzzer-injected failure"; }
  static void release(ArrowArrayStream* s) {
    ++*self(s)->released;
    s->release = nullptr;
  }
};

c10::ScalarType pick_dtype(FuzzedDataProvider& in) {
  static const c10::ScalarType kTypes[] = {
      at::kFloat, at::kDouble, at::kLong, at::kInt,      at::kShort,  at::kChar,
      at::kByte,  at::kBool,   at::kHalf, at::kBFloat16, at::kUInt32, at::kComplexFloat};
  return kTypes[in.ConsumeIntegralInRange<size_t>(0, std::size(kTypes) - 1)];
}

c10::Scalar pick_fill(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 4)) {
    case 0: return 0;
    case 1: return in.ConsumeIntegral<int64_t>();
    case 2: return in.ConsumeFloatingPoint<double>();
    case 3: return true;
    default: return -1;
  }
}

// Reads every byte of a result, so that a view past its Arrow buffer is a report.
void touch(const at::Tensor& t) {
  if (!t.defined() || t.numel() == 0) return;
  at::Tensor c = t.contiguous();
  const auto* p = static_cast<const volatile uint8_t*>(c.data_ptr());
  uint8_t sum = 0;
  for (size_t i = 0; i < c.nbytes(); ++i) sum ^= p[i];
  (void)sum;
}

template <typename F>
void attempt(F&& f) {
  try {
    f();
  } catch (const c10::Error&) {
    // A refused input: the importer's intended outcome for malformed data.
  }
}

void convert(FuzzedDataProvider& in, const torchspark::ImportedTable& table) {
  std::vector<Column> columns;
  attempt([&] {
    columns = table.is_batch() ? table.select(std::nullopt, "fuzz")
                               : std::vector<Column>{table.as_column()};
  });
  for (const Column& column : columns) {
    attempt([&] {
      torchspark::ToTensorOptions options;
      if (in.ConsumeBool()) options.dtype = pick_dtype(in);
      options.nulls = static_cast<torchspark::NullPolicy>(in.ConsumeIntegralInRange<int>(0, 2));
      options.fill = pick_fill(in);
      options.dictionary = in.ConsumeBool() ? torchspark::DictionaryPolicy::kDecode
                                            : torchspark::DictionaryPolicy::kIndices;
      if (rarely(in, 4)) {
        std::vector<int64_t> shape(in.ConsumeIntegralInRange<size_t>(0, 3));
        for (auto& d : shape) d = in.ConsumeIntegralInRange<int64_t>(-1, 8);
        options.shape = shape;
      }
      torchspark::ColumnTensor result = torchspark::to_tensor(column, options);
      touch(result.values);
      touch(result.mask);
    });
    attempt([&] {
      torchspark::PadOptions options;
      if (in.ConsumeBool()) options.max_len = in.ConsumeIntegralInRange<int64_t>(-1, 16);
      options.pad_value = pick_fill(in);
      if (in.ConsumeBool()) options.dtype = pick_dtype(in);
      options.nulls =
          in.ConsumeBool() ? torchspark::NullPolicy::kFill : torchspark::NullPolicy::kError;
      if (in.ConsumeBool()) {
        touch(torchspark::list_lengths(column, options));
      } else {
        torchspark::PadResult result = torchspark::pad(column, options);
        touch(result.values);
        touch(result.lengths);
      }
    });
  }
  attempt([&] {
    torchspark::GatherOptions options;
    options.dtype = pick_dtype(in);
    options.nulls =
        in.ConsumeBool() ? torchspark::NullPolicy::kFill : torchspark::NullPolicy::kError;
    options.fill = pick_fill(in);
    touch(torchspark::gather(columns, table.num_rows(), options, std::nullopt));
  });
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);  // one input at a time, deterministic
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Arena arena;
  Builder build(in, arena);
  const bool stream = in.ConsumeBool();
  ArrowSchema* schema = build.schema(0, 0);
  if (rarely(in, 64)) schema->release = nullptr;
  build.make_top(schema);
  {
    std::optional<torchspark::ImportedTable> table;
    if (stream) {
      Stream st;
      st.schema = schema;
      const int chunks = (in.ConsumeIntegralInRange<int>(0, 3) + 1) % 4;  // 1 when out of data
      for (int i = 0; i < chunks; ++i) {
        ArrowArray* a = build.array(schema, 0, -1);
        build.make_top(a);
        st.chunks.push_back(a);
      }
      st.fail_at = rarely(in, 16) ? in.ConsumeIntegralInRange<int>(0, chunks + 1) : -1;
      int stream_released = 0;
      st.released = &stream_released;
      ArrowArrayStream s{Stream::get_schema, Stream::get_next, Stream::last_error, Stream::release,
                         &st};
      attempt([&] { table.emplace(torchspark::import_stream(&s, "stream"), "stream"); });
      if (stream_released != 1) fail("the stream was not released exactly once");
      // Chunks the stream never handed out stay the harness's.
      for (size_t i = st.next; i < st.chunks.size(); ++i) {
        if (st.chunks[i]->release) st.chunks[i]->release(st.chunks[i]);
      }
      if (st.fail_at == 0 && schema->release) schema->release(schema);
    } else {
      ArrowArray* a = build.array(schema, 0, -1);
      build.make_top(a);
      attempt([&] { table.emplace(torchspark::import_array(schema, a, "array"), "array"); });
      // import_array takes the schema first: a refused schema leaves the array with us.
      if (a->release) a->release(a);
      if (schema->release) schema->release(schema);
    }
    if (table) convert(in, *table);
  }
  for (int count : arena.top_releases) {
    if (count != 1) fail("a top-level ArrowSchema/ArrowArray was not released exactly once");
  }
  if (arena.child_releases != 0) fail("a child or dictionary was released on its own");
  return 0;
}

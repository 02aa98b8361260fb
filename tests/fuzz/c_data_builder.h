// The fuzzers' Arrow C Data builder: decodes fuzzer bytes into ArrowSchema
// and ArrowArray trees (tests only; shared by arrow_import_fuzzer and
// engine_submit_fuzzer).
//
// Structure-aware: mutated format strings, lengths, offsets, null counts,
// buffer and child counts, buffer contents, offsets, dictionaries and nesting.
//
// The builder's own rule: a C Data array carries no buffer sizes, so the
// importer can only check offsets against lengths and lengths against each
// other. Every buffer handed over is therefore exactly as large as the
// array's declared offset + length demands of its role (validity bits,
// values, offsets; a binary data buffer as large as the largest offset
// written), each in its own heap block so that ASan reports any read past it.
// Everything else (lengths against children, offsets against child lengths,
// null counts, buffer and child counts, null pointers, format strings,
// dictionary indices) is fuzzed freely: catching it is the importer's job.
// Offsets near INT64_MAX come with null buffers only.
//
// Ownership: everything the structs point at lives in an Arena that outlives
// the import and the conversions. Children and dictionaries count their
// releases in the arena (the importer must never release one on its own);
// make_top() marks a root whose releases are counted one by one (it must be
// released exactly once).
#pragma once

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "torchspark/arrow/arrow_c_abi.h"

namespace torchspark_fuzz {

// True one time in n. FuzzedDataProvider gives the minimum once the input is
// used up, so the rare branch (a mutation) sits at the maximum: a short input
// decodes to a well-formed tree.
inline bool rarely(FuzzedDataProvider& in, int n) {
  return in.ConsumeIntegralInRange<int>(0, n - 1) == n - 1;
}

constexpr int kMaxDepth = 4;
constexpr int64_t kMaxLength = 1 << 12;  // rows per array: keeps one input well under 1 ms
constexpr int64_t kMaxChildLength = 1 << 16;

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

inline FormatInfo format_info(const std::string& f) {
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

inline void release_schema_top(ArrowSchema* schema) {
  ++*static_cast<int*>(schema->private_data);
  schema->release = nullptr;
}
inline void release_array_top(ArrowArray* array) {
  ++*static_cast<int*>(array->private_data);
  array->release = nullptr;
}
inline void release_schema_child(ArrowSchema* schema) {
  ++static_cast<Arena*>(schema->private_data)->child_releases;
  schema->release = nullptr;
}
inline void release_array_child(ArrowArray* array) {
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

  // A schema of a chosen format and name (no fuzzer bytes read), over `children`.
  ArrowSchema* field(const std::string& format, const std::string& name,
                     const std::vector<ArrowSchema*>& children = {}) {
    ArrowSchema& s = arena_.schemas.emplace_back();
    s.format = keep(format);
    s.name = keep(name);
    s.metadata = nullptr;
    s.flags = ARROW_FLAG_NULLABLE;
    s.n_children = static_cast<int64_t>(children.size());
    s.children = nullptr;
    if (!children.empty()) {
      auto& list = arena_.schema_lists.emplace_back(new ArrowSchema*[children.size()]);
      std::copy(children.begin(), children.end(), list.get());
      s.children = list.get();
    }
    s.dictionary = nullptr;
    s.release = release_schema_child;
    s.private_data = &arena_;
    return &s;
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

}  // namespace torchspark_fuzz

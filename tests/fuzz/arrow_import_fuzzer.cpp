// libFuzzer target: Arrow C Data import (arrow_owner, arrow_type,
// arrow_import) and the conversions on what imports (to_tensor, gather, pad).
//
// Structure-aware: the fuzzer's bytes are decoded (c_data_builder.h) into an
// ArrowSchema tree and one or more ArrowArray trees (a single array, or a
// stream of chunks), with mutated format strings, lengths, offsets, null
// counts, buffer and child counts, buffer contents, offsets, dictionaries and
// nesting; every buffer exactly as large as its declared role demands.
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

#include "c_data_builder.h"
#include "fuzz_checks.h"
#include "torchspark/arrow/arrow_import.h"
#include "torchspark/arrow/arrow_owner.h"
#include "torchspark/kernels/gather.h"
#include "torchspark/kernels/pad.h"

namespace {

using torchspark::Column;
using namespace torchspark_fuzz;

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

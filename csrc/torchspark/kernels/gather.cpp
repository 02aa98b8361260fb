#include "torchspark/kernels/gather.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "torchspark/arrow/arrow_type.h"
#include "torchspark/errors.h"
#include "torchspark/kernels/convert.h"
#include "torchspark/kernels/host_memory.h"

namespace torchspark {

namespace {

struct Source {
  const ArrowArray* array;
  int64_t start;  // absolute index of the chunk's first row
  ConvertFn convert;
  bool has_nulls;
  bool plain_32bit;  // eligible for the 8x8 register transpose
};

// A run of kBlockCols columns that all copy 4-byte elements unchanged (float32
// -> float32, int32 -> int32, ...) with no nulls: transposed 8x8 in registers.
constexpr int64_t kBlockCols = 8;

bool is_plain_32bit(const ArrowType& type, c10::ScalarType out, bool has_nulls) {
  return !has_nulls && type.kind == TypeKind::kPrimitive && type.dtype == out &&
         c10::elementSize(out) == 4;
}

#if defined(__x86_64__)
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}

// Transposes 8 rows of 8 columns (c[k] = 8 consecutive rows of column k)
// into o[r] = the 8 column values of row r.
__attribute__((target("avx2"))) inline void transpose8x8(const __m256* c, __m256* o) {
  __m256 t0 = _mm256_unpacklo_ps(c[0], c[1]);
  __m256 t1 = _mm256_unpackhi_ps(c[0], c[1]);
  __m256 t2 = _mm256_unpacklo_ps(c[2], c[3]);
  __m256 t3 = _mm256_unpackhi_ps(c[2], c[3]);
  __m256 t4 = _mm256_unpacklo_ps(c[4], c[5]);
  __m256 t5 = _mm256_unpackhi_ps(c[4], c[5]);
  __m256 t6 = _mm256_unpacklo_ps(c[6], c[7]);
  __m256 t7 = _mm256_unpackhi_ps(c[6], c[7]);
  __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
  __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
  __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
  o[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  o[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  o[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  o[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  o[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  o[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  o[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  o[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// Reads rows [row, row + rows) of `width` (8 or 16) columns of 32-bit values
// and writes them as `width` contiguous values per output row (`stride`
// bytes apart). With `stream`, each output row segment is a whole 64-byte
// line (width 16, 64-byte aligned) written with non-temporal stores.
template <int width, bool stream>
__attribute__((target("avx2"))) void transpose_block_avx2(const char* const* cols, int64_t row,
                                                          int64_t rows, char* out, int64_t stride) {
  int64_t r = 0;
  for (; r + 8 <= rows; r += 8) {
    __m256 o[width / 8][8];
    for (int h = 0; h < width / 8; ++h) {
      __m256 c[8];
      for (int k = 0; k < 8; ++k) {
        c[k] = _mm256_loadu_ps(reinterpret_cast<const float*>(cols[h * 8 + k] + (row + r) * 4));
      }
      transpose8x8(c, o[h]);
    }
    for (int q = 0; q < 8; ++q) {
      float* dst = reinterpret_cast<float*>(out + (r + q) * stride);
      for (int h = 0; h < width / 8; ++h) {
        if constexpr (stream) {
          _mm256_stream_ps(dst + h * 8, o[h][q]);
        } else {
          _mm256_storeu_ps(dst + h * 8, o[h][q]);
        }
      }
    }
  }
  for (; r < rows; ++r) {
    for (int k = 0; k < width; ++k) {
      std::memcpy(out + r * stride + k * 4, cols[k] + (row + r) * 4, 4);
    }
  }
}
#endif

// Outputs at least this large (bigger than a typical L2 + share of L3) are
// written with non-temporal stores; smaller ones stay in cache for the model
// that reads them next. See benchmarks/RESULTS.md (gather).
constexpr int64_t kStreamingThresholdBytes = 8 << 20;

bool use_streaming_stores(int64_t bytes) {
#if defined(__x86_64__)
  return bytes >= kStreamingThresholdBytes;
#else
  return false;
#endif
}

// Copies `bytes` from an (L1-resident) scratch to dst with non-temporal
// stores where dst is 16-byte aligned; plain copies for the unaligned edges.
void stream_copy(char* dst, const char* src, int64_t bytes) {
#if defined(__x86_64__)
  const int64_t head = std::min<int64_t>(bytes, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
  std::memcpy(dst, src, head);
  int64_t i = head;
  for (; i + 16 <= bytes; i += 16) {
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i)));
  }
  std::memcpy(dst + i, src + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

// Orders the non-temporal stores before anything that follows.
void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

}  // namespace

at::Tensor gather(const std::vector<Column>& columns, int64_t num_rows,
                  const GatherOptions& options, const std::optional<at::Tensor>& out) {
  const int64_t num_cols = static_cast<int64_t>(columns.size());
  at::Tensor result;
  if (out.has_value() && out->defined()) {
    result = *out;
  } else {
    TS_CHECK_SUPPORTED(is_supported_dtype(options.dtype), "gather: dtype ",
                       c10::toString(options.dtype),
                       " is not supported; expected a real number type or bool");
    result = empty_host({num_rows, num_cols}, options.dtype);
  }
  gather_rows(columns, 0, num_rows, options, result);
  return result;
}

void check_gather(const std::vector<Column>& columns, int64_t begin, int64_t count,
                  const GatherOptions& options) {
  TORCH_CHECK_VALUE(options.nulls != NullPolicy::kMask,
                    "gather: nulls must be 'error' or 'fill', got 'mask' (use to_tensor for a "
                    "mask per column)");
  TS_CHECK_SUPPORTED(is_supported_dtype(options.dtype), "gather: dtype ",
                     c10::toString(options.dtype),
                     " is not supported; expected a real number type or bool");
  check_fill(options.fill, options.dtype, "gather");
  if (columns.empty()) {
    return;
  }
  const int64_t end_row = begin + count;

  // Every column, before anything is written.
  const size_t num_chunks = columns[0].chunks.size();
  for (const Column& column : columns) {
    TORCH_CHECK_VALUE(column.chunks.size() == num_chunks && column.length == columns[0].length,
                      column.label, ": expected ", columns[0].length, " rows in ", num_chunks,
                      " chunks like the other columns, got ", column.length, " rows in ",
                      column.chunks.size());
    TORCH_CHECK_VALUE(begin >= 0 && end_row <= column.length, column.label, ": rows [", begin, ", ",
                      end_row, ") are out of range for ", column.length, " rows");
    int64_t nulls = 0;
    int64_t first_null_row = -1;
    for (const ColumnChunk& chunk : column.chunks) {
      validate(*chunk.schema, *chunk.array, column.label, /*with_dictionary=*/false);
      ArrowType type = parse_type(*chunk.schema, column.label);
      TS_CHECK_SUPPORTED((type.kind == TypeKind::kPrimitive || type.kind == TypeKind::kBool) &&
                             !type.dictionary_encoded,
                         column.label, ": gather takes scalar number or bool columns, got ",
                         type.dictionary_encoded ? std::string("dictionary")
                                                 : describe_format(chunk.schema->format),
                         " (use to_tensor for list and binary columns)");
      const int64_t lo = std::max(begin, chunk.row_base);
      const int64_t hi = std::min(end_row, chunk.row_base + chunk.length);
      if (options.nulls == NullPolicy::kError && lo < hi) {
        const int64_t start = chunk.start + (lo - chunk.row_base);
        const int64_t n = count_nulls(*chunk.array, start, hi - lo);
        if (n > 0 && nulls == 0) {
          first_null_row = lo + (first_null(*chunk.array, start, hi - lo) - start);
        }
        nulls += n;
      }
    }
    TS_CHECK_NOT_NULL(nulls == 0, column.label, ": ", nulls,
                      nulls == 1 ? " null value" : " null values", " (first in row ",
                      first_null_row, "); pass nulls='fill' (with fill=...) to gather them");
  }
}

void gather_rows(const std::vector<Column>& columns, int64_t begin, int64_t count,
                 const GatherOptions& options, const at::Tensor& out) {
  const int64_t num_cols = static_cast<int64_t>(columns.size());
  TORCH_CHECK_VALUE(
      out.defined() && out.device().is_cpu() && out.scalar_type() == options.dtype &&
          out.dim() == 2 && out.size(0) == count && out.size(1) == num_cols && out.is_contiguous(),
      "gather: out must be a contiguous CPU ", c10::toString(options.dtype), " tensor of shape [",
      count, ", ", num_cols, "], got ",
      out.defined()
          ? c10::str(out.is_contiguous() ? "a contiguous " : "a non-contiguous ", out.device(), " ",
                     c10::toString(out.scalar_type()), " tensor of shape ", out.sizes())
          : std::string("an undefined tensor"));
  if (count == 0 || num_cols == 0) {
    check_gather(columns, begin, count, options);
    return;
  }
  check_gather(columns, begin, count, options);
  const int64_t end_row = begin + count;
  const size_t num_chunks = columns[0].chunks.size();
  const int64_t elem_size = static_cast<int64_t>(c10::elementSize(options.dtype));
  const int64_t row_bytes = num_cols * elem_size;
  const FillFn fill = fill_fn(options.dtype);
  char* out_data = static_cast<char*>(out.data_ptr());
  const int64_t tile_rows = std::max<int64_t>(8, kGatherTileBytes / row_bytes);
  // Enough rows per task to amortise a thread hand-off (~32K elements).
  const int64_t grain = std::max<int64_t>(tile_rows, at::internal::GRAIN_SIZE / num_cols);
  const bool stream = use_streaming_stores(count * row_bytes);
#if defined(__x86_64__)
  const bool use_avx2 = cpu_has_avx2();
#endif

  std::vector<Source> sources(num_cols);
  for (size_t c = 0; c < num_chunks; ++c) {
    const ColumnChunk& first = columns[0].chunks[c];
    const int64_t lo = std::max(begin, first.row_base);
    const int64_t hi = std::min(end_row, first.row_base + first.length);
    if (lo >= hi) {
      continue;
    }
    const int64_t local = lo - first.row_base;  // first row of the window in this chunk
    const int64_t rows_here = hi - lo;
    for (int64_t j = 0; j < num_cols; ++j) {
      const ColumnChunk& chunk = columns[j].chunks[c];
      ArrowType type = parse_type(*chunk.schema, columns[j].label);
      const int64_t start = chunk.start + local;
      const bool has_nulls = range_has_nulls(*chunk.array, start, rows_here);
      sources[j] = {chunk.array, start, convert_fn(type.dtype, options.dtype), has_nulls,
                    is_plain_32bit(type, options.dtype, has_nulls)};
      TS_CHECK_SUPPORTED(sources[j].convert != nullptr, columns[j].label, ": cannot convert ",
                         c10::toString(type.dtype), " to ", c10::toString(options.dtype));
    }

    // Writes rows [t, t + rows) of this chunk, row-major, at `dst`.
    auto gather_tile = [&](int64_t t, int64_t rows, char* dst) {
      for (int64_t j = 0; j < num_cols; ++j) {
#if defined(__x86_64__)
        if (use_avx2 && j + kBlockCols <= num_cols &&
            std::all_of(&sources[j], &sources[j] + kBlockCols,
                        [](const Source& s) { return s.plain_32bit; })) {
          const char* cols[kBlockCols];
          for (int64_t k = 0; k < kBlockCols; ++k) {
            cols[k] = static_cast<const char*>(sources[j + k].array->buffers[1]) +
                      sources[j + k].start * 4;
          }
          transpose_block_avx2<8, false>(cols, t, rows, dst + j * elem_size, row_bytes);
          j += kBlockCols - 1;
          continue;
        }
#endif
        const Source& s = sources[j];
        if (s.has_nulls) {
          convert_valid_runs(*s.array, s.start + t, rows, s.convert, fill, options.fill,
                             dst + j * elem_size, elem_size, num_cols, nullptr, 0);
        } else {
          s.convert(s.array->buffers[1], s.start + t, rows, dst + j * elem_size, num_cols);
        }
      }
    };

    char* chunk_out = out_data + (lo - begin) * row_bytes;
#if defined(__x86_64__)
    // All columns plain 32-bit, rows whole 64-byte lines: transpose 16 columns
    // at a time straight into the output with non-temporal stores.
    const bool direct =
        stream && use_avx2 && num_cols % 16 == 0 &&
        reinterpret_cast<uintptr_t>(chunk_out) % 64 == 0 &&
        std::all_of(sources.begin(), sources.end(), [](const Source& s) { return s.plain_32bit; });
    if (direct) {
      at::parallel_for(0, rows_here, grain, [&](int64_t begin, int64_t end) {
        const char* cols[16];
        for (int64_t t = begin; t < end; t += tile_rows) {
          const int64_t rows = std::min(tile_rows, end - t);
          for (int64_t j = 0; j < num_cols; j += 16) {
            for (int64_t k = 0; k < 16; ++k) {
              cols[k] = static_cast<const char*>(sources[j + k].array->buffers[1]) +
                        sources[j + k].start * 4;
            }
            transpose_block_avx2<16, true>(cols, t, rows, chunk_out + t * row_bytes + j * 4,
                                           row_bytes);
          }
        }
        stream_fence();
      });
      continue;
    }
#endif
    at::parallel_for(0, rows_here, grain, [&](int64_t begin, int64_t end) {
      if (!stream) {
        for (int64_t t = begin; t < end; t += tile_rows) {
          gather_tile(t, std::min(tile_rows, end - t), chunk_out + t * row_bytes);
        }
        return;
      }
      // Large outputs: build each tile in an L1-resident scratch, then stream
      // it out in whole cache lines, so the output is never read for ownership.
      // torch's CPU allocator aligns to 64 bytes (a cache line).
      at::Tensor scratch_buffer =
          at::empty({tile_rows * row_bytes}, at::TensorOptions().dtype(at::kByte));
      char* scratch = static_cast<char*>(scratch_buffer.data_ptr());
      for (int64_t t = begin; t < end; t += tile_rows) {
        const int64_t rows = std::min(tile_rows, end - t);
        gather_tile(t, rows, scratch);
        stream_copy(chunk_out + t * row_bytes, scratch, rows * row_bytes);
      }
      stream_fence();
    });
  }
}

}  // namespace torchspark

#include "torchspark/kernels/convert.h"

#include <ATen/core/Formatting.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/TypeCast.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "torchspark/arrow/arrow_type.h"

namespace torchspark {

namespace {

template <typename Dst, typename Src>
void convert_values(const void* base, int64_t index, int64_t count, void* dst, int64_t dst_stride) {
  if (count <= 0) {
    return;  // an empty output may have a null data pointer
  }
  const char* src = static_cast<const char*>(base) + index * static_cast<int64_t>(sizeof(Src));
  Dst* out = static_cast<Dst*>(dst);
  if constexpr (std::is_same_v<Dst, Src>) {
    if (dst_stride == 1) {
      std::memcpy(out, src, static_cast<size_t>(count) * sizeof(Src));
      return;
    }
  }
  for (int64_t k = 0; k < count; ++k) {
    Src value;
    std::memcpy(&value, src + k * static_cast<int64_t>(sizeof(Src)), sizeof(Src));
    out[k * dst_stride] = c10::convert<Dst>(value);
  }
}

template <typename Dst>
void convert_bits(const void* base, int64_t index, int64_t count, void* dst, int64_t dst_stride) {
  const auto* bits = static_cast<const uint8_t*>(base);
  Dst* out = static_cast<Dst*>(dst);
  for (int64_t k = 0; k < count; ++k) {
    out[k * dst_stride] = c10::convert<Dst>(bit_is_set(bits, index + k));
  }
}

template <typename Dst>
ConvertFn convert_from(c10::ScalarType src) {
  using c10::ScalarType;
  switch (src) {
    case ScalarType::Char: return &convert_values<Dst, int8_t>;
    case ScalarType::Short: return &convert_values<Dst, int16_t>;
    case ScalarType::Int: return &convert_values<Dst, int32_t>;
    case ScalarType::Long: return &convert_values<Dst, int64_t>;
    case ScalarType::Byte: return &convert_values<Dst, uint8_t>;
    case ScalarType::UInt16: return &convert_values<Dst, uint16_t>;
    case ScalarType::UInt32: return &convert_values<Dst, uint32_t>;
    case ScalarType::UInt64: return &convert_values<Dst, uint64_t>;
    case ScalarType::Half: return &convert_values<Dst, c10::Half>;
    case ScalarType::Float: return &convert_values<Dst, float>;
    case ScalarType::Double: return &convert_values<Dst, double>;
    case ScalarType::Bool: return &convert_bits<Dst>;
    default: return nullptr;
  }
}

template <typename Dst>
void fill_values(void* dst, const c10::Scalar& value, int64_t count, int64_t stride) {
  const Dst v = value.to<Dst>();
  Dst* out = static_cast<Dst*>(dst);
  for (int64_t k = 0; k < count; ++k) {
    out[k * stride] = v;
  }
}

// Calls f(Dst{}) with the C++ type of every supported destination dtype.
template <typename F>
auto visit_dtype(c10::ScalarType dtype, F&& f) -> decltype(f(float{})) {
  using c10::ScalarType;
  switch (dtype) {
    case ScalarType::Char: return f(int8_t{});
    case ScalarType::Short: return f(int16_t{});
    case ScalarType::Int: return f(int32_t{});
    case ScalarType::Long: return f(int64_t{});
    case ScalarType::Byte: return f(uint8_t{});
    case ScalarType::UInt16: return f(uint16_t{});
    case ScalarType::UInt32: return f(uint32_t{});
    case ScalarType::UInt64: return f(uint64_t{});
    case ScalarType::Half: return f(c10::Half{});
    case ScalarType::BFloat16: return f(c10::BFloat16{});
    case ScalarType::Float: return f(float{});
    case ScalarType::Double: return f(double{});
    case ScalarType::Bool: return f(bool{});
    default: return decltype(f(float{})){};
  }
}

}  // namespace

ConvertFn convert_fn(c10::ScalarType src, c10::ScalarType dst) {
  return visit_dtype(dst, [&](auto tag) -> ConvertFn { return convert_from<decltype(tag)>(src); });
}

FillFn fill_fn(c10::ScalarType dst) {
  return visit_dtype(dst, [](auto tag) -> FillFn { return &fill_values<decltype(tag)>; });
}

void convert_valid_runs(const ArrowArray& array, int64_t start, int64_t count, ConvertFn convert,
                        FillFn fill_value, const c10::Scalar& fill, char* dst, int64_t dst_size,
                        int64_t stride, bool* mask, int64_t mask_stride) {
  const void* data = array.buffers[1];
  if (!range_has_nulls(array, start, count)) {
    convert(data, start, count, dst, stride);
    for (int64_t k = 0; mask != nullptr && k < count; ++k) {
      mask[k * mask_stride] = true;
    }
    return;
  }
  int64_t run = 0;  // valid elements before k not yet converted
  for (int64_t k = 0; k <= count; ++k) {
    bool valid = k < count && is_valid(array, start + k);
    if (valid) {
      ++run;
      continue;
    }
    if (run > 0) {
      convert(data, start + k - run, run, dst + (k - run) * stride * dst_size, stride);
      run = 0;
    }
    if (k < count) {
      fill_value(dst + k * stride * dst_size, fill, 1, 1);
    }
  }
  for (int64_t k = 0; mask != nullptr && k < count; ++k) {
    mask[k * mask_stride] = is_valid(array, start + k);
  }
}

bool is_supported_dtype(c10::ScalarType dtype) {
  return fill_fn(dtype) != nullptr;
}

void check_fill(const c10::Scalar& value, c10::ScalarType dtype, const std::string& what,
                const char* name) {
  // Stricter than a C++ cast: an integer column takes only integers in its
  // range (no silent truncation of 1.5, no wrap of -1 to 255), a bool column
  // only 0/1, a float column anything its range holds (inf and nan included).
  bool representable = true;
  try {
    visit_dtype(dtype, [&](auto tag) -> int {
      using T = decltype(tag);
      if constexpr (std::is_same_v<T, bool>) {
        representable = value.isBoolean() || value.toDouble() == 0 || value.toDouble() == 1;
      } else if constexpr (std::is_integral_v<T>) {
        long double v = value.isFloatingPoint() ? static_cast<long double>(value.toDouble())
                        : value.isBoolean()     ? static_cast<long double>(value.toBool())
                        : value.type() == c10::ScalarType::UInt64
                            ? static_cast<long double>(value.toUInt64())
                            : static_cast<long double>(value.toLong());
        representable = std::isfinite(v) && v == std::trunc(v) &&
                        v >= static_cast<long double>(std::numeric_limits<T>::min()) &&
                        v <= static_cast<long double>(std::numeric_limits<T>::max());
      } else {
        (void)value.to<T>();  // throws on overflow (e.g. 1e6 for float16)
      }
      return 0;
    });
  } catch (const std::exception&) {  // c10's report_overflow throws std::runtime_error
    representable = false;
  }
  if (!representable) {
    TORCH_CHECK_VALUE(false, what, ": ", name, " ", value, " cannot be represented as ",
                      c10::toString(dtype));
  }
}

}  // namespace torchspark

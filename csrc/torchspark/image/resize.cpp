#include "torchspark/image/resize.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <utility>

namespace torchspark {

namespace {

// Pillow's bilinear (triangle) filter; support 1.
double triangle(double x) {
  x = std::abs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

// Python's round(diff / 2.0): halves go to the even neighbour.
int64_t half_to_even(int64_t diff) {
  const int64_t q = diff / 2;  // diff >= 0
  if (diff % 2 == 0) return q;
  return q % 2 == 0 ? q : q + 1;
}

inline uint8_t clip8(int32_t sum) {
  const int32_t v = sum >> kWeightBits;
  return static_cast<uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

constexpr int32_t kHalf = 1 << (kWeightBits - 1);

// The input indices [begin, end) an axis' outputs read.
std::pair<int64_t, int64_t> input_range(const ResampleAxis& axis) {
  int64_t begin = axis.first[0];
  int64_t end = begin;
  for (size_t i = 0; i < axis.first.size(); ++i) {
    begin = std::min(begin, axis.first[i]);
    end = std::max(end, axis.first[i] + axis.count[i]);
  }
  return {begin, end};
}

// One pass of Pillow's 8-bit resampling along x: rows [y_begin, y_end) of
// `src`, each output x reading inputs from axis.first[x] - shift;
// sink(row - y_begin, x, r, g, b) gets the rounded results.
template <typename Sink>
void horizontal_pass(const ImageView& src, const ResampleAxis& axis, int64_t shift, int64_t y_begin,
                     int64_t y_end, Sink&& sink) {
  const int64_t out = static_cast<int64_t>(axis.first.size());
  const int64_t c0 = src.channel[0];
  const int64_t c1 = src.channel[1];
  const int64_t c2 = src.channel[2];
  for (int64_t y = y_begin; y < y_end; ++y) {
    for (int64_t x = 0; x < out; ++x) {
      const int32_t* k = axis.weights.data() + x * axis.taps;
      const uint8_t* p = src.pixel(axis.first[x] - shift, y);
      int32_t s0 = kHalf;
      int32_t s1 = kHalf;
      int32_t s2 = kHalf;
      for (int64_t t = 0; t < axis.count[x]; ++t, p += src.col_stride) {
        s0 += p[c0] * k[t];
        s1 += p[c1] * k[t];
        s2 += p[c2] * k[t];
      }
      sink(y - y_begin, x, clip8(s0), clip8(s1), clip8(s2));
    }
  }
}

// The same along y: columns [x_begin, x_end) of `src`, each output y reading
// inputs from axis.first[y] - shift; sink(y, column - x_begin, r, g, b).
template <typename Sink>
void vertical_pass(const ImageView& src, const ResampleAxis& axis, int64_t shift, int64_t x_begin,
                   int64_t x_end, Sink&& sink) {
  const int64_t out = static_cast<int64_t>(axis.first.size());
  const int64_t c0 = src.channel[0];
  const int64_t c1 = src.channel[1];
  const int64_t c2 = src.channel[2];
  for (int64_t y = 0; y < out; ++y) {
    const int32_t* k = axis.weights.data() + y * axis.taps;
    for (int64_t x = x_begin; x < x_end; ++x) {
      const uint8_t* p = src.pixel(x, axis.first[y] - shift);
      int32_t s0 = kHalf;
      int32_t s1 = kHalf;
      int32_t s2 = kHalf;
      for (int64_t t = 0; t < axis.count[y]; ++t, p += src.row_stride) {
        s0 += p[c0] * k[t];
        s1 += p[c1] * k[t];
        s2 += p[c2] * k[t];
      }
      sink(y, x - x_begin, clip8(s0), clip8(s1), clip8(s2));
    }
  }
}

// Both passes, the first into an 8-bit RGB scratch image, the second
// normalized into dst. Pillow (since 13.0) runs the vertical pass first when
// the height shrinks by more than twice as many pixels as the width, else
// the horizontal pass first; the order changes the rounding, so it is kept.
template <typename T>
void resize_typed(const ImageView& image, const ResampleAxis& horizontal,
                  const ResampleAxis& vertical, bool vertical_first, const PixelTable& table,
                  T* dst, int64_t channel_stride, int64_t row_stride, int64_t col_stride) {
  auto emit = [&](int64_t y, int64_t x, uint8_t r, uint8_t g, uint8_t b) {
    T* out = dst + y * row_stride + x * col_stride;
    out[0] = static_cast<T>(table.value[0][r]);
    out[channel_stride] = static_cast<T>(table.value[1][g]);
    out[2 * channel_stride] = static_cast<T>(table.value[2][b]);
  };
  const int64_t out_w = static_cast<int64_t>(horizontal.first.size());
  const int64_t out_h = static_cast<int64_t>(vertical.first.size());
  if (vertical_first) {
    // The input columns the kept outputs read, every kept row.
    const auto [x_begin, x_end] = input_range(horizontal);
    const int64_t width = x_end - x_begin;
    std::vector<uint8_t> scratch(static_cast<size_t>(out_h * width * 3));
    vertical_pass(image, vertical, 0, x_begin, x_end,
                  [&](int64_t y, int64_t x, uint8_t r, uint8_t g, uint8_t b) {
                    uint8_t* p = scratch.data() + (y * width + x) * 3;
                    p[0] = r;
                    p[1] = g;
                    p[2] = b;
                  });
    const ImageView rows = packed_view(scratch.data(), width, out_h, 3, {0, 1, 2});
    horizontal_pass(rows, horizontal, x_begin, 0, out_h, emit);
    return;
  }
  // The input rows the kept outputs read, every kept column.
  const auto [y_begin, y_end] = input_range(vertical);
  std::vector<uint8_t> scratch(static_cast<size_t>((y_end - y_begin) * out_w * 3));
  horizontal_pass(image, horizontal, 0, y_begin, y_end,
                  [&](int64_t y, int64_t x, uint8_t r, uint8_t g, uint8_t b) {
                    uint8_t* p = scratch.data() + (y * out_w + x) * 3;
                    p[0] = r;
                    p[1] = g;
                    p[2] = b;
                  });
  const ImageView columns = packed_view(scratch.data(), out_w, y_end - y_begin, 3, {0, 1, 2});
  vertical_pass(columns, vertical, y_begin, 0, out_w, emit);
}

}  // namespace

ResampleAxis resample_axis(int64_t in_size, int64_t out_size, int64_t keep_begin,
                           int64_t keep_count) {
  TORCH_CHECK_VALUE(in_size > 0 && out_size > 0 && keep_begin >= 0 && keep_count > 0 &&
                        keep_begin + keep_count <= out_size,
                    "resample_axis: expected sizes > 0 and a kept window within the output, got ",
                    in_size, " -> ", out_size, " keeping [", keep_begin, ", ",
                    keep_begin + keep_count, ")");
  // Pillow's precompute_coeffs (Resample.c) for the box (0, in_size).
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  const double filter_scale = std::max(scale, 1.0);
  const double support = 1.0 * filter_scale;
  ResampleAxis axis;
  axis.taps = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  axis.first.resize(keep_count);
  axis.count.resize(keep_count);
  axis.weights.assign(static_cast<size_t>(keep_count * axis.taps), 0);
  std::vector<double> k(axis.taps);
  for (int64_t i = 0; i < keep_count; ++i) {
    const int64_t xx = keep_begin + i;
    const double center = (static_cast<double>(xx) + 0.5) * scale;
    // (int) casts truncate toward zero, as in Pillow.
    const int64_t xmin = std::max<int64_t>(static_cast<int>(center - support + 0.5), 0);
    const int64_t xmax =
        std::min<int64_t>(static_cast<int>(center + support + 0.5), in_size) - xmin;
    double total = 0.0;
    for (int64_t x = 0; x < xmax; ++x) {
      k[x] = triangle((static_cast<double>(x + xmin) - center + 0.5) / filter_scale);
      total += k[x];
    }
    int32_t* w = axis.weights.data() + i * axis.taps;
    for (int64_t x = 0; x < xmax; ++x) {
      const double normalized = total != 0.0 ? k[x] / total : k[x];
      const double fixed = normalized * (1 << kWeightBits);
      w[x] = static_cast<int32_t>(normalized < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    axis.first[i] = xmin;
    axis.count[i] = xmax;
  }
  return axis;
}

ResizePlan plan_resize(int64_t width, int64_t height, ResizeMode mode, int64_t shorter_side,
                       int64_t out_height, int64_t out_width) {
  TORCH_CHECK_VALUE(width > 0 && height > 0 && out_height > 0 && out_width > 0,
                    "plan_resize: expected sizes > 0, got ", width, " x ", height, " -> ",
                    out_width, " x ", out_height);
  ResizePlan plan;
  plan.out_width = out_width;
  plan.out_height = out_height;
  if (mode == ResizeMode::kStretch) {
    plan.resized_width = out_width;
    plan.resized_height = out_height;
    return plan;
  }
  TORCH_CHECK_VALUE(shorter_side >= std::max(out_height, out_width), "resize: the shorter side (",
                    shorter_side, ") must be at least the crop's larger side (",
                    std::max(out_height, out_width), ") so that the crop fits the image");
  // torchvision's _compute_resized_output_size: int(S * long / short).
  const int64_t shorter = std::min(width, height);
  const int64_t longer = std::max(width, height);
  const auto new_long = static_cast<int64_t>(static_cast<double>(shorter_side * longer) /
                                             static_cast<double>(shorter));
  if (width <= height) {
    plan.resized_width = shorter_side;
    plan.resized_height = new_long;
  } else {
    plan.resized_width = new_long;
    plan.resized_height = shorter_side;
  }
  // torchvision's center_crop: int(round((size - crop) / 2.0)).
  plan.crop_left = half_to_even(plan.resized_width - out_width);
  plan.crop_top = half_to_even(plan.resized_height - out_height);
  return plan;
}

PixelTable pixel_table(const std::array<double, 3>& mean, const std::array<double, 3>& std) {
  PixelTable table;
  for (int c = 0; c < 3; ++c) {
    for (int v = 0; v < 256; ++v) {
      table.value[c][v] = (static_cast<double>(v) / 255.0 - mean[c]) / std[c];
    }
  }
  return table;
}

void resize_normalize_into(const ImageView& image, const ResizePlan& plan, const PixelTable& table,
                           const at::Tensor& dst) {
  TORCH_CHECK_VALUE(dst.device().is_cpu() && dst.dim() == 3 && dst.size(0) == 3 &&
                        dst.size(1) == plan.out_height && dst.size(2) == plan.out_width,
                    "resize: dst must be a CPU tensor of shape [3, ", plan.out_height, ", ",
                    plan.out_width, "], got ", dst.device(), " ", dst.sizes());
  const ResampleAxis horizontal =
      resample_axis(image.width, plan.resized_width, plan.crop_left, plan.out_width);
  const ResampleAxis vertical =
      resample_axis(image.height, plan.resized_height, plan.crop_top, plan.out_height);
  // Pillow's rule, on the whole resize (not the crop): ImagingResampleInner.
  const int64_t shrink_h = image.height - plan.resized_height;
  const bool vertical_first = shrink_h > 0 && shrink_h > (image.width - plan.resized_width) * 2;
  const int64_t cs = dst.stride(0);
  const int64_t rs = dst.stride(1);
  const int64_t xs = dst.stride(2);
  switch (dst.scalar_type()) {
    case at::kFloat:
      resize_typed(image, horizontal, vertical, vertical_first, table, dst.data_ptr<float>(), cs,
                   rs, xs);
      break;
    case at::kDouble:
      resize_typed(image, horizontal, vertical, vertical_first, table, dst.data_ptr<double>(), cs,
                   rs, xs);
      break;
    case at::kHalf:
      resize_typed(image, horizontal, vertical, vertical_first, table, dst.data_ptr<c10::Half>(),
                   cs, rs, xs);
      break;
    case at::kBFloat16:
      resize_typed(image, horizontal, vertical, vertical_first, table,
                   dst.data_ptr<c10::BFloat16>(), cs, rs, xs);
      break;
    default:
      TORCH_CHECK_VALUE(false, "resize: dst must be float32, float64, float16 or bfloat16, got ",
                        dst.scalar_type());
  }
}

}  // namespace torchspark

#include "torchspark/image/resize.h"

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>

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

template <typename T>
void resize_typed(const ImageView& image, const ResampleAxis& horizontal,
                  const ResampleAxis& vertical, const PixelTable& table, T* dst,
                  int64_t channel_stride, int64_t row_stride, int64_t col_stride) {
  const int64_t out_w = static_cast<int64_t>(horizontal.first.size());
  const int64_t out_h = static_cast<int64_t>(vertical.first.size());
  // The input rows the kept outputs read.
  int64_t y_begin = vertical.first[0];
  int64_t y_end = y_begin;
  for (int64_t y = 0; y < out_h; ++y) {
    y_begin = std::min(y_begin, vertical.first[y]);
    y_end = std::max(y_end, vertical.first[y] + vertical.count[y]);
  }
  constexpr int32_t kHalf = 1 << (kWeightBits - 1);

  // Horizontal pass over those rows, rounded to 8 bits (as Pillow's).
  std::vector<uint8_t> rows(static_cast<size_t>((y_end - y_begin) * out_w * 3));
  const int64_t c0 = image.channel[0];
  const int64_t c1 = image.channel[1];
  const int64_t c2 = image.channel[2];
  for (int64_t y = y_begin; y < y_end; ++y) {
    const uint8_t* in = image.pixel(0, y);
    uint8_t* out = rows.data() + (y - y_begin) * out_w * 3;
    for (int64_t x = 0; x < out_w; ++x) {
      const int32_t* k = horizontal.weights.data() + x * horizontal.taps;
      const uint8_t* p = in + horizontal.first[x] * image.col_stride;
      int32_t s0 = kHalf;
      int32_t s1 = kHalf;
      int32_t s2 = kHalf;
      for (int64_t t = 0; t < horizontal.count[x]; ++t, p += image.col_stride) {
        s0 += p[c0] * k[t];
        s1 += p[c1] * k[t];
        s2 += p[c2] * k[t];
      }
      out[x * 3 + 0] = clip8(s0);
      out[x * 3 + 1] = clip8(s1);
      out[x * 3 + 2] = clip8(s2);
    }
  }

  // Vertical pass, rounded to 8 bits, normalized, written to dst.
  const int64_t row_bytes = out_w * 3;
  for (int64_t y = 0; y < out_h; ++y) {
    const int32_t* k = vertical.weights.data() + y * vertical.taps;
    const uint8_t* base = rows.data() + (vertical.first[y] - y_begin) * row_bytes;
    T* out = dst + y * row_stride;
    for (int64_t x = 0; x < out_w; ++x) {
      int32_t s0 = kHalf;
      int32_t s1 = kHalf;
      int32_t s2 = kHalf;
      const uint8_t* p = base + x * 3;
      for (int64_t t = 0; t < vertical.count[y]; ++t, p += row_bytes) {
        s0 += p[0] * k[t];
        s1 += p[1] * k[t];
        s2 += p[2] * k[t];
      }
      out[x * col_stride] = static_cast<T>(table.value[0][clip8(s0)]);
      out[x * col_stride + channel_stride] = static_cast<T>(table.value[1][clip8(s1)]);
      out[x * col_stride + 2 * channel_stride] = static_cast<T>(table.value[2][clip8(s2)]);
    }
  }
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
  const int64_t cs = dst.stride(0);
  const int64_t rs = dst.stride(1);
  const int64_t xs = dst.stride(2);
  switch (dst.scalar_type()) {
    case at::kFloat:
      resize_typed(image, horizontal, vertical, table, dst.data_ptr<float>(), cs, rs, xs);
      break;
    case at::kDouble:
      resize_typed(image, horizontal, vertical, table, dst.data_ptr<double>(), cs, rs, xs);
      break;
    case at::kHalf:
      resize_typed(image, horizontal, vertical, table, dst.data_ptr<c10::Half>(), cs, rs, xs);
      break;
    case at::kBFloat16:
      resize_typed(image, horizontal, vertical, table, dst.data_ptr<c10::BFloat16>(), cs, rs, xs);
      break;
    default:
      TORCH_CHECK_VALUE(false, "resize: dst must be float32, float64, float16 or bfloat16, got ",
                        dst.scalar_type());
  }
}

}  // namespace torchspark

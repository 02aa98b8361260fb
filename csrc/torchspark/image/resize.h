// Resize + crop + normalize, fused: an 8-bit RGB ImageView in, one image of
// the staging buffer out ([3, H, W] float32/float64/float16/bfloat16, any
// strides: plain NCHW or a channels_last slice).
//
// The resize is Pillow's Image.resize(..., BILINEAR) reproduced exactly: its
// separable triangle filter, whose support grows with the downscale factor
// (antialiasing; an upscale is plain bilinear), its fixed-point weights
// (22 fraction bits), and two passes each rounded to 8 bits, in Pillow's
// order: horizontal first, unless the height shrinks by more than twice as
// many pixels as the width (Pillow >= 13.0; older Pillow always went
// horizontal first, which differs by at most one level in some pixels). The
// crop is fused: only the kept outputs' weights are computed and only the
// input rows (columns) they read are filtered, which gives the same pixels as
// resizing the whole image and cropping it. Each 8-bit result v is written as
// (v / 255 - mean[c]) / std[c].
//
// The geometry follows torchvision on PIL images: Resize(S) (shorter side to
// S, the longer to int(S * long / short)) then CenterCrop((H, W)) (offsets
// rounded half to even, as Python's round), or a stretch straight to (H, W).
//
// Pure functions of their arguments; reentrant.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <vector>

#include "torchspark/image/image_view.h"

namespace torchspark {

// Pillow's PRECISION_BITS for 8-bit images: 32 - 8 - 2.
constexpr int kWeightBits = 22;

// The filter weights of one axis, for outputs [keep_begin, keep_begin + n) of
// a resize from in_size to out_size.
struct ResampleAxis {
  int64_t taps = 0;              // weights stored per output
  std::vector<int64_t> first;    // per output: the first input index read
  std::vector<int64_t> count;    // per output: how many inputs it reads (<= taps)
  std::vector<int32_t> weights;  // per output: `taps` weights, fixed point (kWeightBits)
};

ResampleAxis resample_axis(int64_t in_size, int64_t out_size, int64_t keep_begin,
                           int64_t keep_count);

enum class ResizeMode {
  kShorterSide,  // shorter side to `shorter_side`, then a center crop
  kStretch,      // straight to the output size, aspect ratio not kept
};

// Where one image goes: the size it is resized to and the window kept.
struct ResizePlan {
  int64_t resized_width = 0;
  int64_t resized_height = 0;
  int64_t crop_left = 0;
  int64_t crop_top = 0;
  int64_t out_width = 0;
  int64_t out_height = 0;
};

// The plan for a width x height image. kShorterSide needs shorter_side >=
// max(out_height, out_width) (ValueError otherwise), so the crop fits.
ResizePlan plan_resize(int64_t width, int64_t height, ResizeMode mode, int64_t shorter_side,
                       int64_t out_height, int64_t out_width);

// (v / 255 - mean[c]) / std[c] for each channel c and 8-bit value v.
struct PixelTable {
  std::array<std::array<double, 256>, 3> value;
};
PixelTable pixel_table(const std::array<double, 3>& mean, const std::array<double, 3>& std);

// Resizes `image` per `plan` into dst: a CPU tensor [3, out_height,
// out_width] of float32, float64, float16 or bfloat16, with any strides.
void resize_normalize_into(const ImageView& image, const ResizePlan& plan, const PixelTable& table,
                           const at::Tensor& dst);

}  // namespace torchspark

// libFuzzer target: the image input's decoding of arbitrary bytes (image/):
// format sniffing, header probes, the pixel limit, the JPEG/PNG/WebP decoders
// (TurboJPEG, libpng, libwebp), the EXIF orientation reader, and the resize
// of whatever decodes into a staging tensor.
//
// The first input byte picks the pixel limit: torchspark's default
// (kDefaultMaxPixels, what a user gets), or a small one. libFuzzer's
// -malloc_limit_mb (.ci/fuzz: 1024) turns any single allocation above it into
// a crash: a decompression bomb (a small file declaring a huge image) must be
// refused by the limit before its pixels are allocated. At the default limit
// the largest legitimate buffer is 89'478'485 * 3 bytes (256 MiB).
//
// A crash inside TurboJPEG, libpng or libwebp themselves would be theirs, not
// ours: it is noted in RELIABILITY.md, not fixed here.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cstdint>

#include "torchspark/image/decode.h"
#include "torchspark/image/exif.h"
#include "torchspark/image/image_format.h"
#include "torchspark/image/resize.h"

namespace {

template <typename F>
void attempt(F&& f) {
  try {
    f();
  } catch (const c10::Error&) {
    // Refused bytes: the intended outcome for a corrupt or unsupported image.
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  at::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  // Byte 0: the pixel limit and the resize mode; byte 1: the output size.
  const uint8_t control = data[0];
  const uint8_t out_size = data[1];
  data += 2;
  size -= 2;
  const int64_t max_pixels = (control & 1) ? torchspark::kDefaultMaxPixels : int64_t{1} << 20;
  const auto mode =
      (control & 2) ? torchspark::ResizeMode::kStretch : torchspark::ResizeMode::kShorterSide;

  (void)torchspark::describe_bytes(data, size);
  const int orientation = torchspark::jpeg_exif_orientation(data, size);
  if (orientation < 1 || orientation > 8) __builtin_trap();
  (void)torchspark::tiff_orientation(data, size);

  attempt([&] {
    const torchspark::ImageInfo info = torchspark::probe_image(data, size, max_pixels);
    if (info.width <= 0 || info.height <= 0 || info.width > max_pixels / info.height) {
      __builtin_trap();  // probe_image promised the size checks
    }
  });
  attempt([&] {
    const torchspark::DecodedImage image = torchspark::decode_image(data, size, max_pixels);
    const torchspark::ImageView& view = image.view();
    if (view.width <= 0 || view.height <= 0 || view.width > max_pixels / view.height) {
      __builtin_trap();
    }
    const int64_t height = 1 + out_size % 16;
    const int64_t width = 1 + (out_size / 16) % 16;
    const torchspark::ResizePlan plan = torchspark::plan_resize(
        view.width, view.height, mode, std::max(height, width) + (control >> 4), height, width);
    static const torchspark::PixelTable table =
        torchspark::pixel_table({0.485, 0.456, 0.406}, {0.229, 0.224, 0.225});
    at::Tensor dst = at::empty({3, height, width}, at::kFloat);
    torchspark::resize_normalize_into(view, plan, table, dst);
  });
  return 0;
}

#include "torchspark/image/decode.h"

#include <c10/util/Exception.h>

#include "torchspark/image/jpeg_decoder.h"
#include "torchspark/image/png_decoder.h"
#include "torchspark/image/webp_decoder.h"

namespace torchspark {

namespace {

ImageFormat decodable_format(const uint8_t* data, size_t size) {
  const ImageFormat format = sniff_format(data, size);
  TORCH_CHECK_VALUE(format != ImageFormat::kUnknown || size > 0,
                    "empty value; expected the bytes of a JPEG, PNG or WebP image");
  TORCH_CHECK_VALUE(format != ImageFormat::kUnknown,
                    "unsupported format: the bytes are not a JPEG (ff d8 ff), PNG (89 50 4e 47) "
                    "or WebP (RIFF....WEBP) image");
  TORCH_CHECK_VALUE(is_decodable(format), "unsupported format: a ", format_name(format),
                    " image; expected a JPEG, PNG or WebP image");
  return format;
}

}  // namespace

void check_image_size(int64_t width, int64_t height, int64_t max_pixels) {
  TORCH_CHECK_VALUE(width > 0 && height > 0, "a zero-size image (", width, " x ", height,
                    " pixels); expected at least 1 x 1");
  TORCH_CHECK_VALUE(width <= max_pixels / height, "an image of ", width, " x ", height, " = ",
                    static_cast<uint64_t>(width) * static_cast<uint64_t>(height),
                    " pixels, over max_pixels = ", max_pixels,
                    " (a guard against decompression bombs; raise max_pixels to accept it)");
}

ImageInfo probe_image(const uint8_t* data, size_t size, int64_t max_pixels) {
  ImageInfo info;
  switch (decodable_format(data, size)) {
    case ImageFormat::kJpeg: info = probe_jpeg(data, size); break;
    case ImageFormat::kPng: info = probe_png(data, size); break;
    case ImageFormat::kWebp: info = probe_webp(data, size); break;
    default: break;
  }
  check_image_size(info.width, info.height, max_pixels);
  return info;
}

DecodedImage decode_image(const uint8_t* data, size_t size, int64_t max_pixels) {
  switch (decodable_format(data, size)) {
    case ImageFormat::kJpeg: return decode_jpeg(data, size, max_pixels);
    case ImageFormat::kPng: return decode_png(data, size, max_pixels);
    case ImageFormat::kWebp: return decode_webp(data, size, max_pixels);
    default: break;
  }
  TORCH_CHECK(false, "unreachable: a decodable format without a decoder");
  return {};
}

}  // namespace torchspark

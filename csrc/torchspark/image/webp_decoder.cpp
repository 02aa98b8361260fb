#include "torchspark/image/webp_decoder.h"

#include <c10/util/Exception.h>
#include <webp/decode.h>

#include <vector>

#include "torchspark/image/decode.h"

namespace torchspark {

namespace {

const char* status_name(VP8StatusCode status) {
  switch (status) {
    case VP8_STATUS_OK: return "ok";
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error (corrupt data)";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "not enough data (truncated)";
  }
  return "unknown status";
}

WebPBitstreamFeatures features_of(const uint8_t* data, size_t size) {
  WebPBitstreamFeatures features;
  const VP8StatusCode status = WebPGetFeatures(data, size, &features);
  TORCH_CHECK_VALUE(status == VP8_STATUS_OK, "WebP: ", status_name(status));
  TORCH_CHECK_VALUE(!features.has_animation,
                    "WebP: an animated WebP (only still images are decoded)");
  return features;
}

}  // namespace

ImageInfo probe_webp(const uint8_t* data, size_t size) {
  const WebPBitstreamFeatures features = features_of(data, size);
  return {ImageFormat::kWebp, features.width, features.height};
}

DecodedImage decode_webp(const uint8_t* data, size_t size, int64_t max_pixels) {
  const WebPBitstreamFeatures features = features_of(data, size);
  check_image_size(features.width, features.height, max_pixels);
  const int64_t stride = int64_t{features.width} * 3;
  std::vector<uint8_t> pixels(static_cast<size_t>(stride * features.height));
  const uint8_t* out =
      WebPDecodeRGBInto(data, size, pixels.data(), pixels.size(), static_cast<int>(stride));
  TORCH_CHECK_VALUE(out != nullptr, "WebP: the bitstream does not decode (corrupt or truncated)");
  const ImageView view = packed_view(pixels.data(), features.width, features.height, 3, {0, 1, 2});
  return DecodedImage(std::move(pixels), view);
}

}  // namespace torchspark

// WebP through libwebp (WebPGetFeatures, WebPDecodeRGBInto): decode.h's
// contract for one format. Alpha is dropped; an animated WebP is refused
// (its first frame is not the image a user means). Reentrant: libwebp's
// simple decoding API keeps no state between calls.
#pragma once

#include <cstddef>
#include <cstdint>

#include "torchspark/image/image_format.h"
#include "torchspark/image/image_view.h"

namespace torchspark {

ImageInfo probe_webp(const uint8_t* data, size_t size);
DecodedImage decode_webp(const uint8_t* data, size_t size, int64_t max_pixels);

}  // namespace torchspark

// Encoded image bytes -> pixels: format sniffing, header probes, the pixel
// limit, and full decodes by the library made for each format (libjpeg-turbo's
// TurboJPEG API, libpng, libwebp).
//
// probe_image reads only a header (format, stored width and height) and
// applies the checks that need no pixels: a decodable format, a non-zero
// size, at most max_pixels pixels. decode_image does the same checks first,
// then decodes to 8-bit RGB (gray, palette, CMYK, 16-bit converted; alpha
// dropped, as Pillow's convert('RGB') does) and applies a JPEG's EXIF
// orientation. Anything the decoder warns about (a truncated or corrupt
// stream) is an error, never a silently gray image.
//
// Errors are c10::ValueError whose message is the reason alone ("JPEG:
// Premature end of JPEG file"); callers add the column and row.
//
// Threads: reentrant. The JPEG decoder keeps one TurboJPEG handle per thread
// (thread_local, freed at thread exit); nothing else is shared.
#pragma once

#include <cstddef>
#include <cstdint>

#include "torchspark/image/image_format.h"
#include "torchspark/image/image_view.h"

namespace torchspark {

// Pillow's Image.MAX_IMAGE_PIXELS (its decompression-bomb warning threshold:
// 1024 * 1024 * 1024 // 4 // 3, about a 9500 x 9500 image, 256 MiB as RGB).
// Pillow only refuses above twice this; torchspark refuses above it, since a
// larger image would hold that much memory per staging thread.
constexpr int64_t kDefaultMaxPixels = 89'478'485;

// ValueError for a zero-size image, or one of more than max_pixels pixels.
void check_image_size(int64_t width, int64_t height, int64_t max_pixels);

// The format and stored size from the header; the checks above. ValueError
// for an unsupported format, a header that does not parse, or the size.
ImageInfo probe_image(const uint8_t* data, size_t size, int64_t max_pixels);

// The whole image as RGB, oriented; ValueError as probe_image, or for a
// stream the decoder rejects or warns about.
DecodedImage decode_image(const uint8_t* data, size_t size, int64_t max_pixels);

}  // namespace torchspark

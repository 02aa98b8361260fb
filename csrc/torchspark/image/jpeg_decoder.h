// JPEG through libjpeg-turbo's TurboJPEG API (2.x: tjDecompressHeader3 /
// tjDecompress2): decode.h's contract for one format. Gray JPEGs stay one
// byte a pixel (the view repeats the channel); CMYK and YCCK JPEGs are
// converted to RGB as Pillow's convert('RGB') does (Adobe's inverted CMYK);
// the EXIF orientation is applied as a view. Decoder warnings are errors
// (TJFLAG_STOPONWARNING), progressive scans are capped (TJFLAG_LIMITSCANS:
// more than 500 scans is a CPU bomb, never a real photograph).
// One decompressor handle per thread, never shared.
#pragma once

#include <cstddef>
#include <cstdint>

#include "torchspark/image/image_format.h"
#include "torchspark/image/image_view.h"

namespace torchspark {

ImageInfo probe_jpeg(const uint8_t* data, size_t size);
DecodedImage decode_jpeg(const uint8_t* data, size_t size, int64_t max_pixels);

// Pillow's CMYK -> RGB for one pixel of a JPEG's stored (Adobe: inverted) CMYK:
// with c = 255 - stored c (likewise m, y) and k' = stored k (= 255 - k),
// R = k' - round(c * k' / 255), clipped; likewise G from m and B from y.
void cmyk_to_rgb(const uint8_t* stored_cmyk, uint8_t* rgb, int64_t pixels);

}  // namespace torchspark

// PNG through libpng 1.6: decode.h's contract for one format. Palette and
// 1/2/4-bit gray images expand to 8 bits, 16-bit samples keep their high byte,
// alpha and tRNS transparency are dropped (Pillow's convert('RGB') neither
// composites nor premultiplies); gray stays one byte a pixel (the view
// repeats it). No gamma or color-profile correction, as Pillow does none.
// libpng reports errors by longjmp: only plain C frames (no destructors) lie
// between its setjmp points and its calls. Each call has its own read state.
#pragma once

#include <cstddef>
#include <cstdint>

#include "torchspark/image/image_format.h"
#include "torchspark/image/image_view.h"

namespace torchspark {

// From the IHDR chunk alone (no library call).
ImageInfo probe_png(const uint8_t* data, size_t size);
DecodedImage decode_png(const uint8_t* data, size_t size, int64_t max_pixels);

}  // namespace torchspark

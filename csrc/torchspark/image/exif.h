// The EXIF orientation of a JPEG: read from its APP1 "Exif" segment (the
// TIFF IFD0 tag 0x0112), in either byte order, without a library.
//
// Only the markers before the first scan are walked; any malformed or
// truncated structure, a missing tag, or a value outside 1..8 gives 1 (as
// shown, as Pillow's ImageOps.exif_transpose leaves such images). Never reads
// outside [data, data + size). Pure, thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace torchspark {

// The orientation (1..8, EXIF/TIFF numbering: 1 = as stored, 6 = rotate 90
// degrees clockwise to display, ...) of the JPEG in [data, data + size).
int jpeg_exif_orientation(const uint8_t* data, size_t size);

// The orientation in a TIFF structure (the payload of an APP1 segment after
// its "Exif\0\0" header): IFD0's tag 0x0112, or 1.
int tiff_orientation(const uint8_t* tiff, size_t size);

}  // namespace torchspark

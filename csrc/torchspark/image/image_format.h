// What an encoded image's first bytes say it is, and how to show bytes in a
// message.
//
// `sniff_format` looks only at magic bytes (never at a file name or a MIME
// type): JPEG, PNG and WebP are decoded; GIF, BMP, TIFF and a few others are
// recognised only to name them in the "unsupported format" error.
// `describe_bytes` renders a buffer's length and first bytes as hex and as
// ASCII for error messages ("18 bytes starting 3c 68 74 6d 6c ... ('<html')").
// Pure functions: no allocation beyond the returned strings, thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace torchspark {

enum class ImageFormat {
  kUnknown,
  kJpeg,  // ff d8 ff
  kPng,   // 89 'PNG' 0d 0a 1a 0a
  kWebp,  // 'RIFF' <size> 'WEBP'
  // Recognised, not decoded (no decoder among libjpeg-turbo, libpng, libwebp):
  kGif,   // 'GIF87a' / 'GIF89a'
  kBmp,   // 'BM'
  kTiff,  // 'II*\0' / 'MM\0*'
  kAvif,  // ... 'ftypavif'
  kHeic,  // ... 'ftypheic' and its brands
};

ImageFormat sniff_format(const uint8_t* data, size_t size);

// "JPEG", "PNG", "WebP", "GIF", ...; "unknown" for kUnknown.
const char* format_name(ImageFormat format);

// Whether torchspark decodes this format.
bool is_decodable(ImageFormat format);

// What a header says, before any pixel is decoded: the format and the stored
// size (before any EXIF orientation).
struct ImageInfo {
  ImageFormat format = ImageFormat::kUnknown;
  int64_t width = 0;
  int64_t height = 0;
};

// "0 bytes (empty)", or "<n> bytes starting <up to 8 bytes as hex> ('<ascii>')",
// non-printable bytes shown as '.'.
std::string describe_bytes(const uint8_t* data, size_t size);

}  // namespace torchspark

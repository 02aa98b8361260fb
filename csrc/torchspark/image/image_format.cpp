#include "torchspark/image/image_format.h"

#include <algorithm>
#include <cstring>

namespace torchspark {

namespace {

bool starts_with(const uint8_t* data, size_t size, const char* magic, size_t n) {
  return size >= n && std::memcmp(data, magic, n) == 0;
}

}  // namespace

ImageFormat sniff_format(const uint8_t* data, size_t size) {
  if (data == nullptr || size == 0) return ImageFormat::kUnknown;
  if (starts_with(data, size, "\xff\xd8\xff", 3)) return ImageFormat::kJpeg;
  if (starts_with(data, size, "\x89PNG\r\n\x1a\n", 8)) return ImageFormat::kPng;
  if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) {
    return ImageFormat::kWebp;
  }
  if (starts_with(data, size, "GIF87a", 6) || starts_with(data, size, "GIF89a", 6)) {
    return ImageFormat::kGif;
  }
  if (starts_with(data, size, "BM", 2) && size >= 14) return ImageFormat::kBmp;
  if (starts_with(data, size, "II*\0", 4) || starts_with(data, size, "MM\0*", 4)) {
    return ImageFormat::kTiff;
  }
  if (size >= 12 && std::memcmp(data + 4, "ftyp", 4) == 0) {
    const char* brand = reinterpret_cast<const char*>(data + 8);
    if (std::memcmp(brand, "avif", 4) == 0 || std::memcmp(brand, "avis", 4) == 0) {
      return ImageFormat::kAvif;
    }
    for (const char* heic : {"heic", "heix", "hevc", "heim", "heis", "mif1", "msf1"}) {
      if (std::memcmp(brand, heic, 4) == 0) return ImageFormat::kHeic;
    }
  }
  return ImageFormat::kUnknown;
}

const char* format_name(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg: return "JPEG";
    case ImageFormat::kPng: return "PNG";
    case ImageFormat::kWebp: return "WebP";
    case ImageFormat::kGif: return "GIF";
    case ImageFormat::kBmp: return "BMP";
    case ImageFormat::kTiff: return "TIFF";
    case ImageFormat::kAvif: return "AVIF";
    case ImageFormat::kHeic: return "HEIC";
    case ImageFormat::kUnknown: break;
  }
  return "unknown";
}

bool is_decodable(ImageFormat format) {
  return format == ImageFormat::kJpeg || format == ImageFormat::kPng ||
         format == ImageFormat::kWebp;
}

std::string describe_bytes(const uint8_t* data, size_t size) {
  if (data == nullptr || size == 0) return "0 bytes (empty)";
  constexpr size_t kShown = 8;
  const size_t shown = std::min(size, kShown);
  static const char* hex = "0123456789abcdef";
  std::string out = std::to_string(size) + (size == 1 ? " byte starting" : " bytes starting");
  std::string ascii;
  for (size_t i = 0; i < shown; ++i) {
    out += ' ';
    out += hex[data[i] >> 4];
    out += hex[data[i] & 15];
    ascii += (data[i] >= 0x20 && data[i] < 0x7f) ? static_cast<char>(data[i]) : '.';
  }
  out += " ('" + ascii + "')";
  return out;
}

}  // namespace torchspark

#include "torchspark/image/exif.h"

#include <cstring>

namespace torchspark {

namespace {

uint32_t read16(const uint8_t* p, bool little) {
  return little ? (p[0] | (p[1] << 8)) : ((p[0] << 8) | p[1]);
}

uint32_t read32(const uint8_t* p, bool little) {
  return little ? (uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
                   (uint32_t{p[3]} << 24))
                : ((uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) |
                   uint32_t{p[3]});
}

constexpr uint32_t kOrientationTag = 0x0112;
constexpr uint32_t kTypeShort = 3;
constexpr uint32_t kTypeLong = 4;

}  // namespace

int tiff_orientation(const uint8_t* tiff, size_t size) {
  if (tiff == nullptr || size < 8) return 1;
  bool little = false;
  if (tiff[0] == 'I' && tiff[1] == 'I') {
    little = true;
  } else if (!(tiff[0] == 'M' && tiff[1] == 'M')) {
    return 1;
  }
  if (read16(tiff + 2, little) != 42) return 1;
  const uint64_t ifd = read32(tiff + 4, little);
  if (ifd + 2 > size) return 1;
  const uint64_t entries = read16(tiff + ifd, little);
  for (uint64_t i = 0; i < entries; ++i) {
    const uint64_t entry = ifd + 2 + 12 * i;
    if (entry + 12 > size) return 1;
    const uint8_t* e = tiff + entry;
    if (read16(e, little) != kOrientationTag) continue;
    const uint32_t type = read16(e + 2, little);
    if (read32(e + 4, little) < 1) return 1;
    // One SHORT (or LONG) fits the entry's 4-byte value field, left-justified.
    uint32_t value = 0;
    if (type == kTypeShort) {
      value = read16(e + 8, little);
    } else if (type == kTypeLong) {
      value = read32(e + 8, little);
    } else {
      return 1;
    }
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

int jpeg_exif_orientation(const uint8_t* data, size_t size) {
  if (data == nullptr || size < 4 || data[0] != 0xff || data[1] != 0xd8) return 1;
  size_t pos = 2;
  while (pos < size) {
    if (data[pos] != 0xff) return 1;                // not at a marker: malformed
    while (pos < size && data[pos] == 0xff) ++pos;  // fill bytes
    if (pos >= size) return 1;
    const uint8_t marker = data[pos++];
    if (marker == 0xd8 || marker == 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      continue;  // markers without a length
    }
    if (marker == 0xda || marker == 0xd9) return 1;  // start of scan / end of image
    if (pos + 2 > size) return 1;
    const size_t length = (size_t{data[pos]} << 8) | data[pos + 1];  // includes its own 2 bytes
    if (length < 2 || pos + length > size) return 1;
    const uint8_t* payload = data + pos + 2;
    const size_t payload_size = length - 2;
    if (marker == 0xe1 && payload_size >= 6 && std::memcmp(payload, "Exif\0\0", 6) == 0) {
      return tiff_orientation(payload + 6, payload_size - 6);
    }
    pos += length;
  }
  return 1;
}

}  // namespace torchspark

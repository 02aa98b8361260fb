// An 8-bit RGB image in memory, as the resize reads it: a strided view, and
// the owner of decoded pixels.
//
// ImageView addresses pixel (x, y), channel c (0 = R, 1 = G, 2 = B) at
// data + y * row_stride + x * col_stride + channel[c]. Strides may be
// negative and channels may repeat, so one view describes, with no copy: a
// decoder's packed RGB or gray rows, Spark's BGR / BGRA / gray rows, and any
// EXIF orientation of those (a flip negates a stride, a transpose swaps the
// two). A view never owns its bytes.
//
// DecodedImage owns a decoder's pixels and the view of them (oriented);
// move-only, so the view stays valid. Neither type is thread-safe to mutate;
// both are plain values read by one thread at a time.
#pragma once

#include <array>
#include <cstdint>
#include <utility>
#include <vector>

namespace torchspark {

struct ImageView {
  const uint8_t* data = nullptr;  // pixel (0, 0)
  int64_t width = 0;
  int64_t height = 0;
  int64_t row_stride = 0;                   // bytes from (x, y) to (x, y + 1)
  int64_t col_stride = 0;                   // bytes from (x, y) to (x + 1, y)
  std::array<int64_t, 3> channel{0, 1, 2};  // byte offsets of R, G, B within a pixel

  const uint8_t* pixel(int64_t x, int64_t y) const {
    return data + y * row_stride + x * col_stride;
  }
};

// Packed rows of `pixel_bytes`-byte pixels (no row padding), R, G and B at
// the given offsets within a pixel (gray: {0, 0, 0}).
ImageView packed_view(const uint8_t* data, int64_t width, int64_t height, int64_t pixel_bytes,
                      std::array<int64_t, 3> channel);

// `stored` as displayed under an EXIF orientation (1..8; anything else is 1):
// 2 mirrors, 3 rotates 180 degrees, 4 flips vertically, 5 transposes, 6
// rotates 90 degrees clockwise, 7 transverses, 8 rotates 90 degrees
// counter-clockwise (Pillow's ImageOps.exif_transpose). 5..8 swap width and
// height.
ImageView oriented(const ImageView& stored, int orientation);

class DecodedImage {
 public:
  DecodedImage() = default;
  DecodedImage(std::vector<uint8_t> pixels, const ImageView& view)
      : pixels_(std::move(pixels)), view_(view) {}
  DecodedImage(DecodedImage&&) = default;
  DecodedImage& operator=(DecodedImage&&) = default;
  DecodedImage(const DecodedImage&) = delete;
  DecodedImage& operator=(const DecodedImage&) = delete;

  const ImageView& view() const { return view_; }

 private:
  // A vector's move keeps its buffer, so view_ stays valid across moves.
  std::vector<uint8_t> pixels_;
  ImageView view_;
};

}  // namespace torchspark

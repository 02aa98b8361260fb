#include "torchspark/image/image_view.h"

#include <utility>

namespace torchspark {

ImageView packed_view(const uint8_t* data, int64_t width, int64_t height, int64_t pixel_bytes,
                      std::array<int64_t, 3> channel) {
  ImageView view;
  view.data = data;
  view.width = width;
  view.height = height;
  view.col_stride = pixel_bytes;
  view.row_stride = width * pixel_bytes;
  view.channel = channel;
  return view;
}

ImageView oriented(const ImageView& stored, int orientation) {
  ImageView v = stored;
  const int64_t w = stored.width;
  const int64_t h = stored.height;
  const int64_t col = stored.col_stride;
  const int64_t row = stored.row_stride;
  // Output pixel (x, y) reads the stored pixel named in each comment.
  switch (orientation) {
    case 2:  // (w - 1 - x, y)
      v.data = stored.pixel(w - 1, 0);
      v.col_stride = -col;
      break;
    case 3:  // (w - 1 - x, h - 1 - y)
      v.data = stored.pixel(w - 1, h - 1);
      v.col_stride = -col;
      v.row_stride = -row;
      break;
    case 4:  // (x, h - 1 - y)
      v.data = stored.pixel(0, h - 1);
      v.row_stride = -row;
      break;
    case 5:  // (y, x)
      v.col_stride = row;
      v.row_stride = col;
      break;
    case 6:  // (y, h - 1 - x)
      v.data = stored.pixel(0, h - 1);
      v.col_stride = -row;
      v.row_stride = col;
      break;
    case 7:  // (w - 1 - y, h - 1 - x)
      v.data = stored.pixel(w - 1, h - 1);
      v.col_stride = -row;
      v.row_stride = -col;
      break;
    case 8:  // (w - 1 - y, x)
      v.data = stored.pixel(w - 1, 0);
      v.col_stride = row;
      v.row_stride = -col;
      break;
    default: return stored;
  }
  if (orientation >= 5) std::swap(v.width, v.height);
  return v;
}

}  // namespace torchspark
